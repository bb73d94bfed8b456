"""The metrics summary and the findings table: a paper's claims tested with measured numbers.

`summary_table` flattens the per-surface metrics files (`results/metrics/{model}/{objective}.json`)
into one row per surface. `findings_table` tests each configured claim ("surface A is wider
than surface B") on each of its measures and says "holds", "does not hold" or, when the
numbers cannot decide, "undecided" with the reason: a difference within two standard
errors, a region censored by the grid edge, or a value that was not measured.
"""
import json
import math
import re
from pathlib import Path

import pandas as pd

LARGER, SMALLER = 1, -1
# Claim measures by column form; <x> stands for a number as the summary writes it (f"{x:g}").
WIDER_IF_LARGER = ["basin_area_r<r>", "basin_radius_r<r>", "basin_area_abs<d>", "basin_radius_abs<d>",
                   "convex_area", "convex_radius"]
WIDER_IF_SMALLER = ["lambda_max", "lambda_<i>", "trace", "ratio_min_max", "flatness_s<sigma>",
                    "flatness_rel_s<sigma>", "sharpness_mean_rho<rho>", "sharpness_max_rho<rho>",
                    "sharpness_rel_rho<rho>"]
SENSE_WORDS = {LARGER: "larger is wider", SMALLER: "smaller is wider"}
# n: the paired replicates behind the verdict (a training of each side, measured on one pair of
# directions and one evaluation subset): 1 in a run's own table
FINDING_COLUMNS = ["claim", "statement", "measure", "sense", "wider", "wider_value", "than", "than_value",
                   "n", "verdict", "reason"]
FLOAT_FORMAT = "%.6g"


def _numbers(values) -> str:
    return ", ".join(f"{x:g}" for x in values)


def _hessian_columns(h: dict) -> dict:
    top = sorted(h["top_eigenvalues"], reverse=True)
    row = {f"lambda_{i}": v for i, v in enumerate(top, 1)}
    row.update(lambda_max=top[0], lambda_min=h["min_eigenvalue"], lambda_min_residual=h["min_residual"],
               ratio_min_max=h["ratio_min_max"],
               max_residual=max(h["top_residuals"] + [h["min_residual"]]),
               trace=h["trace"]["value"], trace_stderr=h["trace"]["stderr"])
    runs = [h[k] for k in ("lanczos", "trace", "density")]
    row.update(hvp_products=sum(r["products"] for r in runs), hvp_seconds=sum(r["seconds"] for r in runs))
    return row


def _flatness_columns(f: dict) -> dict:
    row = {}
    for s, rise, se in zip(f["sigmas"], f["mean_rise"], f["stderr"]):
        # relative to the centre loss, so that losses of different scales compare
        row.update({f"flatness_s{s:g}": rise, f"flatness_s{s:g}_stderr": se,
                    f"flatness_rel_s{s:g}": rise / f["centre_loss"],
                    f"flatness_rel_s{s:g}_stderr": se / f["centre_loss"]})
    return row


def _region_columns(prefix: str, suffix: str, region: dict) -> dict:
    return {f"{prefix}_area{suffix}": region["area"], f"{prefix}_radius{suffix}": region["mean_radius"],
            f"{prefix}_edge{suffix}": region["touches_edge"]}


def _surface_columns(s: dict) -> dict:
    row = {}
    for b in s["relative_basins"]:
        row.update(_region_columns("basin", f"_r{b['relative_rise']:g}", b))
    for b in s["absolute_basins"]:
        row.update(_region_columns("basin", f"_abs{b['absolute_rise']:g}", b))
    row.update(_region_columns("convex", "", s["convex_region"]))
    for p in s["sharpness"]:
        rho = f"{p['rho']:g}"
        row.update({f"sharpness_mean_rho{rho}": p["mean_rise"], f"sharpness_max_rho{rho}": p["max_rise"],
                    f"sharpness_rel_rho{rho}": p["mean_rise"] / s["centre_loss"]})
    return row


def summary_row(metrics: dict) -> dict:
    """One surface's metrics as flat columns; no Hessian or flatness columns when those are off."""
    row = {k: metrics[k] for k in ("model", "method", "objective", "parameters", "eval_samples", "centre_loss")}
    if metrics.get("hessian"):
        row.update(_hessian_columns(metrics["hessian"]))
    if metrics.get("flatness"):
        row.update(_flatness_columns(metrics["flatness"]))
    row.update(_surface_columns(metrics["surface"]))
    return row


def write_table(table: pd.DataFrame, out) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False, float_format=FLOAT_FORMAT)
    print(table.to_string(index=False))


def summary_table(metric_files, out) -> pd.DataFrame:
    """One row per metrics file, in the files' order, written to `out` as CSV."""
    rows = [summary_row(json.loads(Path(p).read_text())) for p in metric_files]
    # columns in the order of the fullest row, not of a first row without Hessian or flatness
    columns = dict.fromkeys(c for row in sorted(rows, key=len, reverse=True) for c in row)
    table = pd.DataFrame(rows, columns=list(columns))
    write_table(table, out)
    return table


def _form_matches(measure: str, form: str) -> bool:
    return re.fullmatch(re.sub(r"<\w+>", "[0-9.e+-]+", form), measure) is not None


def sense(measure: str) -> int:
    """+1 when a larger value means a wider basin, -1 when a smaller one does."""
    for forms, s in ((WIDER_IF_LARGER, LARGER), (WIDER_IF_SMALLER, SMALLER)):
        if any(_form_matches(measure, form) for form in forms):
            return s
    raise ValueError(f"{measure} is not a claim measure; valid measures: "
                     f"{', '.join(WIDER_IF_LARGER + WIDER_IF_SMALLER)}")


def _verdict(measure: str, s: int, wider: pd.Series, than: pd.Series) -> tuple[str, str]:
    stderr = f"{measure}_stderr"
    needed = [measure] + ([stderr] if stderr in wider.index else [])
    for side, row in (("wider", wider), ("than", than)):
        for column in needed:
            if pd.isna(row.get(column, math.nan)):
                return "undecided", f"{column} of the {side}-surface is missing"
    if measure == "ratio_min_max":
        # Lanczos' smallest Ritz value only bounds lambda_min from above; with a residual as large
        # as the value itself it may be a bulk eigenvalue near 0, not the most negative one
        for side, row in (("wider", wider), ("than", than)):
            if row["lambda_min_residual"] >= abs(row["lambda_min"]):
                return "undecided", (f"lambda_min of the {side}-surface is not resolved (Lanczos residual "
                                     f"{row['lambda_min_residual']:.2g} >= |lambda_min|)")
    difference = s * (wider[measure] - than[measure])  # > 0: the claimed-wider surface is wider
    if stderr in wider.index and abs(difference) < 2 * math.hypot(wider[stderr], than[stderr]):
        return "undecided", "difference within 2 standard errors"
    if s == LARGER:
        # a region measure: a region that reaches the grid edge is at least as large as measured
        edge = re.sub(r"_(area|radius)", "_edge", measure)
        wider_censored, than_censored = bool(wider[edge]), bool(than[edge])
        if wider_censored and than_censored:
            return "undecided", "both regions reach the grid edge"
        if difference > 0 and than_censored:
            return "undecided", "the than-surface's region reaches the grid edge"
        if difference <= 0 and wider_censored:
            return "undecided", "the wider-surface's region reaches the grid edge"
    return ("holds", "") if difference > 0 else ("does not hold", "")


def findings_table(summary: pd.DataFrame, claims: list[dict], out) -> pd.DataFrame:
    """One row per (claim, measure) with the verdict, written to `out` as CSV."""
    surfaces = summary.set_index(summary["model"] + "/" + summary["objective"])
    rows = []
    for claim in claims:
        for side in ("wider", "than"):
            if claim[side] not in surfaces.index:
                raise ValueError(f"claim {claim['name']}: surface {claim[side]} is not in the summary "
                                 f"(surfaces: {', '.join(surfaces.index)})")
        wider, than = surfaces.loc[claim["wider"]], surfaces.loc[claim["than"]]
        for measure in claim["measures"]:
            s = sense(measure)
            verdict, reason = _verdict(measure, s, wider, than)
            rows.append([claim["name"], claim["claim"], measure, SENSE_WORDS[s], claim["wider"],
                         wider.get(measure, math.nan), claim["than"], than.get(measure, math.nan), 1, verdict,
                         reason])
    table = pd.DataFrame(rows, columns=FINDING_COLUMNS)
    write_table(table, out)
    return table


def measure_names(metrics_cfg: dict) -> list[str]:
    """The claim measures that a run with this `metrics` config section computes."""
    names = []
    hessian, flatness = metrics_cfg["hessian"], metrics_cfg["flatness"]
    if hessian["enabled"]:
        names += ["lambda_max"] + [f"lambda_{i}" for i in range(1, hessian["top_k"] + 1)] + ["trace", "ratio_min_max"]
    if flatness["enabled"]:
        names += [f"flatness{rel}_s{s:g}" for rel in ("", "_rel") for s in flatness["sigmas"]]
    names += [f"basin_{m}_r{r:g}" for m in ("area", "radius") for r in metrics_cfg["relative_rises"]]
    names += [f"basin_{m}_abs{d:g}" for m in ("area", "radius") for d in metrics_cfg["absolute_rises"]]
    names += ["convex_area", "convex_radius"]
    names += [f"sharpness_{m}_rho{p:g}" for m in ("mean", "max", "rel") for p in metrics_cfg["sharpness_rho"]]
    return names


def _not_measured_because(measure: str, metrics_cfg: dict) -> str:
    """The config setting that leaves a valid measure out (never the always-measured convex ones)."""
    if measure.startswith(("lambda_", "trace", "ratio_")):
        h = metrics_cfg["hessian"]
        return f"hessian.top_k is {h['top_k']}" if h["enabled"] else "hessian.enabled is false"
    if measure.startswith("flatness"):
        f = metrics_cfg["flatness"]
        return f"flatness.sigmas are {_numbers(f['sigmas'])}" if f["enabled"] else "flatness.enabled is false"
    if measure.startswith("sharpness"):
        return f"sharpness_rho are {_numbers(metrics_cfg['sharpness_rho'])}"
    if "_abs" in measure:
        return f"absolute_rises are {_numbers(metrics_cfg['absolute_rises'])}"
    return f"relative_rises are {_numbers(metrics_cfg['relative_rises'])}"


def claim_problems(metrics_cfg: dict, surfaces: set[str]) -> list[str]:
    """What is wrong with `metrics.claims`, each message naming the key at fault; `surfaces`
    are the "model/objective" surfaces the config computes."""
    available = measure_names(metrics_cfg)
    out = []
    for i, claim in enumerate(metrics_cfg["claims"]):
        key = f"metrics.claims[{i}] ({claim['name']})"
        for side in ("wider", "than"):
            if claim[side] not in surfaces:
                out.append(f"{key}.{side}: surface {claim[side]} is not computed "
                           f"(known: {', '.join(sorted(surfaces))})")
        if claim["wider"] == claim["than"]:
            out.append(f"{key}: wider and than are the same surface {claim['wider']}")
        for measure in claim["measures"]:
            try:
                sense(measure)
            except ValueError as e:
                out.append(f"{key}.measures: {e}")
                continue
            if measure not in available:
                why = _not_measured_because(measure, metrics_cfg)
                out.append(f"{key}.measures: {measure} is not measured ({why}); "
                           f"measures available: {', '.join(available)}")
    return out
