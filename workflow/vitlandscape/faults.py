"""Fault injection for the tests: jobs that fail or die on purpose, from environment variables.

VITLANDSCAPE_SIGKILL=<point>       the process kills itself with SIGKILL on reaching <point>
VITLANDSCAPE_SIGKILL=<point>@group its whole process group (Snakemake too, as a crashed node would)
    points: `assemble:write_zarr`, `tile:<key>` (half-way through the tile's points), and
    `<desc>@step<n>` of a training loop (the process alone; tests/test_restarts.py)
VITLANDSCAPE_FAIL_ONCE=<dir>       a tile's first attempt fails after computing, leaving a marker
    file in <dir>, so that the retry path is exercised (tests/test_slurm.py)
Unset, as in every real run, none of these does anything.
"""
import os
import signal
from pathlib import Path


def sigkill_at(point: str) -> None:
    """With VITLANDSCAPE_SIGKILL=<point> kill this process, with <point>@group its process
    group; unset or another point, nothing happens."""
    wanted = os.environ.get("VITLANDSCAPE_SIGKILL", "")
    if wanted.split("@")[0] == point:
        os.killpg(os.getpgrp(), signal.SIGKILL) if wanted.endswith("@group") else os.kill(os.getpid(), signal.SIGKILL)


def sigkill_at_step(desc: str, step: int) -> None:
    """With VITLANDSCAPE_SIGKILL=<desc>@step<step> kill this process (a crash mid-training)."""
    if os.environ.get("VITLANDSCAPE_SIGKILL") == f"{desc}@step{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def sigkill_midway(objective, point: str, points: int) -> None:
    """With VITLANDSCAPE_SIGKILL=<point>[@group], make `objective` kill the job (`sigkill_at`)
    once half of its `points` are evaluated; unset or another point, nothing happens."""
    if os.environ.get("VITLANDSCAPE_SIGKILL", "").split("@")[0] != point:
        return
    evaluate, done = objective.evaluate, []

    def counting():
        if len(done) >= points // 2:
            sigkill_at(point)
        done.append(1)
        return evaluate()
    objective.evaluate = counting


def fail_once(key: str, what: str) -> None:
    """With VITLANDSCAPE_FAIL_ONCE=<dir>, raise the first time `key` comes (leaving the marker
    <dir>/<key>), naming `what` fails; unset, nothing happens."""
    folder = os.environ.get("VITLANDSCAPE_FAIL_ONCE")
    if not folder:
        return
    marker = Path(folder) / key
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        raise RuntimeError(f"VITLANDSCAPE_FAIL_ONCE: first attempt of {what} fails on purpose")
