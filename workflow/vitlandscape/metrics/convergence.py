"""How fast training converges, as numbers: the step, epoch and wall time at which each model's
smoothed training loss (or the probe accuracy of its snapshots) first reaches a target.

A training curve is a table with one row per optimizer step: `step` (0-based, increasing),
`epoch`, `wall_s` (seconds since training started, after the step), `lr`, `loss` and, for
MAE/RC-MAE pretraining, `reconstruction_loss` (RC-MAE adds `consistency_loss`, `momentum`).
The loss is smoothed by a trailing mean over one epoch's steps before targets are compared,
so one noisy batch does not decide when a target is reached. Imports neither torch nor timm.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from vitlandscape.metrics.curves import check_curve, compared_column, smoothed
from vitlandscape.storage.outputs import replacing

COLUMNS = ["model", "method", "stage", "quantity", "target", "threshold", "step", "epoch", "wall_s", "reached"]
PROBE_QUANTITY = "probe_top1"


def first_at_most(values: np.ndarray, threshold: float) -> int | None:
    """Index of the first value <= threshold, None if there is none."""
    hits = np.flatnonzero(values <= threshold)
    return int(hits[0]) if hits.size else None


# --- rows ---------------------------------------------------------------------------------


def _row(model: str, meta: dict, quantity: str, target: str, threshold: float, at: dict | None) -> dict:
    """One table row; `at` gives step, epoch and wall time (None: the target is never reached)."""
    info = meta.get(model, {})
    row = {"model": model, "method": info.get("method"), "stage": info.get("stage"),
           "quantity": quantity, "target": target, "threshold": float(threshold)}
    if at is None:
        return {**row, "step": None, "epoch": None, "wall_s": np.nan, "reached": False}
    return {**row, **at, "reached": True}


def curve_at(curve: pd.DataFrame, index: int | None) -> dict | None:
    """Step, epoch and wall time of the curve's row `index` (None stays None)."""
    if index is None:
        return None
    at = curve.iloc[index]
    return {"step": int(at["step"]), "epoch": at["epoch"], "wall_s": float(at["wall_s"])}


def snapshot_at(model: str, curve: pd.DataFrame, step: int) -> dict:
    """Step, epoch and wall time of the snapshot after `step` optimizer steps: the moment curve row
    `step - 1` ended (its epoch and wall time); snapshot 0, before training, is at 0 s in the first epoch."""
    if step == 0:
        return {"step": 0, "epoch": curve["epoch"].iloc[0], "wall_s": 0.0}
    rows = np.flatnonzero(curve["step"].to_numpy() == step - 1)
    if not rows.size:
        raise ValueError(f"probe snapshot of {model} after {step} steps: its training curve has no step {step - 1}")
    return {**curve_at(curve, int(rows[0])), "step": step}


def _loss_rows(model: str, curve: pd.DataFrame, column: str, fractions: list[float],
               finals: dict[str, float], meta: dict) -> list[dict]:
    """Targets `decrease_{f}` of the model's own loss drop, then `final_of_{M}` for every other model."""
    loss = smoothed(curve, column)
    start, end = loss[0], loss[-1]
    rows = []
    for f in fractions:
        threshold = end + (1 - f) * (start - end)
        rows.append(_row(model, meta, column, f"decrease_{f:g}", threshold,
                         curve_at(curve, first_at_most(loss, threshold))))
    for other, final in finals.items():
        if other != model:
            rows.append(_row(model, meta, column, f"final_of_{other}", final,
                             curve_at(curve, first_at_most(loss, final))))
    return rows


def _probe_rows(model: str, curve: pd.DataFrame, accuracies: dict, fractions: list[float], meta: dict) -> list[dict]:
    """Targets `of_final_{f}`: the first snapshot with accuracy >= f times the last snapshot's.
    `accuracies` maps snapshot steps (optimizer steps done, as in train/recording.py) to top-1."""
    steps = sorted(int(step) for step in accuracies)
    by_step = {int(step): float(value) for step, value in accuracies.items()}
    top1 = np.array([by_step[step] for step in steps])
    if not steps or not np.isfinite(top1).all():
        raise ValueError(f"probe accuracies of {model} are empty or not finite: {accuracies}")
    rows = []
    for f in fractions:
        threshold = f * top1[-1]
        hits = np.flatnonzero(top1 >= threshold)
        at = snapshot_at(model, curve, steps[hits[0]]) if hits.size else None
        rows.append(_row(model, meta, PROBE_QUANTITY, f"of_final_{f:g}", threshold, at))
    return rows


def _integers(values: pd.Series) -> pd.Series:
    """Integer-valued numbers as nullable integers (printed without '.0'), others as they are."""
    numbers = pd.to_numeric(values)
    known = numbers.dropna()
    return numbers.astype("Int64") if (known == known.round()).all() else numbers


def convergence_rows(curves: dict[str, pd.DataFrame], fractions: list[float], column: str = "reconstruction_loss",
                     probes: dict[str, dict[int, float]] | None = None,
                     meta: dict[str, dict] | None = None) -> pd.DataFrame:
    """Long table (COLUMNS) of when each model's smoothed `column` and, when `probes` are given,
    its snapshots' probe top-1 first reach each target. `meta[model]` gives method and stage.

    Loss targets: `decrease_{f}`: L_end + (1 - f) (L_start - L_end), L_start/L_end the smoothed
    loss at the first/last step; `final_of_{M}`: model M's L_end. Probe targets `of_final_{f}`:
    f times the accuracy of the last snapshot; their step is the snapshot's (steps done, so the final
    snapshot is one past the curve's last step), epoch and wall time those at which it was taken.
    A target never reached has reached False and no step.
    """
    if not all(0 < f <= 1 for f in fractions):
        raise ValueError(f"fractions must lie in (0, 1]: {fractions}")
    meta = meta or {}
    probes = probes or {}
    unknown = sorted(set(probes) - set(curves))
    if unknown:
        raise ValueError(f"probe accuracies of {unknown} but no training curve for them")
    for model, curve in curves.items():
        check_curve(model, curve, column)
    finals = {model: float(smoothed(curve, column)[-1]) for model, curve in curves.items()}
    rows = []
    for model, curve in curves.items():
        rows += _loss_rows(model, curve, column, fractions, finals, meta)
        if model in probes:
            rows += _probe_rows(model, curve, probes[model], fractions, meta)
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.assign(step=_integers(table["step"]), epoch=_integers(table["epoch"]))


def write_table(df: pd.DataFrame, path) -> None:
    """The table as CSV, written atomically."""
    with replacing(path) as tmp:
        df.to_csv(tmp, index=False)


def table(settings: dict, curve_files: dict[str, str], out, probe_files: dict[str, str] | None = None) -> pd.DataFrame:
    """convergence.csv from the curves of every replayed training (`{"model/stage": csv}`) and
    the probe accuracies of some of their snapshots (`{"model/stage": json}`, snapshot-probe):
    models meet within a stage, on `curves.compared_column`."""
    by_stage: dict[str, dict[str, pd.DataFrame]] = {}
    for key, path in curve_files.items():
        model, _, stage = key.partition("/")
        by_stage.setdefault(stage, {})[model] = pd.read_csv(path)
    probes: dict[str, dict[str, dict[int, float]]] = {}
    for key, path in (probe_files or {}).items():
        model, _, stage = key.partition("/")
        result = json.loads(Path(path).read_text())
        probes.setdefault(stage, {})[model] = dict(zip(result["steps"], result["test_top1"]))
    parts = []
    for stage, curves in by_stage.items():
        column = compared_column(curves.values())
        meta = {model: {"method": settings["methods"][f"{model}/{stage}"], "stage": stage} for model in curves}
        parts.append(convergence_rows(curves, settings["fractions"], column, probes.get(stage), meta))
    result = pd.concat(parts, ignore_index=True)
    write_table(result, out)
    print(result.to_string(index=False))
    return result
