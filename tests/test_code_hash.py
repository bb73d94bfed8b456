"""Code hashes from the import graph, and exactly what a change reruns.

The workflow-level tests plan on a copy of the workflow whose outputs are empty placeholders
recorded as made by the current code and config (`snakemake --touch --forceall`): what a
dry run then plans, or `--summary` marks "params changed", is what the change reruns.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml
from stage_map import MODULE_STAGES, STAGE_RULES

from conftest import ROOT, copy_workflow, planned_jobs, snakemake, summary
from vitlandscape import codehash

LIBRARY = ROOT / "workflow" / "vitlandscape"


def write(folder, files: dict) -> None:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


@pytest.fixture
def package(tmp_path):
    """a imports b at the top; b imports c inside a function; d is imported by nobody."""
    pkg = tmp_path / "pkg"
    write(pkg, {"__init__.py": "", "a.py": "import os\nfrom pkg import b\n",
                "b.py": "def f():\n    import pkg.c\n    return pkg.c.X\n", "c.py": "X = 1\n", "d.py": "X = 2\n",
                "sub/__init__.py": "Y = 1\n", "sub/m.py": "X = 1\n"})
    return pkg


def test_closure_follows_imports_inside_functions(package):
    assert codehash.closure(package, ["a.py"]) == {"__init__.py", "a.py", "b.py", "c.py"}


def test_hash_changes_with_an_imported_module_only(package):
    before = codehash.code_hash(package, ["a.py"])
    (package / "d.py").write_text("X = 3\n")
    assert codehash.code_hash(package, ["a.py"]) == before
    (package / "c.py").write_text("X = 3\n")
    assert codehash.code_hash(package, ["a.py"]) != before


@pytest.mark.parametrize("module,statement,found", [
    ("e.py", "import pkg.sub.m", {"sub/__init__.py", "sub/m.py"}),
    ("e.py", "from pkg.sub.m import X", {"sub/__init__.py", "sub/m.py"}),
    ("e.py", "from pkg.sub import m, Y", {"sub/__init__.py", "sub/m.py"}),
    ("e.py", "from pkg.sub import Y", {"sub/__init__.py"}),  # a name, not a module
    ("e.py", "from pkg.sub import m as other", {"sub/__init__.py", "sub/m.py"}),
    ("e.py", "import pkg.sub.m as other", {"sub/__init__.py", "sub/m.py"}),
    ("e.py", "from . import d", {"d.py"}),
    ("e.py", "from .sub.m import X", {"sub/__init__.py", "sub/m.py"}),
    ("sub/e.py", "from .. import d", {"sub/__init__.py", "d.py"}),
    ("sub/e.py", "from . import m", {"sub/__init__.py", "sub/m.py"}),
    ("e.py", "import os.path\nfrom json import loads", set()),
])
def test_every_form_of_import(package, module, statement, found):
    write(package, {module: "def f():\n" + textwrap.indent(statement, "    ") + "\n"})
    assert codehash.closure(package, [module]) == {"__init__.py", module} | found


def test_editing_any_library_module_changes_exactly_its_stages_code_hashes(tmp_path):
    """Every module against tests/stage_map.py: an edit changes the code hash of exactly the stages
    that use it (the hash the rules put in their params; tests/test_workflow_e2e.py checks that
    Snakemake reruns those rules, for one module of each kind)."""
    import shutil

    library = tmp_path / "vitlandscape"
    shutil.copytree(ROOT / "workflow/vitlandscape", library, ignore=shutil.ignore_patterns("__pycache__"))
    found = {str(p.relative_to(library)) for p in library.rglob("*.py")}
    assert found == set(MODULE_STAGES), "classify the new or removed modules in tests/stage_map.py"

    def hashes():
        return {stage: codehash.code_hash(library, codehash.STAGE_ENTRIES[stage]) for stage in STAGE_RULES}
    before = hashes()
    wrong = {}
    for name, stages in MODULE_STAGES.items():
        module = library / name
        original = module.read_text()
        module.write_text(original + "\n# edited\n")
        changed = {stage for stage, value in hashes().items() if value != before[stage]}
        module.write_text(original)
        if changed != set(stages):
            wrong[name] = (sorted(changed), sorted(stages))
    assert wrong == {}, "changed vs expected stages: " + repr(wrong)


def test_every_entry_module_is_a_library_module():
    for stage, entries in codehash.STAGE_ENTRIES.items():
        for entry in entries:
            assert (LIBRARY / entry).is_file(), (stage, entry)


def test_the_library_has_no_import_cycle():
    """No module imports, directly or through others, a module that imports it (package
    `__init__.py` files aside: importing any module runs them)."""
    modules = {str(p.relative_to(LIBRARY)) for p in LIBRARY.rglob("*.py")}
    graph = {m: {n for n in codehash.imports(LIBRARY, m) if not n.endswith("__init__.py")} - {m} for m in modules}
    for start in modules:
        seen, todo = set(), set(graph[start])
        while todo:
            module = todo.pop()
            assert module != start, f"{start} imports itself through {sorted(seen)}"
            if module not in seen:
                seen.add(module)
                todo |= graph[module]


@pytest.mark.subprocess
def test_python_loads_no_module_outside_a_stages_closure():
    """The parser against the import system: importing a stage's entry modules loads only
    modules of its closure (module-level imports; those inside functions need the parser)."""
    script = """
import importlib, json, sys
loaded = {}
for stage, entries in json.loads(sys.argv[1]).items():
    for name in [n for n in sys.modules if n.split(".")[0] == "vitlandscape"]:
        del sys.modules[name]
    for entry in entries:
        importlib.import_module("vitlandscape." + entry.removesuffix(".py").replace("/", "."))
    loaded[stage] = [m.__file__ for n, m in sys.modules.items() if n.split(".")[0] == "vitlandscape"]
print(json.dumps(loaded))
"""
    run = subprocess.run([sys.executable, "-c", script, json.dumps(codehash.STAGE_ENTRIES)], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(LIBRARY.parent)}, check=True)
    for stage, files in json.loads(run.stdout).items():
        modules = {os.path.relpath(f, LIBRARY) for f in files}
        assert modules <= codehash.closure(LIBRARY, codehash.STAGE_ENTRIES[stage]), stage


# The default config's surfaces, tiles and comparisons (config/config.yaml).
SURFACES = [("mae", "pretext"), ("mae", "probe"), ("rcmae", "pretext"), ("rcmae", "probe"), ("sup", "supervised")]
MAE = SURFACES[:2]
TILES = ["a0_b0", "a0_b1", "a1_b0", "a1_b1"]
COMPARISONS = [("compare_figures", {"name": n}) for n in ("mae_vs_supervised", "mae_vs_rcmae_pretext",
                                                            "mae_vs_rcmae_probe")]
RECONSTRUCTIONS = [("reconstructions_figure", {"model": m}) for m in ("mae", "rcmae")]  # of each pretext surface
LANDSCAPE_RULES = {"directions", "surface_tile", "assemble", "line", "interpolate", "trajectory_plane",
                   "trajectory_tile", "trajectory_assemble"}


TRAJECTORY_TILES = ["a0_b0", "a1_b0"]  # 11 x 11 in tiles of 6 x 11


def trajectory_jobs(models, groups) -> list:
    """The jobs that follow from the pretraining snapshots of `models`; figures of `groups`."""
    jobs = [(rule, {"model": m, "stage": "pretrain"}) for m in models
            for rule in ("trajectory", "trajectory_plane", "trajectory_assemble")]
    jobs += [("trajectory_tile", {"model": m, "stage": "pretrain", "tile": t}) for m in models for t in TRAJECTORY_TILES]
    return jobs + [("trajectory_figures", {"group": g, "stage": "pretrain"}) for g in groups] + [("convergence_table", {})]


def per_surface(rules, surfaces, tiles=()) -> list:
    """The jobs of `rules` for each surface, its accuracy figure when it has labels, and its `tiles`."""
    jobs = [(r, {"model": m, "objective": o}) for r in rules for m, o in surfaces]
    jobs += [("accuracy_figure", {"model": m, "objective": o}) for m, o in surfaces if o != "pretext"]
    return jobs + [("surface_tile", {"model": m, "objective": o, "tile": t}) for m, o in surfaces for t in tiles]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A copy of the workflow with every output a placeholder, recorded as up to date."""
    workdir = copy_workflow(tmp_path_factory.mktemp("workflow"))
    for row in summary(workdir):
        path = workdir / row["output_file"]
        if path.suffix == ".zarr":  # the surfaces are directory() outputs
            path.mkdir(parents=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    run = snakemake(workdir, "--touch", "--forceall", "--cores", "1")  # every job, not only missing outputs
    assert run.returncode == 0, run.stderr[-3000:]
    assert planned_jobs(workdir) == []
    return workdir


def changed_config(workdir, change) -> str:
    config = yaml.safe_load((workdir / "config/config.yaml").read_text())
    change(config["landscape"])
    path = workdir / "changed.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def same_jobs(planned, expected) -> bool:
    return sorted(planned, key=str) == sorted(expected, key=str)


def touch(workdir) -> None:
    """Record the outputs of the jobs a change reruns as made by the current code and config."""
    run = snakemake(workdir, "--touch", "--cores", "1")
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.mark.subprocess
def test_editing_a_module_newly_imported_by_directions_reruns_the_stages_that_reach_it(finished):
    """Only landscape, metrics and reconstruction code reaches landscape/directions.py: their rules
    rerun for their own code, other figures and training do not (they rerun only for renewed inputs)."""
    library = finished / "workflow/vitlandscape"
    original = (library / "landscape/directions.py").read_text()
    try:
        (library / "newmod.py").write_text("SCALE = 1.0\n")
        (library / "landscape/directions.py").write_text(original + "\nfrom vitlandscape import newmod  # noqa: E402,F401\n")
        touch(finished)
        (library / "newmod.py").write_text("SCALE = 2.0\n")
        changed = {row["rule"] for row in summary(finished) if "params changed" in row["status"]}
        planned = {rule for rule, _ in planned_jobs(finished)}
    finally:
        (library / "landscape/directions.py").write_text(original)
        (library / "newmod.py").unlink()
        touch(finished)
    assert changed == LANDSCAPE_RULES | {"hessian", "flatness", "reconstructions_figure"}
    assert LANDSCAPE_RULES <= planned and "pretrain" not in planned


@pytest.mark.subprocess
def test_a_new_direction_seed_reruns_directions_and_what_uses_them(finished):
    jobs = planned_jobs(finished, "--configfile", changed_config(finished, lambda ls: ls.update(direction_seed=1)))
    expected = per_surface(["directions", "assemble", "line", "surface_figures", "line_figure"], SURFACES, TILES)
    expected += RECONSTRUCTIONS
    assert same_jobs(jobs, expected + COMPARISONS + [("metrics_tables", {}), ("effective_config", {}), ("all", {})])


@pytest.mark.subprocess
def test_a_new_grid_reruns_its_tiles_and_surfaces_but_not_the_directions(finished):
    jobs = planned_jobs(finished, "--configfile", changed_config(finished, lambda ls: ls.update(alpha=[-1.0, 1.0, 11])))
    # 11 values of alpha in tiles of 11 x 11: one row of tiles; the line records the grid it belongs to
    expected = per_surface(["assemble", "line", "surface_figures", "line_figure"], SURFACES, ["a0_b0", "a0_b1"])
    expected += RECONSTRUCTIONS
    assert same_jobs(jobs, expected + COMPARISONS + [("metrics_tables", {}), ("effective_config", {}), ("all", {})])


@pytest.mark.subprocess
def test_a_rewritten_checkpoint_reruns_only_what_is_measured_on_it(finished):
    checkpoint = finished / "results/checkpoints/mae/pretrain.pt"
    content, stat = checkpoint.read_bytes(), checkpoint.stat()
    try:
        checkpoint.write_bytes(b"other weights")
        jobs = planned_jobs(finished)
    finally:
        checkpoint.write_bytes(content)
        os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    expected = per_surface(["directions", "assemble", "line", "hessian", "flatness", "surface_figures", "line_figure"],
                           MAE, TILES)
    expected += [("downstream", {"model": "mae", "stage": s}) for s in ("probe", "finetune")]
    expected += [("interpolate", {"name": "mae_to_rcmae"}), ("interpolation_figure", {"name": "mae_to_rcmae"}),
                 ("reconstructions_figure", {"model": "mae"})]
    expected += trajectory_jobs(["mae"], ["mae", "mae_vs_rcmae"])
    aggregates = ["spectrum_figure", "metrics_tables", "accuracy_table", "all"]
    assert same_jobs(jobs, expected + COMPARISONS + [(rule, {}) for rule in aggregates])


@pytest.mark.subprocess
def test_a_batch_scaled_ema_momentum_retrains_rcmae_only(finished):
    """ema_batch_reference reaches RC-MAE's pretraining (its params change); unset, as before, it
    changes no job's params, so existing results keep."""
    config = yaml.safe_load((finished / "config/config.yaml").read_text())
    config["models"]["rcmae"]["ema_batch_reference"] = 64
    (finished / "scaled.yaml").write_text(yaml.safe_dump(config))
    jobs = planned_jobs(finished, "--configfile", str(finished / "scaled.yaml"))
    trained = {(rule, w.get("model")) for rule, w in jobs if rule in ("pretrain", "downstream", "trajectory")}
    assert trained == {("pretrain", "rcmae"), ("downstream", "rcmae"), ("trajectory", "rcmae")}


@pytest.mark.subprocess
def test_more_snapshots_rerun_only_what_follows_from_the_snapshots(finished):
    """The trajectory replays the training: the checkpoints, and all that is measured on them, stay."""
    config = yaml.safe_load((finished / "config/config.yaml").read_text())
    config["trajectories"]["snapshots"] = {"points": 20, "spacing": "log"}
    (finished / "more.yaml").write_text(yaml.safe_dump(config))
    jobs = planned_jobs(finished, "--configfile", str(finished / "more.yaml"))
    expected = trajectory_jobs(["mae", "rcmae"], ["mae", "rcmae", "mae_vs_rcmae"])
    assert same_jobs(jobs, expected + [("effective_config", {}), ("all", {})])
