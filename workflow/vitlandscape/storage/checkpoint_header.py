"""A checkpoint's format, tensor names and shapes, without reading its tensors.

A safetensors file gives them in its JSON header: only the header is read, and each tensor
becomes a meta tensor of its shape (no data, dtype not kept). A torch file is loaded
memory-mapped (`torch.load(mmap=True, weights_only=True)`): its tensors stay on disk.
"""
import json
import math
from pathlib import Path

import torch

from vitlandscape.storage import checkpoints, formats
from vitlandscape.storage.checkpoints import CheckpointError


def read(path, prefer: str = "teacher", trusted: bool = False) -> formats.Checkpoint:
    """The checkpoint as `formats.read` recognises it, its tensors unread."""
    path = Path(path)
    header = safetensors_shapes(path)
    if header is None:
        return formats.recognise(checkpoints.load(path, mmap=True, trusted=trusted), path, "torch", prefer)
    return formats.recognise(header, path, "safetensors", prefer)


def safetensors_shapes(path: Path) -> dict | None:
    """name -> meta tensor of a safetensors file's header (an 8-byte little-endian header
    length, then a JSON object); None if the file is not one."""
    if not formats.is_safetensors(path):
        return None
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        text = f.read(min(length, path.stat().st_size))
    try:
        header = json.loads(text)
        entries = {name: (info["shape"], info["data_offsets"][1]) for name, info in header.items()
                   if name != "__metadata__"}
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise CheckpointError(f"checkpoint {path} has no readable safetensors header: {err}") from err
    needed = 8 + length + max((end for _, end in entries.values()), default=0)
    if path.stat().st_size < needed:
        raise CheckpointError(f"checkpoint {path} is truncated: its header describes {needed} bytes, "
                              f"the file has {path.stat().st_size}")
    return {name: torch.empty(shape, device="meta") for name, (shape, _) in entries.items()}


def dims(state: dict) -> dict:
    """The architecture dimensions a ViT or MAE state dict's shapes show: embed_dim, patch_size,
    img_size (square images), depth and the decoder's width and depth. num_heads never shows."""
    found = {}
    proj = state.get("patch_embed.proj.weight")
    if proj is not None and proj.ndim == 4:
        found.update(embed_dim=proj.shape[0], patch_size=proj.shape[-1])
        pos = state.get("pos_embed")
        side = math.isqrt(pos.shape[1] - 1) if pos is not None and pos.ndim == 3 else 0
        if side and side * side == pos.shape[1] - 1:
            found["img_size"] = side * proj.shape[-1]
    for key, prefix in (("depth", "blocks."), ("decoder_depth", "decoder_blocks.")):
        blocks = {name.split(".")[1] for name in state if name.startswith(prefix)}
        if blocks:
            found[key] = len(blocks)
    if "decoder_embed.weight" in state:
        found["decoder_embed_dim"] = state["decoder_embed.weight"].shape[0]
    return found
