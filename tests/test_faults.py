"""The fault-injection hooks (vitlandscape/faults.py) do nothing unless their variable names them."""
import signal
import subprocess
import sys

import pytest

from conftest import ROOT
from vitlandscape import faults


def test_fail_once_fails_the_first_attempt_only(tmp_path, monkeypatch):
    monkeypatch.delenv("VITLANDSCAPE_FAIL_ONCE", raising=False)
    faults.fail_once("mae.pretext.a0_b0", "tile mae.pretext.a0_b0")  # unset: nothing
    monkeypatch.setenv("VITLANDSCAPE_FAIL_ONCE", str(tmp_path / "markers"))
    with pytest.raises(RuntimeError, match="^VITLANDSCAPE_FAIL_ONCE: first attempt of tile mae.pretext.a0_b0 "
                                           "fails on purpose$"):
        faults.fail_once("mae.pretext.a0_b0", "tile mae.pretext.a0_b0")
    assert (tmp_path / "markers" / "mae.pretext.a0_b0").is_file()
    faults.fail_once("mae.pretext.a0_b0", "tile mae.pretext.a0_b0")  # the retry passes


def test_sigkill_midway_leaves_other_points_alone(monkeypatch):
    class Objective:
        def evaluate(self):
            return 1.0, 0.5

    objective, original = Objective(), Objective.evaluate
    monkeypatch.setenv("VITLANDSCAPE_SIGKILL", "tile:mae.pretext.a0_b1@group")
    faults.sigkill_midway(objective, "tile:mae.pretext.a0_b0", 4)
    assert objective.evaluate.__func__ is original
    faults.sigkill_at("tile:mae.pretext.a0_b0")
    faults.sigkill_at_step("mae pretrain", 1)


@pytest.mark.subprocess
@pytest.mark.parametrize("wanted,call", [
    ("assemble:write_zarr", "faults.sigkill_at('assemble:write_zarr')"),
    ("mae pretrain@step3", "faults.sigkill_at_step('mae pretrain', 2); faults.sigkill_at_step('mae pretrain', 3)"),
    ("tile:k", "o = type('O', (), {'evaluate': lambda self: 0})(); faults.sigkill_midway(o, 'tile:k', 4); "
               "[o.evaluate() for _ in range(2)]; print('half', flush=True); o.evaluate()"),
])
def test_a_named_point_kills_the_process(wanted, call):
    script = f"from vitlandscape import faults; {call}; print('survived')"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT / "workflow"), "VITLANDSCAPE_SIGKILL": wanted})
    assert run.returncode == -signal.SIGKILL, run.stderr
    assert "survived" not in run.stdout
    assert ("half" in run.stdout) == wanted.startswith("tile:")
