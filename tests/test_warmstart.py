"""Warm start (vitlandscape/warmstart.py): a job run through the server computes, prints and
ends exactly as the same command in a fresh Python; a killed client takes its job with it; the
server stops with its parent, and a job that cannot reach it runs on its own."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, model_settings
from vitlandscape import warmstart

LIBDIR = ROOT / "workflow"
DATA = {"dataset": "digits", "image_size": 16, "eval_samples": 64, "seed": 0, "test_fraction": 0.2}


def wait_for(condition, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def server(tmp_path):
    """A server started as Snakemake starts it (this process its parent), ready to accept."""
    saved = os.environ.get(warmstart.SOCKET_ENV)
    started = warmstart.start(LIBDIR, tmp_path / "warm_start.log")
    process, path = started
    assert process.poll() is None and os.path.exists(path), (tmp_path / "warm_start.log").read_text()
    assert os.environ[warmstart.SOCKET_ENV] == path
    yield started
    if process.poll() is None:
        warmstart.stop(started)
    if saved is not None:
        os.environ[warmstart.SOCKET_ENV] = saved


def job(cwd: Path, *argv: str, warm: bool, extra_env=None, **kwargs):
    """`python -m vitlandscape argv` as a rule's shell runs it, with or without the server."""
    env = {**os.environ, "PYTHONPATH": str(LIBDIR), **(extra_env or {})}
    if not warm:
        env.pop(warmstart.SOCKET_ENV, None)
    return subprocess.Popen([sys.executable, "-m", "vitlandscape", *argv], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def finished(process, timeout: float = 300.0) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def served_jobs(tmp_path) -> list[str]:
    return [line for line in (tmp_path / "warm_start.log").read_text().splitlines() if line.startswith("job ")]


def server_children(server_pid: int) -> list[int]:
    children = Path(f"/proc/{server_pid}/task/{server_pid}/children")
    return [int(pid) for pid in children.read_text().split()] if children.exists() else []


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepared(tmp_path, warm: bool) -> Path:
    folder = tmp_path / ("warm" if warm else "cold")
    folder.mkdir(exist_ok=True)
    code, out, err = finished(job(folder, "prepare-data", "--settings", json.dumps(DATA), "--out", "data.pt",
                                  warm=warm))
    assert code == 0, err
    return folder


def pretrain_args(epochs: int) -> list[str]:
    settings = model_settings("mae", pretrain={"epochs": epochs, "batch_size": 64, "lr": 1e-3,
                                               "weight_decay": 0.05, "warmup_epochs": 1})
    return ["pretrain", "--settings", json.dumps(settings), "--data", "data.pt", "--out", "pretrain.pt",
            "--threads", "1", "--device", "cpu"]


def test_served_job_matches_a_fresh_process(server, tmp_path):
    cold, warm = prepared(tmp_path, warm=False), prepared(tmp_path, warm=True)
    assert sha256(cold / "data.pt") == sha256(warm / "data.pt")
    runs = {folder: finished(job(folder, *pretrain_args(epochs=1), warm=folder == warm)) for folder in (cold, warm)}
    assert runs[cold][0] == runs[warm][0] == 0, runs[warm][2][-2000:]
    assert runs[cold][1] == runs[warm][1]  # what the stage prints, to the client's own stdout
    assert sha256(cold / "pretrain.pt") == sha256(warm / "pretrain.pt")
    stages = [line.split()[2] for line in served_jobs(tmp_path)]
    assert stages == ["prepare-data:", "pretrain:"], served_jobs(tmp_path)  # the cold ones did not go there


def test_errors_end_the_client_as_they_end_a_fresh_process(server, tmp_path):
    settings = model_settings("mae")
    argv = ["pretrain", "--settings", json.dumps(settings), "--data", "missing.pt", "--out", "x.pt",
            "--device", "cpu"]
    cold, warm = (finished(job(tmp_path, *argv, warm=w)) for w in (False, True))
    assert cold[0] == warm[0] != 0
    assert cold[2].splitlines()[-1] == warm[2].splitlines()[-1]  # the traceback's last line
    usage = ["pretrain", "--no-such-option"]
    cold, warm = (finished(job(tmp_path, *usage, warm=w)) for w in (False, True))
    assert cold[0] == warm[0] == 2 and cold[2] == warm[2]
    assert len(served_jobs(tmp_path)) == 2


def test_a_job_killed_by_a_signal_kills_its_client_with_it(server, tmp_path):
    folder = prepared(tmp_path, warm=True)
    code, _, err = finished(job(folder, *pretrain_args(epochs=1), warm=True,
                                extra_env={"VITLANDSCAPE_SIGKILL": "mae pretrain@step1"}))
    assert code == -signal.SIGKILL, err[-2000:]
    assert f"{{'signal': {int(signal.SIGKILL)}}}" in served_jobs(tmp_path)[-1]


def test_a_killed_client_takes_its_job_with_it(server, tmp_path):
    process, _ = server
    folder = prepared(tmp_path, warm=True)
    client = job(folder, *pretrain_args(epochs=500), warm=True)
    wait_for(lambda: server_children(process.pid), what="the forked job")
    (forked,) = server_children(process.pid)
    client.kill()
    client.wait(10)
    wait_for(lambda: not Path(f"/proc/{forked}").exists(), timeout=10, what="the forked job to end")
    assert not (folder / "pretrain.pt").exists()


def test_stop_removes_the_server_and_jobs_then_run_on_their_own(server, tmp_path):
    process, path = server
    warmstart.stop(server)
    assert process.returncode is not None and not Path(path).parent.exists()
    env = {warmstart.SOCKET_ENV: path}  # a stale address, as a job of a dead run would see
    folder = tmp_path / "alone"
    folder.mkdir()
    code, _, err = finished(job(folder, "prepare-data", "--settings", json.dumps(DATA), "--out", "data.pt",
                                warm=True, extra_env=env))
    assert code == 0 and (folder / "data.pt").exists(), err


def test_server_stops_when_its_parent_is_gone(tmp_path):
    """Snakemake killed outright runs no hook: the server notices and stops by itself."""
    script = (f"import sys; sys.path.insert(0, {str(LIBDIR)!r}); from vitlandscape import warmstart; "
              f"p, path = warmstart.start({str(LIBDIR)!r}, {str(tmp_path / 'log')!r}); print(p.pid, path)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    pid, path = out.stdout.split()
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or
             Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z", timeout=30, what="the orphaned server to stop")
    assert not Path(path).parent.exists()
