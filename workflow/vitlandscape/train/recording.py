"""What a training run records beside its weights: the loss curve, one row per optimizer step,
and weight snapshots after chosen steps (landscape/trajectory_plane.py draws and measures the path
they trace).

Step s of a snapshot is the weights after s optimizer steps (0: before the first); row t of the
curve is the loss of the batch of optimizer step t, computed with the weights of snapshot t.
`wall_s` counts training time only: the time spent copying snapshots is left out.
"""
import csv
import time

from vitlandscape.storage.outputs import replacing
from vitlandscape.storage.snapshots import snapshot_steps


class TrainingRecord:
    def __init__(self, schedule: dict | None = None):
        """`schedule`: when to snapshot (snapshots.snapshot_steps), or None for the curve only."""
        self.schedule = schedule
        self.snapshot_steps = set()
        self.total_steps = 0
        self.rows = []
        self.snapshots = {}
        self.model = None
        self._start = self._copying = 0.0

    def watch(self, model) -> None:
        """Follow `model`: the network whose weights become the checkpoint's."""
        self.model = model

    def begin(self, total_steps: int) -> None:
        """Training of `total_steps` steps starts: the clock, and snapshot 0."""
        self.total_steps = total_steps
        self.snapshot_steps = set(snapshot_steps(self.schedule, total_steps)) if self.schedule else set()
        self._start = time.perf_counter()
        self._copying = 0.0
        self._snapshot(0)

    def step(self, step: int, epoch: int, lr: float, loss: float, parts: dict) -> None:
        """Optimizer step `step` is done (teacher updated): its curve row, then snapshot `step + 1`."""
        wall = time.perf_counter() - self._start - self._copying
        self.rows.append({"step": step, "epoch": epoch, "wall_s": wall, "lr": lr, "loss": loss,
                          **{k: float(v) for k, v in parts.items()}})
        self._snapshot(step + 1)

    def _snapshot(self, step: int) -> None:
        if step not in self.snapshot_steps:
            return
        started = time.perf_counter()
        self.snapshots[step] = {k: v.detach().float().cpu().clone() for k, v in self.model.state_dict().items()}
        self._copying += time.perf_counter() - started

    def write_curve(self, path) -> None:
        """The curve as CSV (atomically): step, epoch, wall_s, lr, loss and the step's parts."""
        columns = list(self.rows[0]) if self.rows else ["step", "epoch", "wall_s", "lr", "loss"]
        with replacing(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for row in self.rows:
                writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
