"""Reading and writing checkpoint files; strict key and shape checks.

Our checkpoints are dicts: `model` (the state_dict that represents the trained model
downstream), `kind` (mae | classifier), `method`, `arch`, plus stage-specific entries.
Released checkpoints (official MAE, RC-MAE, DeiT, timm) are recognised in `formats`.
Everything loads with `weights_only=True`: tensors, plain containers and numbers, and
argparse.Namespace (the official releases keep their training arguments in one). A file
that needs anything else is refused, unless the config trusts it (`trust_checkpoint`).
"""
import argparse
import pickle
from pathlib import Path

import torch

from vitlandscape.storage import outputs


class CheckpointError(ValueError):
    pass


def atomic_save(obj, path) -> None:
    """torch.save to a temporary file beside `path`, then rename: never a half-written file,
    and a previous `path` stays whole when the write fails (outputs.replacing). torch reports
    a short write (a full disk) as a bare RuntimeError; the save is then redone through a
    Python file, which surfaces the OS error, so that the message says what went wrong."""
    with outputs.replacing(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as err:
            if "unexpected pos" not in str(err) and "write failed" not in str(err):
                raise
            with open(tmp, "wb") as f:
                torch.save(obj, f)


def load(path, mmap: bool = False, trusted: bool = False) -> dict:
    """A torch checkpoint file as a dict; `mmap=True` maps the tensors instead of reading
    them (files in the zip format, torch >= 1.6). `trusted` unpickles whatever the file
    holds, which can run code: only for files whose source the user vouches for."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=not trusted, mmap=mmap)
        except pickle.UnpicklingError as err:
            if trusted or "Unsupported global" not in str(err):
                raise CheckpointError(f"checkpoint {path} cannot be read: {err}") from err
            found = str(err).split("Unsupported global:", 1)[1].split(" was not", 1)[0].strip().removeprefix("GLOBAL ")
            raise CheckpointError(
                f"checkpoint {path} cannot be read: it holds {found}, which only a full unpickling can "
                f"rebuild, and unpickling can run code, so it is refused. If you trust where the file "
                f"came from, set trust_checkpoint: true on the model that uses it (config/README.md)") from err
        except Exception as err:
            raise CheckpointError(f"checkpoint {path} cannot be read: {err}") from err
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(ckpt).__name__}, expected a dict")
    return ckpt


def check_keys(expected: dict, state: dict, what: str) -> None:
    """Strict key and shape match; the error lists every missing, unexpected or misshapen key."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshapen = [f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
                 for k in sorted(set(expected) & set(state)) if state[k].shape != expected[k].shape]
    if missing or unexpected or misshapen:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected)}")
        if misshapen:
            parts.append(f"shape mismatches: {'; '.join(misshapen)}")
        raise CheckpointError(f"{what} does not match the model: " + " | ".join(parts))


def load_into(model: torch.nn.Module, state: dict, what: str) -> None:
    check_keys(model.state_dict(), state, what)
    model.load_state_dict(state, strict=True)
