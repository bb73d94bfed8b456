"""The default workflow end to end, and rerunning only what changed.

Runs the embedded default (config/config.yaml) in a copy of the workflow, so edits to the
copy's library code and config cannot touch the repository.
"""
import base64
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
import yaml
from stage_map import FIGURE_RULES, MODULE_STAGES, STAGE_RULES

from conftest import ROOT, copy_workflow, planned_jobs, snakemake, summary

pytestmark = pytest.mark.e2e

SURFACES = [("mae", "pretext"), ("mae", "probe"), ("rcmae", "pretext"), ("rcmae", "probe"), ("sup", "supervised")]


@pytest.fixture(scope="module")
def workflow_run(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("workflow"))
    run = snakemake(workdir, "--cores", "2")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    return workdir, run


def test_accuracy_table(workflow_run):
    workdir, run = workflow_run
    table = pd.read_csv(workdir / "results/metrics/accuracy.csv").set_index("model")
    assert list(table.index) == ["mae", "rcmae", "sup"]
    assert table.loc["sup", "supervised_top1"] > 0.5  # 10 classes: chance is 0.1
    for model in ("mae", "rcmae"):
        assert table.loc[model, "linear_probe_top1"] > table.loc[model, "probe_random_init_top1"]
        assert table.loc[model, "finetune_top1"] > 0.5
    assert "results/figures" in run.stdout + run.stderr


def test_surfaces_follow_the_contract(workflow_run):
    workdir, _ = workflow_run
    expected = {("mae", "pretext"), ("mae", "probe"), ("rcmae", "pretext"), ("rcmae", "probe"),
                ("sup", "supervised")}
    found = {(p.parent.name, p.stem) for p in (workdir / "results/surfaces").glob("*/*.zarr")}
    assert found == expected
    for model, objective in expected:
        ds = xr.open_zarr(workdir / f"results/surfaces/{model}/{objective}.zarr")
        assert ds.loss.shape == (21, 21) and ds.loss.encoding["chunks"] == (11, 11)
        assert ("accuracy" in ds) == (objective != "pretext")
        assert ds.attrs["model"] == model and ds.attrs["objective"] == objective
        loss = ds.loss.values
        assert np.isfinite(loss).all()
        centre = ds.loss.sel(alpha=0.0, beta=0.0).item()
        assert centre <= np.nanmin(loss) + 0.05 * (np.nanmax(loss) - np.nanmin(loss))
        line = xr.open_dataset(workdir / f"results/lines/{model}/{objective}.nc", engine="scipy")
        assert line.loss.sel(alpha=0.0).item() == pytest.approx(centre, rel=1e-6)
    path = xr.open_dataset(workdir / "results/interpolations/mae_to_rcmae.nc", engine="scipy")
    mae = xr.open_zarr(workdir / "results/surfaces/mae/pretext.zarr").loss.sel(alpha=0.0, beta=0.0).item()
    assert path.loss.sel(t=0.0).item() == pytest.approx(mae, rel=1e-6)


def check_png(path: Path) -> None:
    """A PNG that decodes, is at least 300 x 200 and is not one flat colour."""
    image = matplotlib.image.imread(path)
    assert image.shape[0] >= 200 and image.shape[1] >= 300, (path, image.shape)
    assert image[..., :3].std() > 0.02, path


def check_pdf(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF") and b"/Type /Page" in data, path


def check_html(path: Path, surface: xr.Dataset) -> None:
    """A standalone plotly page whose surface trace is this surface: x = alpha, y = beta and
    z[j][i] = loss(alpha[i], beta[j]) (plotly's rows are y)."""
    html = path.read_text()
    start = html.index("[", html.index("Plotly.newPlot("))
    traces, _ = json.JSONDecoder().raw_decode(html[start:])
    assert [t["type"] for t in traces] == ["surface"], path
    np.testing.assert_array_equal(traces[0]["x"], surface.alpha.values)
    np.testing.assert_array_equal(traces[0]["y"], surface.beta.values)
    np.testing.assert_allclose(np.array(traces[0]["z"], dtype=float), surface.loss.values.T, rtol=1e-6)


def check_vts(path: Path, surface: xr.Dataset) -> None:
    """A VTK structured grid with one point per grid point and the loss as point data."""
    root = ET.parse(path).getroot()
    assert root.get("type") == "StructuredGrid", path
    extent = [int(v) for v in root.find("StructuredGrid/Piece").get("Extent").split()]
    assert [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1] == list(surface.loss.shape), path
    names = [a.get("Name") for a in root.iter("DataArray")]
    assert "loss" in names and ("accuracy" in names) == ("accuracy" in surface), (path, names)


def test_every_figure_is_a_valid_file(workflow_run):
    workdir, _ = workflow_run
    figures = workdir / "results/figures"
    surfaces = sorted((workdir / "results/surfaces").glob("*/*.zarr"))
    kinds = {"3d", "contour", "slices", "line_path"}
    for store in surfaces:
        model, objective = store.parent.name, store.stem
        ds = xr.open_zarr(store)
        for kind in kinds | ({"accuracy"} if objective != "pretext" else {"reconstructions"}):
            check_png(figures / model / f"{objective}_{kind}.png")
            check_pdf(figures / model / f"{objective}_{kind}.pdf")
        check_html(figures / model / f"{objective}.html", ds)
        check_vts(figures / model / f"{objective}.vts", ds)
    for name in ("mae_vs_supervised", "mae_vs_rcmae_pretext", "mae_vs_rcmae_probe"):
        for kind in ("compare", "basins"):
            check_png(figures / "compare" / f"{name}_{kind}.png")
            check_pdf(figures / "compare" / f"{name}_{kind}.pdf")
    check_png(figures / "interpolations/mae_to_rcmae_path.png")
    check_png(figures / "metrics/hessian_spectrum.png")
    check_pdf(figures / "metrics/hessian_spectrum.pdf")
    assert len(list(figures.rglob("*.png"))) == len(list(figures.rglob("*.pdf")))
    log = (workdir / "results/logs/reconstructions_figure/mae.log").read_text()
    assert log.count("(as the surface holds)") == 4  # the trained weights and three points, checked against it


def test_trajectories_are_drawn_around_the_checkpoints_and_measured(workflow_run):
    workdir, _ = workflow_run
    figures = workdir / "results/figures/trajectories"
    for model in ("mae", "rcmae"):
        folder = workdir / f"results/trajectories/{model}/pretrain"
        summary = json.loads((folder / "pca.json").read_text())
        assert len(summary["steps"]) == 12 and summary["steps"][0] == 0 and summary["steps"][-1] == 660
        # the final weights sit at the origin exactly (their difference to themselves is 0), and the
        # path spans 80% of [-1, 1] along each axis: its extent over extent / 0.8, up to a few float64 ulps
        assert summary["coords"][-1] == [0.0, 0.0]
        np.testing.assert_allclose(np.abs(summary["coords"]).max(0), [0.8, 0.8], rtol=1e-12)
        assert len(pd.read_csv(folder / "curve.csv")) == 660
        assert "by 0 (relative)" in (workdir / f"results/logs/trajectory/{model}/pretrain.log").read_text()
        plane, surface = xr.open_zarr(folder / "surface.zarr"), xr.open_zarr(workdir / f"results/surfaces/{model}/pretext.zarr")
        assert plane.loss.shape == (11, 11) and plane.attrs["normalization"] == "pca-trajectory"
        # both planes pass through the same trained weights, evaluated on the same images and masks
        assert plane.loss.sel(alpha=0.0, beta=0.0).item() == surface.loss.sel(alpha=0.0, beta=0.0).item()
    for group in ("mae", "rcmae", "mae_vs_rcmae"):
        for kind in ("path", "curves", "distances"):
            check_png(figures / group / f"pretrain_{kind}.png")
            check_pdf(figures / group / f"pretrain_{kind}.pdf")
    table = pd.read_csv(workdir / "results/metrics/convergence.csv")
    assert set(zip(table["model"], table["target"])) == {
        (m, t) for m, other in (("mae", "rcmae"), ("rcmae", "mae"))
        for t in ("decrease_0.5", "decrease_0.9", "decrease_0.99", f"final_of_{other}")}
    assert (table["quantity"] == "reconstruction_loss").all()


def test_benchmarks_and_logs(workflow_run):
    workdir, _ = workflow_run
    benchmarks = list((workdir / "results/benchmarks").rglob("*.tsv"))
    logs = [log for log in (workdir / "results/logs").rglob("*.log") if log.name != "warm_start.log"]  # not a job
    assert len(benchmarks) == len(logs) > 50
    for tsv in benchmarks:
        table = pd.read_csv(tsv, sep="\t")
        assert len(table) == 1 and table["s"].iloc[0] > 0, tsv


def test_report_holds_every_figure_and_table_with_its_caption(workflow_run):
    workdir, _ = workflow_run
    run = snakemake(workdir, "--report", "results/report.html")
    assert run.returncode == 0, run.stderr[-3000:]
    html = (workdir / "results/report.html").read_text()
    marker = "var results = "  # in the report's own <script id="results">, not in the bundled libraries
    start = html.index(marker, html.index('<script id="results">')) + len(marker)
    results, _ = json.JSONDecoder().raw_decode(html, start)
    figures = {str(p.relative_to(workdir)) for p in (workdir / "results/figures").rglob("*")
               if p.suffix in (".png", ".pdf")}
    assert set(results) == figures | {"results/metrics/accuracy.csv", "results/metrics/summary.csv",
                                      "results/metrics/findings.csv", "results/metrics/convergence.csv",
                                      "results/config.yaml"}
    for path, entry in results.items():
        caption = entry["caption"]
        assert len(re.sub(r"<[^>]+>", "", caption).strip()) > 60 and "{{" not in caption, path
        if entry["job_properties"]["rule"] == "surface_figures":  # captions render the wildcards
            labels = entry["labels"]
            assert f"<strong>{labels['model']}</strong>" in caption and labels["objective"] in caption, path
        payload = base64.b64decode(entry["data_uri"].split("base64,", 1)[1])
        assert payload == (workdir / path).read_bytes(), path


def test_metrics_and_findings(workflow_run):
    """Every surface measured (Hessian, flatness, surface measures); one findings row per claim
    and measure of the config, each with both numbers and a verdict."""
    workdir, _ = workflow_run
    config = yaml.safe_load((workdir / "config/config.yaml").read_text())["metrics"]
    summary = pd.read_csv(workdir / "results/metrics/summary.csv")
    assert list(zip(summary.model, summary.objective)) == SURFACES
    for _, row in summary.iterrows():
        assert row.lambda_1 >= row.lambda_2 >= row.lambda_3 > 0 and row.lambda_max == row.lambda_1
        assert row.lambda_min < row.lambda_3 and row.ratio_min_max == pytest.approx(abs(row.lambda_min / row.lambda_1),
                                                                                     rel=1e-4)
        # Lanczos stops at the config's tolerance: the residuals, measured, are of that order
        assert row.max_residual < 5 * config["hessian"]["tolerance"] * row.lambda_max
        assert row.trace > 0 and row.trace_stderr > 0 and row.hvp_products > 0
        assert row["flatness_s0.2"] > row["flatness_s0.05"] > 0  # a trained minimum: the loss rises
        assert row["basin_radius_r1"] >= row["basin_radius_r0.1"] > 0
    detail = json.loads((workdir / "results/metrics/sup/supervised.json").read_text())
    assert detail["hessian"]["density"]["weights"] and detail["surface"]["convex_region"]["area"] >= 0
    findings = pd.read_csv(workdir / "results/metrics/findings.csv")
    expected = [(c["name"], m) for c in config["claims"] for m in c["measures"]]
    assert list(zip(findings.claim, findings.measure)) == expected
    assert set(findings.verdict) <= {"holds", "does not hold", "undecided"}
    assert findings.wider_value.notna().all() and findings.than_value.notna().all()


def test_changing_metric_settings_reruns_only_metrics(workflow_run):
    workdir, _ = workflow_run

    def more_eigenvalues(config):
        config["metrics"]["hessian"]["top_k"] = 4

    jobs = planned_jobs(workdir, "--configfile", _write_config(workdir, more_eigenvalues))
    assert sorted(jobs, key=str) == sorted([("hessian", {"model": m, "objective": o}) for m, o in SURFACES]
                                           + [("metrics_tables", {}), ("spectrum_figure", {}),
                                              ("effective_config", {}), ("all", {})], key=str)

    def another_claim_measure(config):
        config["metrics"]["claims"][0]["measures"].append("basin_area_r1")

    rules = {rule for rule, _ in planned_jobs(workdir, "--configfile", _write_config(workdir, another_claim_measure))}
    assert rules == {"metrics_tables", "effective_config", "all"}


def test_nothing_to_do_after_a_complete_run(workflow_run):
    workdir, _ = workflow_run
    assert planned_jobs(workdir) == []


def _write_config(workdir: Path, change) -> str:
    config = yaml.safe_load((workdir / "config/config.yaml").read_text())
    change(config)
    path = workdir / "changed.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_changing_one_models_training_reruns_only_its_chain(workflow_run):
    workdir, _ = workflow_run

    def more_epochs(config):
        config["models"]["rcmae"]["pretrain"] = {**config["models"]["rcmae"]["pretrain"], "epochs": 61}

    jobs = planned_jobs(workdir, "--configfile", _write_config(workdir, more_epochs))
    rules = {rule for rule, _ in jobs}
    assert ("pretrain", {"model": "rcmae"}) in jobs
    assert {"downstream", "directions", "surface_tile", "assemble"} <= rules
    models = {w.get("model") for _, w in jobs} - {None}
    assert models == {"rcmae"}
    assert "prepare_data" not in rules


def test_changing_figure_settings_reruns_only_figures(workflow_run):
    workdir, _ = workflow_run

    def bigger_delta(config):
        config["figures"]["basin_delta"] = 0.5

    rules = {rule for rule, _ in planned_jobs(workdir, "--configfile", _write_config(workdir, bigger_delta))}
    drawn = FIGURE_RULES | {"reconstructions_figure"}  # it draws with the figure settings too
    assert rules <= drawn | {"effective_config", "all"}
    assert drawn <= rules


# Which rules run each stage's code, and which stages use each library module: the
# project's promise, written down here independently of the import graph from which
# un's reasons, these are not hidden by an upstream job that reruns."""
    return {row["rule"] for row in summary(workdir) if "params changed" in row["status"]}


def rules_with_changed_params(workdir: Path) -> set[str]:
    """Rules of the outputs whose own params (code hash included) changed, from `--summary`:
    unlike a dry run's reasons, these are not hidden by an upstream job that reruns."""
    return {row["rule"] for row in summary(workdir) if "params changed" in row["status"]}


def test_editing_a_module_of_each_kind_reruns_exactly_its_stages(workflow_run):
    """For one module of each set of stages (tests/test_code_hash.py checks every module's code
    hashes against MODULE_STAGES), the outputs made out of date by the edit itself (not by a
    renewed input) are exactly those of the stages that use the module."""
    workdir, _ = workflow_run
    library = workdir / "workflow/vitlandscape"
    found = {str(p.relative_to(library)) for p in library.rglob("*.py")}
    assert found == set(MODULE_STAGES), "classify the new or removed modules in tests/stage_map.py"
    kinds = {}
    for name, stages in sorted(MODULE_STAGES.items()):
        kinds.setdefault(frozenset(stages), name)
    for stages, name in kinds.items():
        module = library / name
        original = module.read_text()
        try:
            module.write_text(original + "\n# edited\n")
            changed = rules_with_changed_params(workdir)
            planned = planned_jobs(workdir) if not stages else None
        finally:
            module.write_text(original)
        expected = set().union(*(STAGE_RULES[s] for s in stages)) if stages else set()
        assert changed == expected, (name, sorted(changed), sorted(expected))
        if not stages:
            assert planned == [], name
    assert planned_jobs(workdir) == []


OTHER_RUN = "<!-- the quoted blocks below are from a run of "  # a document that quotes another config's run


def other_kernels() -> str | None:
    """Why this run's numbers may differ from the README's in their last digits (training
    amplifies rounding), or None: the README says which torch CPU kernels its run had (machines
    of this kind have AVX2 or AVX-512), and a oneDNN ISA cap changes the convolutions' bits."""
    quoted = re.search(r"a run on torch's (\w+) CPU kernels", (ROOT / "README.md").read_text())
    here = torch.backends.cpu.get_cpu_capability()
    if quoted is None or quoted[1] != here:
        return f"README numbers are from {quoted[1] if quoted else 'unnamed'} kernels, this machine runs {here}"
    if os.environ.get("ONEDNN_MAX_CPU_ISA"):
        return "README numbers are from oneDNN's default ISA; ONEDNN_MAX_CPU_ISA is set"
    return None


def test_numbers_quoted_from_the_default_run_are_this_runs(workflow_run, tmp_path):
    """Every block of README.md and docs/ that quotes the default run equals what
    workflow/scripts/quote_results.py writes from this fresh run's results/ (on the same kernels)."""
    if other_kernels():
        pytest.skip(other_kernels())
    workdir, _ = workflow_run
    script, results = str(ROOT / "workflow/scripts/quote_results.py"), str(workdir / "results")
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    documents = [p for p in documents if OTHER_RUN not in p.read_text()]  # docs/fashion.md quotes its own run
    blocks = sum(text.count("<!-- quoted from results/: ") for text in (p.read_text() for p in documents))
    assert blocks >= 4
    check = subprocess.run([sys.executable, script, "--check", "--results", results, *map(str, documents)],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, "quoted numbers differ from a fresh default run:\n" + check.stdout + check.stderr
    # and a number off by one digit inside a block is caught
    marker = "<!-- quoted from results/: convergence -->"
    text = next(t for t in (p.read_text() for p in documents) if marker in t)
    start = text.index(marker)
    digit = start + re.search(r"step (\d)", text[start:]).start(1)  # a step the table quotes
    stale = tmp_path / "stale.md"
    stale.write_text(text[:digit] + str((int(text[digit]) + 1) % 10) + text[digit + 1:])
    check = subprocess.run([sys.executable, script, "--check", "--results", results, str(stale)],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 1 and "(as written)" in check.stdout, check.stdout + check.stderr
