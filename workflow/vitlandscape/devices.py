"""Device and arithmetic precision shared by training and landscape stages."""
import contextlib

import torch

PRECISIONS = ("fp32", "tf32", "bf16")


def resolve(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' fails clearly without a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


@contextlib.contextmanager
def precision(name: str, device: torch.device):
    """Forward passes inside run in `name`: fp32; tf32 (float32 matmuls and convolutions
    on TF32 tensor cores, CUDA only: on a CPU it is fp32); bf16 (autocast, CUDA and CPU).
    Callers keep their sums in float64 either way."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; use {', '.join(PRECISIONS)}")
    if name == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = name == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
