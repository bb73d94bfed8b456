"""Mutation testing of the core modules with mutmut: `make mutation`.

mutmut names a mutant after its module's path below the directory it runs in and knows
only the `src/` layout, so the library is staged as `.mutation/src/vitlandscape`, beside
copies of the tests, the config schema and the pytest settings. Every mutant of the core
modules is run against the fast tests (not the end-to-end ones, not those that run
Snakemake or the library in a subprocess). Prints the score per module and the surviving
mutants with their diffs.

    python tests/mutation.py [--max-children N] [--keep] [--resume]
"""
import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / ".mutation"
# Modules as dotted paths below the package, as mutmut names its mutants.
CORE = ["models.masking", "landscape.grid", "landscape.directions", "landscape.surface", "landscape.stages",
        "landscape.objectives", "storage.checkpoints", "train.rcmae", "configcheck"]
DETECTED = {"killed", "timeout", "segfault", "caught by type check"}

MUTMUT_CONFIG = """[tool.mutmut]
source_paths = ["src/vitlandscape"]
only_mutate = [{modules}]
also_copy = ["pytest.ini", "config"]
pytest_add_cli_args = ["-m", "not e2e and not subprocess", "-p", "no:cacheprovider"]
# torch is not fork-safe once it has run: fork every mutant from a fresh server process.
process_isolation = "forkserver"
"""


def stage(fresh: bool) -> None:
    """Copy what the fast tests read into .mutation/, with the library under src/
    (over the previous copy unless `fresh`, so that mutmut reuses what is unchanged)."""
    if fresh:
        shutil.rmtree(STAGE, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for source, target in (("workflow/vitlandscape", "src/vitlandscape"), ("tests", "tests"), ("config", "config")):
        shutil.copytree(ROOT / source, STAGE / target, ignore=ignore, dirs_exist_ok=True)
    ini = (ROOT / "pytest.ini").read_text()
    (STAGE / "pytest.ini").write_text(re.sub(r"(?m)^pythonpath = .*$", "pythonpath = src", ini))
    modules = ", ".join(f'"src/vitlandscape/{m.replace(".", "/")}.py"' for m in CORE)
    (STAGE / "pyproject.toml").write_text(MUTMUT_CONFIG.format(modules=modules))


def mutmut(*args: str, check: bool = True) -> str:
    run = subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=STAGE, capture_output=True, text=True)
    if check and run.returncode != 0:
        sys.exit(f"mutmut {' '.join(args)} failed ({run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    return run.stdout


def results() -> tuple[dict[str, collections.Counter], list[tuple[str, str]]]:
    """({module: Counter(status)}, [(mutant, status) not detected]) from `mutmut results --all true`."""
    by_module = collections.defaultdict(collections.Counter)
    survivors = []
    for line in mutmut("results", "--all", "true").splitlines():
        key, _, status = line.strip().rpartition(": ")
        match = re.match(r"vitlandscape\.([\w.]+)\.[^.]+$", key)  # module path, then the mutant's name
        if not match:
            continue
        by_module[match.group(1)][status] += 1
        if status not in DETECTED:
            survivors.append((key, status))
    return by_module, survivors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--keep", action="store_true", help="keep .mutation/ (to inspect with `mutmut browse`)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the .mutation/ of a --keep run: mutmut checks what changed (all of it when tests "
                             "were added) and the survivors are retested")
    args = parser.parse_args()
    start = time.perf_counter()
    resume = args.resume and STAGE.is_dir()
    stage(fresh=not resume)
    workers = ["--max-children", str(args.max_children)]
    if "failed to collect stats" in mutmut("run", *workers, check=False):
        sys.exit("mutmut could not run the tests on the unmutated code: run `cd .mutation && python -m mutmut run`")
    by_module, survivors = results()
    if resume and survivors:  # the tests may have changed since they survived
        mutmut("run", *workers, *(key for key, _ in survivors), check=False)
        by_module, survivors = results()
    if not by_module:
        sys.exit("mutmut produced no results: run `cd .mutation && python -m mutmut run` to see why")
    print(f"\n{'module':<22} {'mutants':>8} {'detected':>9} {'score':>7}")
    total = detected = 0
    for module in CORE:
        counts = by_module.get(module, collections.Counter())
        n, k = sum(counts.values()), sum(v for s, v in counts.items() if s in DETECTED)
        total, detected = total + n, detected + k
        print(f"{module:<22} {n:>8} {k:>9} {k / n if n else float('nan'):>7.1%}")
    print(f"{'all':<22} {total:>8} {detected:>9} {detected / total:>7.1%}")
    print(f"\n{len(survivors)} not detected:")
    for key, status in survivors:
        print(f"\n# {key} ({status})")
        print(mutmut("show", key, check=False).split("\n", 1)[-1].strip())
    print(f"\nmutation testing took {time.perf_counter() - start:.0f} s "
          f"with {args.max_children} workers on {os.cpu_count()} CPUs")
    if not args.keep:
        shutil.rmtree(STAGE, ignore_errors=True)


if __name__ == "__main__":
    main()
