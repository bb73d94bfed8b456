"""A study's tables: every replicate's metrics in one summary, and the claims tested across
replicates with intervals (`results/studies/{study}/summary.csv`, `findings.csv`).

A replicate is one surface of one variant: a training (setting, training seed) measured on
one direction pair and one evaluation subset. A claim ("surface A is wider than surface B")
pairs variant k of A's model with variant k of B's, at the same setting, seed position,
direction seed and eval seed; its interval is the two-level bootstrap of the mean paired
difference (intervals.py), training seeds outside, direction and eval replicates inside.
A study that varies a setting also asks, per model and surface, whether each setting widens
the surface compared with the first one listed. Imports neither torch nor timm.
"""
import json
import math
import re
from pathlib import Path

import pandas as pd

from vitlandscape.metrics import findings
from vitlandscape.metrics.intervals import nested_interval

# Who a replicate is: the columns that come before its measures in summary.csv.
REPLICATE_COLUMNS = ["study", "model", "variant", "setting", "training_seed", "direction_seed", "eval_seed",
                     "surface"]
FINDING_COLUMNS = ["study", "claim", "statement", "measure", "setting", "sense", "wider", "than", "n", "mean_wider",
                   "mean_than", "mean_difference", "ci_low", "ci_high", "interval", "holds_in", "verdict", "reason"]


def summary_table(replicates: list[dict], metric_files: list, out) -> pd.DataFrame:
    """One row per replicate (`replicates[k]` measured in `metric_files[k]`): who it is, how its
    training ran (`training` columns), then the columns of metrics/summary.csv."""
    if len(replicates) != len(metric_files):
        raise ValueError(f"{len(replicates)} replicates but {len(metric_files)} metrics files")
    rows = []
    for replicate, path in zip(replicates, metric_files):
        metrics = json.loads(Path(path).read_text())
        if metrics["model"] != replicate["name"] or metrics["objective"] != replicate["objective"]:
            raise ValueError(f"metrics file {path} is of {metrics['model']}/{metrics['objective']}, not of the "
                             f"replicate {replicate['name']}/{replicate['objective']}")
        measured = {k: v for k, v in findings.summary_row(metrics).items() if k != "model"}
        rows.append({**{k: replicate[k] for k in REPLICATE_COLUMNS if k != "surface"},
                     "surface": f"{replicate['name']}/{replicate['objective']}", **replicate["training"], **measured})
    columns = dict.fromkeys(c for row in sorted(rows, key=len, reverse=True) for c in row)
    table = pd.DataFrame(rows, columns=list(columns))
    findings.write_table(table, out)
    return table


def _interval_words(bootstrap: dict) -> str:
    return (f"two-level bootstrap (training seeds, then direction and eval replicates), "
            f"{bootstrap['resamples']} resamples, {bootstrap['confidence']:.0%}")


def _censored(measure: str, rows: pd.DataFrame) -> int:
    """How many of a side's replicates have a region that reaches the grid edge (0 for other measures)."""
    edge = re.sub(r"_(area|radius)", "_edge", measure)
    if findings.sense(measure) != findings.LARGER or edge not in rows:
        return 0
    return int(rows[edge].astype(bool).sum())


def _unresolved(rows: pd.DataFrame) -> int:
    """Replicates whose Lanczos lambda_min is not resolved (its residual as large as the value)."""
    return int((rows["lambda_min_residual"] >= rows["lambda_min"].abs()).sum())


def _verdict(measure: str, s: int, low: float, high: float, wider: pd.DataFrame, than: pd.DataFrame,
             seeds: int, confidence: float) -> tuple[str, str]:
    supports, refutes = (low > 0, high < 0) if s == findings.LARGER else (high < 0, low > 0)
    if measure == "ratio_min_max":
        unresolved = _unresolved(wider) + _unresolved(than)
        if unresolved:
            return "undecided", f"lambda_min is not resolved in {unresolved} of {len(wider) + len(than)} surfaces"
    wider_edge, than_edge = _censored(measure, wider), _censored(measure, than)
    if supports and than_edge:
        return "undecided", f"the than-surface's region reaches the grid edge in {than_edge} of {len(than)} replicates"
    if refutes and wider_edge:
        return "undecided", f"the wider-surface's region reaches the grid edge in {wider_edge} of {len(wider)} replicates"
    note = "" if seeds > 1 else "; one training seed: the interval covers directions and evaluation subsets only"
    if supports:
        return "holds", note.lstrip("; ")
    if refutes:
        return "does not hold", note.lstrip("; ")
    return "undecided", f"the {confidence:.0%} interval [{low:.4g}, {high:.4g}] contains no difference{note}"


def _undecided(reason: str) -> dict:
    return {"mean_wider": math.nan, "mean_than": math.nan, "mean_difference": math.nan, "holds_in": 0,
            "ci_low": math.nan, "ci_high": math.nan, "verdict": "undecided", "reason": reason}


def paired_finding(measure: str, wider: pd.DataFrame, than: pd.DataFrame, bootstrap: dict) -> dict:
    """The claim "wider is wider than than" on one measure, across the paired replicates: the
    rows of `wider` and `than` are indexed by the same pair keys (seed position first)."""
    s = findings.sense(measure)
    common = wider.index.intersection(than.index)
    wider, than = wider.loc[common], than.loc[common]
    found = {"sense": findings.SENSE_WORDS[s], "n": len(common), "interval": _interval_words(bootstrap)}
    missing = [side for side, rows in (("wider", wider), ("than", than))
               if measure not in rows or rows[measure].isna().any()]
    if missing:
        return {**found, **_undecided(f"{measure} is missing for the {' and '.join(missing)}-surface")}
    difference = wider[measure] - than[measure]
    means = {"mean_wider": float(wider[measure].mean()), "mean_than": float(than[measure].mean()),
             "mean_difference": float(difference.mean()), "holds_in": int((s * difference > 0).sum())}
    if len(common) < 2:
        return {**found, **_undecided(f"{len(common)} paired replicate: no interval"), **means}
    if difference.nunique() == 1:  # e.g. a Hessian measure of one training on several direction pairs
        return {**found, **_undecided(f"all {len(common)} paired differences are {difference.iloc[0]:.4g}: no "
                                      f"spread for an interval (a Hessian or flatness measure of one training "
                                      f"is the same on every direction pair)"), **means}
    difference = wider[measure] - than[measure]
    groups = [g.to_numpy() for _, g in difference.groupby(level=0)]
    low, high = nested_interval(groups, bootstrap["resamples"], bootstrap["seed"], bootstrap["confidence"])
    verdict, reason = _verdict(measure, s, low, high, wider, than, len(groups), bootstrap["confidence"])
    return {**found, **means, "ci_low": low, "ci_high": high, "verdict": verdict, "reason": reason}


def _paired(summary: pd.DataFrame, base: str, objective: str, setting: str | None) -> pd.DataFrame:
    """The replicates of one model's surface (at one setting), indexed by their pair key."""
    rows = summary[(summary["model"] == base) & (summary["objective"] == objective)]
    if setting is not None:
        rows = rows[rows["setting"] == setting]
    return rows.set_index(["seed_index", "direction_seed", "eval_seed"])


def _claim_rows(summary, claims, varies, bootstrap) -> list[dict]:
    """The configured claims whose two models are both in the study, per setting."""
    out, settings = [], (list(dict.fromkeys(summary["setting"])) if varies else [None])
    for claim in claims:
        (wider_model, wider_objective), (than_model, than_objective) = (c.split("/") for c in (claim["wider"],
                                                                                              claim["than"]))
        if not {wider_model, than_model} <= set(summary["model"]):
            continue
        for setting in settings:
            wider = _paired(summary, wider_model, wider_objective, setting)
            than = _paired(summary, than_model, than_objective, setting)
            for measure in claim["measures"]:
                out.append({"claim": claim["name"], "statement": claim["claim"], "measure": measure,
                            "setting": "all" if setting is None else setting, "wider": claim["wider"],
                            "than": claim["than"], **paired_finding(measure, wider, than, bootstrap)})
    return out


def _setting_rows(summary, claims, varies, bootstrap) -> list[dict]:
    """Per model and surface: does each setting widen it compared with the first setting listed?
    On the measures the configured claims use for that surface."""
    out = []
    settings = list(dict.fromkeys(summary["setting"]))
    for (base, objective), _ in summary.groupby(["model", "objective"], sort=False):
        surface = f"{base}/{objective}"
        measures = list(dict.fromkeys(m for c in claims if surface in (c["wider"], c["than"]) for m in c["measures"]))
        reference = _paired(summary, base, objective, settings[0])
        for setting in settings[1:]:
            at = _paired(summary, base, objective, setting)
            for measure in measures:
                out.append({"claim": f"{varies}={setting}_vs_{settings[0]}:{surface}",
                            "statement": f"{varies} {setting} widens {surface} compared with {varies} {settings[0]}",
                            "measure": measure, "setting": setting, "wider": f"{surface} at {varies}={setting}",
                            "than": f"{surface} at {varies}={settings[0]}",
                            **paired_finding(measure, at, reference, bootstrap)})
    return out


def findings_table(summary: pd.DataFrame, seed_index: list[int], settings: dict, out) -> pd.DataFrame:
    """The claims across the study's replicates; `seed_index[k]`: the position of row k's
    training seed in the study's list (what pairs variant k of one model with variant k of another)."""
    summary = summary.assign(seed_index=seed_index, setting=summary["setting"].astype(str))
    varies, claims, bootstrap = settings["varies"], settings["claims"], settings["bootstrap"]
    rows = _claim_rows(summary, claims, varies, bootstrap)
    if varies:
        rows += _setting_rows(summary, claims, varies, bootstrap)
    table = pd.DataFrame([{"study": settings["study"], **row} for row in rows], columns=FINDING_COLUMNS)
    findings.write_table(table, out)
    return table


def tables(settings: dict, metric_files: list, out_dir) -> None:
    """`settings`: {study, varies, claims, bootstrap, replicates: [{name, objective, seed_index,
    training: {...}, and the REPLICATE_COLUMNS but surface}]} as the study_tables rule passes it."""
    out_dir = Path(out_dir)
    replicates = [{**r, "study": settings["study"]} for r in settings["replicates"]]
    summary = summary_table(replicates, metric_files, out_dir / "summary.csv")
    findings_table(summary, [r["seed_index"] for r in replicates], settings, out_dir / "findings.csv")

