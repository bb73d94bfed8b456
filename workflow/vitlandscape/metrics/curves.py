"""Training curves (train/recording.py writes them: one row per optimizer step): the checks they must
pass and their smoothing, shared by the convergence table and the figures that draw them.
Imports neither torch nor timm.
"""
import numpy as np
import pandas as pd


def check_curve(model: str, curve: pd.DataFrame, column: str) -> None:
    """Raise ValueError naming `model` and `column` unless the curve has the columns needed,
    at least one row, finite steps, epochs and wall times, strictly increasing steps and a
    finite `column` at every step."""
    missing = [name for name in ("step", "epoch", "wall_s", column) if name not in curve.columns]
    if missing:
        raise ValueError(f"training curve of {model} has no column {', '.join(map(repr, missing))} "
                         f"(reading {column!r})")
    if curve.empty:
        raise ValueError(f"training curve of {model} has no rows (reading {column!r})")
    for name in ("step", "epoch", "wall_s"):
        values = curve[name].to_numpy(dtype=float)
        if not np.isfinite(values).all():
            raise ValueError(f"training curve of {model}: {name} is not finite at row "
                             f"{np.flatnonzero(~np.isfinite(values))[0]} (reading {column!r})")
    steps = curve["step"].to_numpy(dtype=float)
    bad = np.flatnonzero(np.diff(steps) <= 0)
    if bad.size:
        k = bad[0]
        raise ValueError(f"training curve of {model}: steps do not increase at row {k + 1} "
                         f"(step {steps[k]:g} then {steps[k + 1]:g}), reading {column!r}")
    values = curve[column].to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ValueError(f"training curve of {model}: {column} is {values[bad[0]]} at step "
                         f"{int(steps[bad[0]])} (first non-finite value)")


def epoch_steps(curve: pd.DataFrame) -> int:
    """Steps in one epoch: the number of rows with the first row's epoch."""
    return int((curve["epoch"] == curve["epoch"].iloc[0]).sum())


def smoothed(curve: pd.DataFrame, column: str) -> np.ndarray:
    """`column` as a trailing mean over one epoch's steps (fewer at the start)."""
    values = curve[column].astype(float)
    return values.rolling(epoch_steps(curve), min_periods=1).mean().to_numpy()


def compared_column(curves) -> str:
    """The loss that curves of different methods meet on: the reconstruction (pretext) loss
    where every curve has it (MAE, RC-MAE pretraining: RC-MAE's consistency term left out),
    else the loss trained."""
    return "reconstruction_loss" if all("reconstruction_loss" in c for c in curves) else "loss"

