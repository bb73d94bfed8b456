"""The SLURM profile against a real scheduler: a single-node cluster brought up by hand
(tests/slurm_cluster.py: munged, mariadbd, slurmdbd, slurmctld, slurmd, all under a temporary
directory and stopped by PID at the end).

The landscape stages of the default workflow (MAE pretext and supervised surfaces, on a 5 x 5
grid in 2 x 2 tiles) are computed once locally, then again through `--profile profiles/slurm`:
every tile job goes through sbatch (its id found in sacct) and the surfaces equal the local
ones bit for bit. Further runs check the GPU request, a tile that fails once (retried, via the
test hook VITLANDSCAPE_FAIL_ONCE), and a run killed mid-tile (the Snakemake process and the
running SLURM jobs killed; rerun with --rerun-incomplete, 2 tiles packed per job). Skipped only where the Debian packages are not installed
(`.ci/run` installs them).
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

import slurm_cluster
from conftest import ROOT, copy_workflow

TARGETS = ["results/surfaces/mae/pretext.zarr", "results/surfaces/sup/supervised.zarr"]
TILES = ["a0_b0", "a0_b1", "a1_b0", "a1_b1"]
RUN_TIMEOUT = 300  # seconds for one Snakemake run through SLURM; the whole module takes ~5 min


def small_config(device: str = "auto") -> dict:
    """The default config, cut to the MAE pretext and supervised surfaces on a 5 x 5 grid."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["data"]["eval_samples"] = 64
    models = config["models"]
    models["mae"]["pretrain"] = {**models["mae"]["pretrain"], "epochs": 3, "warmup_epochs": 1}
    models["mae"]["objectives"] = ["pretext"]
    models["sup"]["pretrain"] = {**models["sup"]["pretrain"], "epochs": 3, "warmup_epochs": 1}
    del models["rcmae"]
    config["landscape"].update(alpha=[-1.0, 1.0, 5], beta=[-1.0, 1.0, 5], tile=[3, 3], interpolations=[],
                               device=device)
    config["figures"]["compare"] = []
    config["metrics"]["claims"] = []
    config["trajectories"] = {}  # its jobs run as every other training and tile job does
    config["threads"] = 1
    return config


def run(workdir: Path, *args: str, env: dict | None = None, timeout: float = RUN_TIMEOUT):
    env = env or dict(os.environ)
    env = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"}
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=timeout)


def submitted(output: str) -> list[str]:
    """SLURM job ids the executor plugin reports as submitted (one per sbatch)."""
    return re.findall(r"submitted with SLURM jobid (\d+)", output)


def surfaces(workdir: Path) -> dict:
    out = {}
    for target in TARGETS:
        ds = xr.open_zarr(workdir / target).load()
        out[target] = {name: ds[name].values for name in ds.data_vars}
    return out


def assert_equal_surfaces(found: dict, expected: dict) -> None:
    assert found.keys() == expected.keys()
    for target, variables in expected.items():
        assert found[target].keys() == variables.keys(), target
        for name, values in variables.items():
            assert np.isfinite(values).all(), (target, name)
            np.testing.assert_array_equal(found[target][name], values, err_msg=f"{target} {name}")


def forget(workdir: Path, surface: str) -> None:
    """Remove a surface and its tiles so that the next run computes them again."""
    shutil.rmtree(workdir / f"results/surfaces/{surface}", ignore_errors=True)
    shutil.rmtree(workdir / f"results/surfaces/{surface}.zarr", ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    absent = slurm_cluster.missing()
    if absent:
        pytest.skip(f"SLURM test cluster unavailable: {', '.join(absent)} not installed "
                    f"(install with: {slurm_cluster.install_hint()}; .ci/run does)")
    if os.geteuid() != 0:
        pytest.skip("the SLURM test cluster starts its daemons as root")
    with slurm_cluster.SlurmCluster(tmp_path_factory.mktemp("slurm")) as c:
        yield c


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    """A copy of the workflow, trained and with reference surfaces from a local run."""
    workdir = copy_workflow(tmp_path_factory.mktemp("workflow"), "profiles")
    (workdir / "config/test.yaml").write_text(yaml.safe_dump(small_config()))
    (workdir / "config/test_cuda.yaml").write_text(yaml.safe_dump(small_config("cuda")))
    local = run(workdir, "--cores", "2", *TARGETS, "--configfile", "config/test.yaml", timeout=600)
    assert local.returncode == 0, local.stdout[-3000:] + local.stderr[-5000:]
    return workdir, surfaces(workdir)


def through_slurm(workdir: Path, cluster, *args: str, env_extra: dict | None = None):
    env = {**cluster.env, **(env_extra or {})}
    return run(workdir, "--profile", "profiles/slurm", "--seconds-between-status-checks", "2", *args, env=env)


@pytest.mark.slurm
@pytest.mark.subprocess
def test_tile_jobs_go_through_sbatch_and_equal_the_local_run(cluster, workflow):
    workdir, reference = workflow
    for target in TARGETS:
        forget(workdir, target.removeprefix("results/surfaces/").removesuffix(".zarr"))
    start = time.monotonic()
    result = through_slurm(workdir, cluster, *TARGETS, "--configfile", "config/test.yaml")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    ids = submitted(output)
    jobs = {row["JobID"]: row for row in cluster.sacct("JobID", "State", "AllocTRES", "Comment", job_ids=ids)}
    print(f"SLURM run: {time.monotonic() - start:.1f} s, {len(ids)} jobs through sbatch: {sorted(jobs.values(), key=str)}")
    assert len(ids) == 2 * len(TILES)  # one job per tile; assembly ran on the submitting host
    assert set(jobs) == set(ids) and all(j["State"] == "COMPLETED" for j in jobs.values()), jobs
    assert all("surface_tile" in j["Comment"] or "tiles" in j["Comment"] for j in jobs.values()), jobs
    assert not any("gres/gpu" in j["AllocTRES"] for j in jobs.values()), jobs  # the CPU path asks for no GPU
    assert_equal_surfaces(surfaces(workdir), reference)


@pytest.mark.slurm
@pytest.mark.subprocess
def test_cuda_tile_job_requests_and_gets_a_gpu(cluster, workflow):
    workdir, _ = workflow
    tile = "results/surfaces/mae/pretext/tiles/a0_b0.nc"
    saved = (workdir / tile).read_bytes()
    result = through_slurm(workdir, cluster, tile, "--forcerun", "surface_tile", "--retries", "0",
                           "--configfile", "config/test_cuda.yaml")
    output = result.stdout + result.stderr
    (workdir / tile).write_bytes(saved)
    ids = submitted(output)
    assert len(ids) == 1, output[-6000:]
    job = cluster.sacct("JobID", "State", "ReqTRES", "AllocTRES", job_ids=ids)[0]
    shown = cluster._run(["scontrol", "show", "job", ids[0]]).stdout
    print(f"GPU tile job: sacct {job}; scontrol: "
          + " ".join(re.findall(r"(?:TRES|TresPerJob)=\S+", shown)))
    assert "gres/gpu=1" in job["ReqTRES"] and "gres/gpu=1" in job["AllocTRES"], job  # requested and scheduled
    assert "TresPerJob=gres:gpu:1" in shown, shown
    # The node's GPU is /dev/null: the job ran and the stage failed clearly for want of CUDA.
    log = (workdir / "results/logs/surface_tile/mae/pretext/a0_b0.log").read_text()
    assert result.returncode != 0 and "no CUDA device" in log, output[-3000:] + log[-2000:]


@pytest.mark.slurm
@pytest.mark.subprocess
def test_a_tile_job_that_fails_once_is_retried(cluster, workflow, tmp_path):
    workdir, reference = workflow
    forget(workdir, "mae/pretext")
    markers = tmp_path / "failed-once"
    result = through_slurm(workdir, cluster, TARGETS[0], "--configfile", "config/test.yaml",
                           env_extra={"VITLANDSCAPE_FAIL_ONCE": str(markers)})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert sorted(p.name for p in markers.iterdir()) == [f"mae.pretext.{t}" for t in TILES]
    jobs = cluster.sacct("JobID", "State", job_ids=submitted(output))
    print(f"retried run: {jobs}")
    states = sorted(j["State"] for j in jobs)
    assert states == ["COMPLETED"] * 4 + ["FAILED"] * 4, jobs  # each tile failed once, then the profile's retry
    assert_equal_surfaces(surfaces(workdir), reference)


@pytest.mark.slurm
@pytest.mark.subprocess
def test_a_run_killed_mid_tile_is_rerun_with_rerun_incomplete(cluster, workflow):
    workdir, reference = workflow
    forget(workdir, "sup/supervised")
    env = {**cluster.env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{cluster.env['PATH']}"}
    log = open(workdir / "killed-run.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--profile", "profiles/slurm",
                             "--seconds-between-status-checks", "2", TARGETS[1], "--configfile", "config/test.yaml"],
                            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        running = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not running:  # a tile job is running on the node
            time.sleep(1)
            running = cluster._run(["squeue", "-h", "-t", "RUNNING", "-o", "%i"]).stdout.split()
        assert running, (workdir / "killed-run.log").read_text()[-3000:]
        time.sleep(3)  # inside the tile computation
    finally:
        proc.send_signal(signal.SIGKILL)  # the submitting host goes away
        proc.wait(timeout=30)
        log.close()
    queued = cluster._run(["squeue", "-h", "-o", "%i"]).stdout.split()
    if queued:
        cluster._run(["scancel", *queued])  # and the job dies mid-run
    assert not (workdir / "results/surfaces/sup/supervised.zarr").exists()
    assert run(workdir, "--unlock", TARGETS[1], "--configfile", "config/test.yaml").returncode == 0
    # The rerun also packs two tiles into each job (job groups, as documented in the profile).
    result = through_slurm(workdir, cluster, TARGETS[1], "--rerun-incomplete", "--group-components", "tiles=2",
                           "--configfile", "config/test.yaml")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    jobs = cluster.sacct("JobID", "State", "AllocCPUS", "Comment", job_ids=submitted(output))
    print(f"rerun after the kill, 2 tiles per job: {jobs}")
    assert 1 <= len(jobs) <= 2 and all(j["State"] == "COMPLETED" for j in jobs), jobs
    assert "2" in [j["AllocCPUS"] for j in jobs], jobs  # two 1-thread tiles in one allocation
    assert_equal_surfaces(surfaces(workdir), reference)


@pytest.mark.subprocess
def test_profile_works_as_typed_after_make_slurm_profile(tmp_path):
    """`make slurm-profile` writes the user profile; `--profile slurm` and the path form both plan."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k != "XDG_CONFIG_HOME"} | {"HOME": str(home)}
    made = subprocess.run(["make", "-s", "slurm-profile"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert made.returncode == 0, made.stderr
    installed = home / ".config/snakemake/slurm/profile.yaml"
    assert installed.read_text() == (ROOT / "profiles/slurm/profile.yaml").read_text()
    assert str(installed) in made.stdout
    workdir = copy_workflow(tmp_path / "clone", "profiles")
    for profile in ("slurm", "profiles/slurm"):
        plan = run(workdir, "--profile", profile, "-n", env=env, timeout=300)
        assert plan.returncode == 0, plan.stderr[-3000:]
        assert "surface_tile" in plan.stdout
