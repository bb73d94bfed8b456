"""The metrics summary and the findings table, on metrics written by hand."""
import json
import math

import pandas as pd
import pytest

from vitlandscape.metrics import findings


def metrics(model="mae", objective="pretext", eigenvalues=(3.2, 5.1, 2.0), trace=40.0, trace_stderr=2.0,
            rises=(0.01, 0.05, 0.2), basin_radius=0.6, basin_edge=False, hessian=True, flatness=True):
    """One surface's metrics file; flatness and surface centre losses differ on purpose (0.5, 0.4)
    so that a test sees which one a relative measure divides by."""
    m = {"model": model, "method": model, "objective": objective, "checkpoint": "c.pt",
         "checkpoint_sha256": "0" * 64, "checkpoint_format": "vitlandscape", "eval_samples": 256,
         "parameters": 123456, "centre_loss": 0.55,
         "hessian": {"top_eigenvalues": list(eigenvalues), "top_residuals": [1e-6, 4e-6, 2e-6],
                     "min_eigenvalue": -0.3, "min_residual": 3e-6, "ratio_min_max": 0.3 / 5.1,
                     "lanczos": {"steps": 20, "products": 24, "seconds": 3.1},
                     "trace": {"value": trace, "stderr": trace_stderr, "probes": 10, "products": 10, "seconds": 1.2},
                     "density": {"nodes": [1.0], "weights": [1.0], "runs": 2, "steps": 20, "products": 40,
                                 "seconds": 4.0}},
         "flatness": {"centre_loss": 0.5, "sigmas": [0.05, 0.1, 1.0], "samples": 5, "mean_rise": list(rises),
                      "stderr": [0.001, 0.004, 0.01], "evaluations": 16, "seconds": 0.8},
         "surface": {"centre_loss": 0.4,
                     "relative_basins": [{"relative_rise": 0.5, "level": 0.6, "area": 1.2, "mean_radius": basin_radius,
                                          "points": 300, "touches_edge": basin_edge},
                                         {"relative_rise": 1.0, "level": 0.8, "area": 2.0, "mean_radius": 0.8,
                                          "points": 500, "touches_edge": True}],
                     "absolute_basins": [{"absolute_rise": 0.25, "level": 0.65, "area": 1.1, "mean_radius": 0.58,
                                          "points": 280, "touches_edge": False}],
                     "convex_region": {"area": 0.3, "mean_radius": 0.3, "points": 70, "touches_edge": False},
                     "sharpness": [{"rho": 0.5, "mean_rise": 0.2, "max_rise": 0.4}]}}
    if not hessian:
        m["hessian"] = None
    if not flatness:
        m["flatness"] = None
    return m


def write(tmp_path, *all_metrics):
    paths = []
    for m in all_metrics:
        path = tmp_path / m["model"] / f"{m['objective']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(m))
        paths.append(path)
    return paths


def test_summary_row_columns_and_values():
    row = findings.summary_row(metrics())
    assert list(row) == [
        "model", "method", "objective", "parameters", "eval_samples", "centre_loss",
        "lambda_1", "lambda_2", "lambda_3", "lambda_max", "lambda_min", "lambda_min_residual", "ratio_min_max",
        "max_residual",
        "trace", "trace_stderr", "hvp_products", "hvp_seconds",
        "flatness_s0.05", "flatness_s0.05_stderr", "flatness_rel_s0.05", "flatness_rel_s0.05_stderr",
        "flatness_s0.1", "flatness_s0.1_stderr", "flatness_rel_s0.1", "flatness_rel_s0.1_stderr",
        "flatness_s1", "flatness_s1_stderr", "flatness_rel_s1", "flatness_rel_s1_stderr",
        "basin_area_r0.5", "basin_radius_r0.5", "basin_edge_r0.5", "basin_area_r1", "basin_radius_r1", "basin_edge_r1",
        "basin_area_abs0.25", "basin_radius_abs0.25", "basin_edge_abs0.25",
        "convex_area", "convex_radius", "convex_edge",
        "sharpness_mean_rho0.5", "sharpness_max_rho0.5", "sharpness_rel_rho0.5"]
    assert row["model"] == "mae" and row["objective"] == "pretext" and row["parameters"] == 123456
    assert row["eval_samples"] == 256 and row["centre_loss"] == 0.55
    # eigenvalues in descending order, whatever order the file lists them in
    assert [row["lambda_1"], row["lambda_2"], row["lambda_3"], row["lambda_max"]] == [5.1, 3.2, 2.0, 5.1]
    assert row["lambda_min"] == -0.3 and row["ratio_min_max"] == 0.3 / 5.1
    assert row["lambda_min_residual"] == 3e-6
    assert row["max_residual"] == 4e-6
    assert row["trace"] == 40.0 and row["trace_stderr"] == 2.0
    assert row["hvp_products"] == 24 + 10 + 40
    assert row["hvp_seconds"] == pytest.approx(3.1 + 1.2 + 4.0)
    assert row["flatness_s0.1"] == 0.05 and row["flatness_s0.1_stderr"] == 0.004
    assert row["flatness_rel_s0.1"] == pytest.approx(0.05 / 0.5)
    assert row["flatness_rel_s0.1_stderr"] == pytest.approx(0.004 / 0.5)
    assert row["flatness_rel_s1"] == pytest.approx(0.2 / 0.5)
    assert (row["basin_area_r0.5"], row["basin_radius_r0.5"], row["basin_edge_r0.5"]) == (1.2, 0.6, False)
    assert (row["basin_area_r1"], row["basin_radius_r1"], row["basin_edge_r1"]) == (2.0, 0.8, True)
    assert (row["basin_area_abs0.25"], row["basin_radius_abs0.25"], row["basin_edge_abs0.25"]) == (1.1, 0.58, False)
    assert (row["convex_area"], row["convex_radius"], row["convex_edge"]) == (0.3, 0.3, False)
    assert (row["sharpness_mean_rho0.5"], row["sharpness_max_rho0.5"]) == (0.2, 0.4)
    assert row["sharpness_rel_rho0.5"] == pytest.approx(0.2 / 0.4)


def test_summary_row_max_residual_can_be_the_min_eigenvalue_s():
    m = metrics()
    m["hessian"]["min_residual"] = 9e-6
    assert findings.summary_row(m)["max_residual"] == 9e-6


def test_summary_row_without_hessian_or_flatness_has_no_such_columns():
    row = findings.summary_row(metrics(hessian=False, flatness=False))
    assert not [c for c in row if c.startswith(("lambda", "trace", "hvp", "flatness", "ratio", "max_res"))]
    assert row["convex_area"] == 0.3


def test_summary_table_rows_in_file_order_missing_hessian_nan_and_csv(tmp_path, capsys):
    files = write(tmp_path / "in", metrics("sup", "supervised", hessian=False), metrics("mae", "pretext"))
    out = tmp_path / "metrics" / "summary.csv"
    table = findings.summary_table(files, out)
    assert list(table["model"]) == ["sup", "mae"]
    assert math.isnan(table.loc[0, "lambda_max"]) and math.isnan(table.loc[0, "trace"])
    assert table.loc[1, "lambda_max"] == 5.1
    assert table.loc[0, "flatness_s0.1"] == 0.05
    assert list(table.columns) == list(findings.summary_row(metrics()))
    assert ",0.0588235," in out.read_text()  # six significant digits
    # "%.6g" writes 2.0 as 2, read back as an integer
    pd.testing.assert_frame_equal(pd.read_csv(out), table, check_exact=False, rtol=1e-5, check_dtype=False)
    assert "mae" in capsys.readouterr().out


def finding(tmp_path, measure, wider: dict, than: dict) -> pd.Series:
    """The single finding of claim "a/o is wider than b/o" on `measure`, from summary columns."""
    summary = pd.DataFrame([{"model": "a", "objective": "o", **wider}, {"model": "b", "objective": "o", **than}])
    claim = {"name": "c", "claim": "a is wider than b", "wider": "a/o", "than": "b/o", "measures": [measure]}
    table = findings.findings_table(summary, [claim], tmp_path / "findings.csv")
    assert len(table) == 1
    return table.iloc[0]


@pytest.mark.parametrize("measure, a, b, verdict", [
    ("basin_radius_r0.5", 2.0, 1.0, "holds"),
    ("basin_radius_r0.5", 1.0, 2.0, "does not hold"),
    ("basin_radius_r0.5", 1.0, 1.0, "does not hold"),
    ("lambda_max", 1.0, 2.0, "holds"),
    ("lambda_max", 2.0, 1.0, "does not hold"),
    ("lambda_max", 1.0, 1.0, "does not hold"),
])
def test_verdict_follows_the_measure_s_sense(tmp_path, measure, a, b, verdict):
    extra = {"basin_edge_r0.5": False} if measure.startswith("basin") else {}
    row = finding(tmp_path, measure, {measure: a, **extra}, {measure: b, **extra})
    assert (row["verdict"], row["reason"]) == (verdict, "")
    assert (row["wider_value"], row["than_value"]) == (a, b)


@pytest.mark.parametrize("a, se_a, b, se_b, verdict", [
    (10.0, 1.0, 12.0, 1.0, "undecided"),      # 2 < 2 * sqrt(2)
    (10.0, 1.0, 13.0, 1.0, "holds"),          # 3 > 2 * sqrt(2), though < 2 * (1 + 1)
    (10.0, 0.0, 12.0, 1.0, "holds"),          # exactly 2 standard errors apart
    (10.0, 0.0, 11.9, 1.0, "undecided"),      # the than-surface's error counts
    (10.0, 1.0, 11.9, 0.0, "undecided"),      # the wider-surface's error counts
    (13.0, 1.0, 10.0, 1.0, "does not hold"),
])
def test_stochastic_measure_undecided_within_two_standard_errors(tmp_path, a, se_a, b, se_b, verdict):
    row = finding(tmp_path, "trace", {"trace": a, "trace_stderr": se_a}, {"trace": b, "trace_stderr": se_b})
    assert row["verdict"] == verdict
    assert row["reason"] == ("difference within 2 standard errors" if verdict == "undecided" else "")


@pytest.mark.parametrize("a, edge_a, b, edge_b, verdict, reason", [
    (2.0, False, 1.0, True, "undecided", "the than-surface's region reaches the grid edge"),
    (2.0, True, 1.0, False, "holds", ""),
    (1.0, True, 2.0, False, "undecided", "the wider-surface's region reaches the grid edge"),
    (1.0, True, 1.0, False, "undecided", "the wider-surface's region reaches the grid edge"),
    (1.0, False, 2.0, True, "does not hold", ""),
    (1.0, False, 1.0, True, "does not hold", ""),
    (2.0, True, 1.0, True, "undecided", "both regions reach the grid edge"),
    (1.0, True, 2.0, True, "undecided", "both regions reach the grid edge"),
])
@pytest.mark.parametrize("measure, edge", [("basin_area_r0.5", "basin_edge_r0.5"),
                                           ("basin_radius_abs0.25", "basin_edge_abs0.25"),
                                           ("convex_area", "convex_edge")])
def test_region_touching_the_grid_edge_is_censored(tmp_path, measure, edge, a, edge_a, b, edge_b, verdict, reason):
    row = finding(tmp_path, measure, {measure: a, edge: edge_a}, {measure: b, edge: edge_b})
    assert (row["verdict"], row["reason"]) == (verdict, reason)


def test_missing_values_are_undecided(tmp_path):
    row = finding(tmp_path, "lambda_max", {"lambda_max": 1.0}, {"lambda_max": math.nan})
    assert row["verdict"] == "undecided" and row["reason"] == "lambda_max of the than-surface is missing"
    row = finding(tmp_path, "lambda_max", {"lambda_max": math.nan}, {"lambda_max": 2.0})
    assert row["reason"] == "lambda_max of the wider-surface is missing"
    row = finding(tmp_path, "trace", {"trace": 1.0, "trace_stderr": 0.1}, {"trace": 9.0, "trace_stderr": math.nan})
    assert row["reason"] == "trace_stderr of the than-surface is missing"
    # hessian off for every surface: no such column at all
    row = finding(tmp_path, "trace", {"convex_area": 1.0}, {"convex_area": 1.0})
    assert row["verdict"] == "undecided" and math.isnan(row["wider_value"])


def test_findings_table_from_summary_table(tmp_path, capsys):
    files = write(tmp_path, metrics("mae", "pretext", basin_radius=0.9, rises=(0.01, 0.02, 0.3), trace=30.0),
                  metrics("sup", "supervised", basin_radius=0.5, rises=(0.02, 0.06, 0.1), trace=40.0,
                          trace_stderr=5.0))
    summary = findings.summary_table(files, tmp_path / "summary.csv")
    claims = [{"name": "mae_basin_wider", "claim": "MAE's basin is wider", "wider": "mae/pretext",
               "than": "sup/supervised", "measures": ["basin_radius_r0.5", "flatness_rel_s0.1", "trace",
                                                      "flatness_s1", "basin_radius_r1"]},
              {"name": "sup_sharper", "claim": "the supervised basin is wider", "wider": "sup/supervised",
               "than": "mae/pretext", "measures": ["basin_radius_r0.5"]}]
    out = tmp_path / "out" / "findings.csv"
    table = findings.findings_table(summary, claims, out)
    assert list(table.columns) == ["claim", "statement", "measure", "sense", "wider", "wider_value", "than",
                                   "than_value", "n", "verdict", "reason"]
    assert set(table["n"]) == {1}  # one training of each side, one pair of directions
    assert list(table["measure"]) == claims[0]["measures"] + ["basin_radius_r0.5"]
    assert list(table["sense"]) == ["larger is wider", "smaller is wider", "smaller is wider", "smaller is wider",
                                    "larger is wider", "larger is wider"]
    assert list(table["verdict"]) == ["holds", "holds", "undecided", "does not hold", "undecided", "does not hold"]
    first = table.iloc[0]
    assert (first["claim"], first["statement"], first["wider"], first["than"]) == (
        "mae_basin_wider", "MAE's basin is wider", "mae/pretext", "sup/supervised")
    assert (first["wider_value"], first["than_value"]) == (0.9, 0.5)
    assert table.iloc[1]["wider_value"] == pytest.approx(0.02 / 0.5)
    pd.testing.assert_frame_equal(pd.read_csv(out, keep_default_na=False), table, check_exact=False,
                                  rtol=1e-5)
    assert "mae_basin_wider" in capsys.readouterr().out


def test_claim_on_a_surface_missing_from_the_summary_raises(tmp_path):
    summary = pd.DataFrame([findings.summary_row(metrics("mae", "pretext"))])
    claim = {"name": "x", "claim": "", "wider": "mae/pretext", "than": "sup/supervised", "measures": ["trace"]}
    with pytest.raises(ValueError, match=r"claim x: surface sup/supervised is not in the summary"):
        findings.findings_table(summary, [claim], tmp_path / "f.csv")
    claim.update(wider="rcmae/pretext", than="mae/pretext")
    with pytest.raises(ValueError, match=r"claim x: surface rcmae/pretext"):
        findings.findings_table(summary, [claim], tmp_path / "f.csv")


@pytest.mark.parametrize("measure", ["basin_area_r0.5", "basin_radius_r1", "basin_area_abs0.25",
                                     "basin_radius_abs1e-05", "convex_area", "convex_radius"])
def test_larger_is_wider(measure):
    assert findings.sense(measure) == 1


@pytest.mark.parametrize("measure", ["lambda_max", "lambda_1", "lambda_12", "trace", "ratio_min_max",
                                     "flatness_s0.1", "flatness_rel_s0.05", "sharpness_mean_rho0.5",
                                     "sharpness_max_rho1", "sharpness_rel_rho0.25"])
def test_smaller_is_wider(measure):
    assert findings.sense(measure) == -1


@pytest.mark.parametrize("measure", ["lambda_min", "trace_stderr", "flatness_s0.1_stderr",
                                     "flatness_rel_s0.1_stderr", "basin_edge_r0.5", "basin_edge_abs0.25",
                                     "convex_edge", "parameters", "centre_loss", "eval_samples", "max_residual",
                                     "hvp_products", "model", "basin_area", "flatness_s", "xtrace", "trace2"])
def test_other_columns_are_not_claim_measures(measure):
    with pytest.raises(ValueError, match=rf"^{measure} is not a claim measure; valid measures: basin_area_r<r>, .*"
                                         r"sharpness_rel_rho<rho>$"):
        findings.sense(measure)


METRICS_CFG = {"hessian": {"enabled": True, "top_k": 2}, "flatness": {"enabled": True, "sigmas": [0.05, 0.1]},
               "relative_rises": [0.1, 1.0], "absolute_rises": [0.25], "sharpness_rho": [0.5], "claims": []}
SURFACES = {"mae/pretext", "sup/supervised", "rcmae/pretext"}


def test_measure_names_follow_the_config():
    assert findings.measure_names(METRICS_CFG) == [
        "lambda_max", "lambda_1", "lambda_2", "trace", "ratio_min_max",
        "flatness_s0.05", "flatness_s0.1", "flatness_rel_s0.05", "flatness_rel_s0.1",
        "basin_area_r0.1", "basin_area_r1", "basin_radius_r0.1", "basin_radius_r1",
        "basin_area_abs0.25", "basin_radius_abs0.25", "convex_area", "convex_radius",
        "sharpness_mean_rho0.5", "sharpness_max_rho0.5", "sharpness_rel_rho0.5"]
    off = {**METRICS_CFG, "hessian": {"enabled": False, "top_k": 2}, "flatness": {"enabled": False, "sigmas": [0.1]}}
    assert findings.measure_names(off)[0] == "basin_area_r0.1"
    # every measure a config can name is a claim measure with a sense
    assert all(findings.sense(m) for m in findings.measure_names(METRICS_CFG))


def claims_cfg(*claims, **changes):
    return {**METRICS_CFG, **changes, "claims": [
        {"name": f"c{i}", "claim": "", "wider": w, "than": t, "measures": list(ms)}
        for i, (w, t, ms) in enumerate(claims)]}


def test_good_claims_have_no_problems():
    cfg = claims_cfg(("mae/pretext", "sup/supervised", findings.measure_names(METRICS_CFG)))
    assert findings.claim_problems(cfg, SURFACES) == []


def test_claim_problems_name_the_key_at_fault():
    available = ", ".join(findings.measure_names(METRICS_CFG))
    cfg = claims_cfg(("mae/pretext", "sup/supervised", ["basin_radius_r0.3", "lambda_min"]),
                     ("mae/finetune", "sup/probe", []),
                     ("mae/pretext", "mae/pretext", ["basin_area_abs0.5", "flatness_s0.2", "lambda_3",
                                                     "sharpness_max_rho1"]))
    assert findings.claim_problems(cfg, SURFACES) == [
        f"metrics.claims[0] (c0).measures: basin_radius_r0.3 is not measured (relative_rises are 0.1, 1); "
        f"measures available: {available}",
        "metrics.claims[0] (c0).measures: lambda_min is not a claim measure; valid measures: "
        + ", ".join(findings.WIDER_IF_LARGER + findings.WIDER_IF_SMALLER),
        "metrics.claims[1] (c1).wider: surface mae/finetune is not computed "
        "(known: mae/pretext, rcmae/pretext, sup/supervised)",
        "metrics.claims[1] (c1).than: surface sup/probe is not computed "
        "(known: mae/pretext, rcmae/pretext, sup/supervised)",
        "metrics.claims[2] (c2): wider and than are the same surface mae/pretext",
        f"metrics.claims[2] (c2).measures: basin_area_abs0.5 is not measured (absolute_rises are 0.25); "
        f"measures available: {available}",
        f"metrics.claims[2] (c2).measures: flatness_s0.2 is not measured (flatness.sigmas are 0.05, 0.1); "
        f"measures available: {available}",
        f"metrics.claims[2] (c2).measures: lambda_3 is not measured (hessian.top_k is 2); "
        f"measures available: {available}",
        f"metrics.claims[2] (c2).measures: sharpness_max_rho1 is not measured (sharpness_rho are 0.5); "
        f"measures available: {available}"]


def test_claim_problems_say_when_a_computation_is_off():
    cfg = claims_cfg(("mae/pretext", "sup/supervised", ["trace", "flatness_rel_s0.1"]),
                     hessian={"enabled": False, "top_k": 2}, flatness={"enabled": False, "sigmas": [0.1]})
    problems = findings.claim_problems(cfg, SURFACES)
    assert [p.split(";")[0] for p in problems] == [
        "metrics.claims[0] (c0).measures: trace is not measured (hessian.enabled is false)",
        "metrics.claims[0] (c0).measures: flatness_rel_s0.1 is not measured (flatness.enabled is false)"]


@pytest.mark.parametrize("residual_a, residual_b, verdict", [
    (1e-4, 1e-4, "holds"),
    (0.2, 1e-4, "undecided"),   # the wider side's lambda_min = -0.1 could be a bulk eigenvalue
    (1e-4, 0.5, "undecided"),
])
def test_ratio_needs_a_resolved_lambda_min(tmp_path, residual_a, residual_b, verdict):
    wider = {"ratio_min_max": 0.01, "lambda_min": -0.1, "lambda_min_residual": residual_a}
    than = {"ratio_min_max": 0.05, "lambda_min": -0.5, "lambda_min_residual": residual_b}
    row = finding(tmp_path, "ratio_min_max", wider, than)
    assert row["verdict"] == verdict
    if verdict == "undecided":
        side = "wider" if residual_a > 1e-3 else "than"
        assert row["reason"].startswith(f"lambda_min of the {side}-surface is not resolved"), row["reason"]
