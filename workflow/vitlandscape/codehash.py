"""Code hashes for the rules' rerun triggers: the library modules a stage can run.

A stage's modules are its entry modules and, transitively, every module of the package they
import, at module level or inside functions, found by parsing the source (nothing is
imported, so no torch). Importing a module also runs the `__init__.py` of the packages above
it. Modules are paths relative to the package folder: "train/stages.py", "models/arch.py".
Imports by computed name (importlib.import_module) are not seen: the library has none.
"""
import ast
import hashlib
from pathlib import Path

# The modules whose functions each stage's branch in cli.py calls (keep in step with it).
# cli.py is left out, so it must hold no logic that shapes a result. Keys are the stage
# names of code_hash in common.smk.
STAGE_ENTRIES = {
    "prepare_data": ["data/prepare.py"],
    "train": ["train/stages.py"],
    "table": ["metrics/accuracy.py"],
    "landscape": ["landscape/stages.py", "landscape/tiles.py"],
    "figures": ["figures/stages.py"],
    "reconstructions": ["figures/reconstructions.py"],
    "metrics": ["metrics/stages.py"],
    "metrics_tables": ["metrics/tables.py"],
    "study_tables": ["metrics/replicates.py"],
    "study_figures": ["figures/studies.py"],
    "convergence": ["metrics/convergence.py"],
    "bench": ["landscape/bench.py", "storage/outputs.py", "configcheck.py"],
}


def _module_file(package: Path, parts: list[str]) -> str | None:
    """The file of the module at `parts` below the package, or None if there is none."""
    folder = package.joinpath(*parts)
    if (folder / "__init__.py").is_file():
        return str(Path(*parts, "__init__.py"))
    if parts and folder.with_suffix(".py").is_file():
        return str(Path(*parts).with_suffix(".py"))
    return None


def _loaded(package: Path, parts: list[str]) -> set[str]:
    """What importing the module at `parts` runs: it (if it is a module) and every package above it."""
    return {_module_file(package, parts[:i]) for i in range(len(parts) + 1)} - {None}


def imports(package: Path, module: str) -> set[str]:
    """The package's modules that `module` imports, anywhere in its source."""
    here = list(Path(module).parent.parts)  # the package relative imports start from
    found = set()
    for node in ast.walk(ast.parse((package / module).read_text(), filename=str(package / module))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == package.name:
                    found |= _loaded(package, parts[1:])
        elif isinstance(node, ast.ImportFrom):
            target = node.module.split(".") if node.module else []
            if node.level:
                base = here[:len(here) - node.level + 1] + target
            elif target[0] == package.name:
                base = target[1:]
            else:
                continue
            found |= _loaded(package, base)
            for alias in node.names:  # `from package import module`
                found |= _loaded(package, base + [alias.name])
    return found


def closure(package: Path, entries: list[str]) -> set[str]:
    """The entry modules, the packages above them and every package module they import, transitively."""
    todo = set(entries).union(*(_loaded(package, list(Path(e).parent.parts)) for e in entries))
    done = set()
    while todo:
        module = todo.pop()
        done.add(module)
        todo |= imports(package, module) - done
    return done


def code_hash(package: Path, entries: list[str]) -> str:
    """A hash of the names and contents of the modules in `closure(package, entries)`."""
    digest = hashlib.sha256()
    for module in sorted(closure(package, entries)):
        digest.update(module.encode())
        digest.update((package / module).read_bytes())
    return digest.hexdigest()[:16]
