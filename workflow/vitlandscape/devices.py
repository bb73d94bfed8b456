"""Device and arithmetic precision shared by training and landscape stages. torch is imported
where it is used, so that the command line can name a DeviceError without importing torch."""
import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp32", "tf32", "bf16")


class DeviceError(RuntimeError):
    """A device this machine cannot provide. `key` names the setting that asked for it (the
    command line sets it from the stage: `device` for training, `landscape.device` for the
    landscape and curvature stages, `--device` for bench and plan)."""

    def __init__(self, value: str, key: str = "device"):
        super().__init__(value, key)
        self.value, self.key = value, key

    def __str__(self) -> str:
        return (f"{self.key}: {self.value!r} requested, but torch sees no CUDA device on this machine "
                f"(torch.cuda.is_available() is False); use cpu, or run on a GPU node")


def resolve(name: str, key: str = "device") -> "torch.device":
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is a DeviceError naming `key`."""
    import torch

    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"{key}: unknown device {name!r}; use auto, cpu or cuda")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError(name, key)
    return torch.device(name)


def fused_cpu_attention_in_bf16() -> bool:
    """Whether the CPU's fused attention kernel runs in bf16 here. Its bf16 path packs the
    operands for oneDNN whenever the hardware has bf16 dot products, but the packing exists only
    in torch's AVX-512 kernels: with a lower kernel capability on such hardware (an older CPU
    build, or ATEN_CPU_CAPABILITY set lower) it raises "pack_vnni2 is only supported when avx512
    is supported". Below AVX-512, bf16 attention therefore takes the math path."""
    import torch

    return torch.backends.cpu.get_cpu_capability() == "AVX512"


@contextlib.contextmanager
def bf16_autocast(device: "torch.device"):
    """bf16 autocast on `device` (weights stay float32): the one way training, the grid engine
    and the throughput probe enter it, so that the attention kernel is chosen in one place."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with torch.autocast(device.type, dtype=torch.bfloat16), contextlib.ExitStack() as stack:
        if device.type == "cpu" and not fused_cpu_attention_in_bf16():
            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        yield


@contextlib.contextmanager
def precision(name: str, device: "torch.device"):
    """Forward passes inside run in `name`: fp32; tf32 (float32 matmuls and convolutions
    on TF32 tensor cores, CUDA only: on a CPU it is fp32); bf16 (autocast, CUDA and CPU).
    Callers keep their sums in float64 either way."""
    import torch

    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; use {', '.join(PRECISIONS)}")
    if name == "bf16":
        with bf16_autocast(device):
            yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = name == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
