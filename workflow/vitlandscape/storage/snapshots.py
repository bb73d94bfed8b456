"""Weight snapshots of a training run: when to take them, and the file that keeps them.

File contract: one safetensors file with tensors `step<step>.<param>` (float32, cpu), `<param>`
named as in the model's state_dict, one set of parameters per optimizer step (step 0 = initial
weights, the last step = final weights); metadata (strings) records the settings and `steps` as
a JSON list. Training code imports this module; the PCA plane of the path is in
landscape/trajectory_plane.py.
"""
import json
import math
import re

import torch
from safetensors import SafetensorError, safe_open

from vitlandscape.storage.outputs import write_safetensors

SPACINGS = ("linear", "log")
_NAME = re.compile(r"step(0|[1-9][0-9]*)\.(.+)", re.DOTALL)


# ---------------------------------------------------------------- when to snapshot

def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def snapshot_steps(schedule: dict, total_steps: int) -> list[int]:
    """Sorted unique optimizer steps at which to snapshot, always 0 and `total_steps`.

    {'every': k}: 0, k, 2k, ... and total_steps. {'points': n, 'spacing': 'linear'|'log'}
    (spacing defaults to linear): min(n, total_steps + 1) distinct steps from 0 to total_steps,
    evenly spaced, or geometrically spaced in step + 1 (dense early, where training moves most);
    positions that round to a step already taken move to the next free one.
    """
    if not _is_int(total_steps) or total_steps < 0:
        raise ValueError(f"total_steps must be an integer >= 0, got {total_steps!r}")
    if not isinstance(schedule, dict):
        raise ValueError(f"snapshot schedule must be a mapping, got {schedule!r}")
    unknown = sorted(set(schedule) - {"every", "points", "spacing"}, key=str)
    if unknown:
        raise ValueError(f"snapshot schedule: unknown key(s) {unknown}; use every, or points and spacing")
    if "every" in schedule:
        if len(schedule) > 1:
            raise ValueError("snapshot schedule: every cannot be combined with points or spacing")
        k = schedule["every"]
        if not _is_int(k) or k < 1:
            raise ValueError(f"snapshot schedule: every must be an integer >= 1, got {k!r}")
        return sorted(set(range(0, total_steps + 1, k)) | {total_steps})
    if "points" not in schedule:
        raise ValueError("snapshot schedule: give every or points")
    n, spacing = schedule["points"], schedule.get("spacing", "linear")
    if not _is_int(n) or n < 2:
        raise ValueError(f"snapshot schedule: points must be an integer >= 2, got {n!r}")
    if spacing not in SPACINGS:
        raise ValueError(f"snapshot schedule: unknown spacing {spacing!r}; use linear or log")
    m = min(n, total_steps + 1)
    if m == 1:
        return [0]
    if spacing == "linear":  # exact integer rounding, half up
        rounded = [(2 * total_steps * i + m - 1) // (2 * (m - 1)) for i in range(m)]
    else:
        rounded = [math.floor((total_steps + 1) ** (i / (m - 1)) - 1 + 0.5) for i in range(m)]
    return _distinct(rounded, total_steps)


def _distinct(rounded: list[int], total: int) -> list[int]:
    """`rounded` (non-decreasing, len <= total + 1) made strictly increasing from 0 to `total`,
    each value moved as little as needed."""
    out = list(rounded)
    out[0], out[-1] = 0, total
    for i in range(1, len(out)):
        out[i] = max(out[i], out[i - 1] + 1)
    for i in range(len(out) - 2, -1, -1):
        out[i] = min(out[i], out[i + 1] - 1)
    return out


# ---------------------------------------------------------------- the snapshot file

def save_snapshots(path, states: dict, metadata: dict) -> None:
    """Write {step: state_dict} as `step<step>.<param>` float32 tensors, atomically and with
    deterministic bytes. Metadata values that are not strings are stored as JSON; `steps`
    (a JSON list) is set from `states`."""
    if not states:
        raise ValueError("no snapshots to save")
    steps = sorted(states)
    if not all(_is_int(s) and s >= 0 for s in steps):
        raise ValueError(f"snapshot steps must be integers >= 0, got {steps}")
    names = set(states[steps[0]])
    tensors = {}
    for step in steps:
        if set(states[step]) != names:
            raise ValueError(_mismatch(step, set(states[step]), steps[0], names))
        for name, t in states[step].items():
            tensors[f"step{step}.{name}"] = t.detach().to("cpu", torch.float32).contiguous()
    meta = {str(k): v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in metadata.items()}
    meta["steps"] = json.dumps(steps)
    write_safetensors(tensors, meta, path)


def load_snapshots(path) -> tuple[list[int], list[dict], dict]:
    """-> (steps ascending, [state_dict per step], metadata as stored: strings)."""
    source = f"snapshot file {path}"
    try:
        f = safe_open(str(path), framework="pt")
    except SafetensorError as err:
        raise ValueError(f"{source} is not a safetensors file: {err}") from err
    with f:
        metadata = dict(f.metadata() or {})
        by_step: dict[int, dict] = {}
        for key in f.keys():
            match = _NAME.fullmatch(key)
            if match is None:
                raise ValueError(f"{source}: tensor {key!r} is not named step<int>.<param>")
            by_step.setdefault(int(match[1]), {})[match[2]] = f.get_tensor(key)
    if not by_step:
        raise ValueError(f"{source} holds no snapshots")
    steps = sorted(by_step)
    names = set(by_step[steps[0]])
    for step in steps[1:]:
        if set(by_step[step]) != names:
            raise ValueError(f"{source}: {_mismatch(step, set(by_step[step]), steps[0], names)}")
    if "steps" in metadata and _json(metadata["steps"]) != steps:
        raise ValueError(f"{source}: metadata steps {metadata['steps']} but tensors for steps {steps}")
    return steps, [by_step[s] for s in steps], metadata


def _json(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def _mismatch(step, names, first, first_names) -> str:
    missing, extra = sorted(first_names - names), sorted(names - first_names)
    return (f"snapshot at step {step} has other parameters than step {first}: "
            f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
            f"extra {extra[:5]}{' ...' if len(extra) > 5 else ''}")
