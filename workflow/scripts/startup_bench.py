"""Start-up of a job, per stage: a fresh Python that imports what the stage imports (cold), against
a process forked from the warm-start server (warm). Prints a table and writes JSON.

    PYTHONPATH=workflow python workflow/scripts/startup_bench.py [--repeats 5] [--out startup.json]

Cold: a new interpreter that imports what the stage imports (interpreter start included). Warm: `python -m vitlandscape write-config` through the server, whose
work (one small YAML file) is the same cold and warm, minus that work measured in-process: what is
left is the client's interpreter, the hand-over and the fork, the same for every stage.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LIBDIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(LIBDIR))
from vitlandscape import warmstart  # noqa: E402

# The modules each kind of job imports before it computes (cli.py's dispatch).
STAGES = {"pretrain / probe / finetune / trajectory": "vitlandscape.train.stages",
          "directions / tiles / lines / trajectory plane": "vitlandscape.landscape.stages",
          "hessian / flatness": "vitlandscape.metrics.stages",
          "prepare-data": "vitlandscape.data.prepare",
          "assemble": "vitlandscape.landscape.tiles",
          "figures": "vitlandscape.figures.stages",
          "metrics tables": "vitlandscape.metrics.tables",
          "convergence table": "vitlandscape.metrics.convergence",
          "accuracy table": "vitlandscape.metrics.accuracy"}


def seconds(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(LIBDIR)}
    env.pop(warmstart.SOCKET_ENV, None)
    cold = {stage: statistics.median(seconds([sys.executable, "-c", f"import vitlandscape.cli, {module}"], env)
                                     for _ in range(args.repeats))
            for stage, module in STAGES.items()}
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "config.yaml"
        command = [sys.executable, "-m", "vitlandscape", "write-config", "--settings", '{"a": 1}', "--out", str(out)]
        cold_write = statistics.median(seconds(command, env) for _ in range(args.repeats))
        server = warmstart.start(LIBDIR, Path(folder) / "server.log")
        try:
            warm_env = {**env, warmstart.SOCKET_ENV: os.environ[warmstart.SOCKET_ENV]}
            warm_write = statistics.median(seconds(command, warm_env) for _ in range(args.repeats))
        finally:
            warmstart.stop(server)
        bare = statistics.median(seconds([sys.executable, "-c", "import vitlandscape.cli"], env)
                                 for _ in range(args.repeats))
    # write-config's own work, cold: its run minus an interpreter that imports only the CLI
    work = max(0.0, cold_write - bare)
    warm = max(0.0, warm_write - work)
    result = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
              "python": sys.version.split()[0], "repeats": args.repeats, "cold_s": cold, "warm_s": warm}
    print(f"{'stage':48s} {'cold s':>7s} {'warm s':>7s}")
    for stage, value in cold.items():
        print(f"{stage:48s} {value:7.2f} {warm:7.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
