"""Numbers the documentation quotes from the default run, written from `results/`, never by hand.

    python workflow/scripts/quote_results.py [--results results] [--check] [--only NAME]... FILE...

Each FILE (README.md, docs/*.md) may hold quoted blocks:

    <!-- quoted from results/: NAME -->
    ...
    <!-- end of NAME -->

Without `--check` every block is rewritten from the run in `--results`, and, when README.md is
among the files, the figures it shows (FIGURES) are copied from that run into docs/ at a width
that reads on a page; with it nothing is
written and the exit status is 1, with a diff, when a block differs from what the run gives
(tests/test_workflow_e2e.py checks the README against a fresh default run this way). `--only`
limits it to the named blocks: `--only code-tree` needs no run (tests/test_docs.py checks
the code's own blocks in seconds, so a change of code does not wait for the end-to-end run). Only
numbers a rerun reproduces on the same machine are quoted: accuracies, verdicts, steps, losses,
distances; wall times vary between runs and are stated as measurements instead. The `kernels`
block says which CPU kernels the run had (run the script where the workflow ran): the end-to-end
test compares only on machines with the same ones.
"""
import argparse
import difflib
import json
import re
import sys
from pathlib import Path

import pandas as pd

BLOCK = re.compile(r"(<!-- (?:quoted from results/|written from the code): (?P<name>[\w-]+) -->\n)(?P<body>.*?)"
                   r"(<!-- end of (?P=name) -->)", re.S)
LIBRARY = Path(__file__).resolve().parents[1] / "vitlandscape"
NAMES = {"mae": "MAE", "rcmae": "RC-MAE", "sup": "supervised ViT", "mocov3": "MoCo v3"}


def _name(model: str) -> str:
    return NAMES.get(model, model)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    cells = [[cell.replace("|", "\\|") for cell in row] for row in rows]  # a | inside a cell ends it
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells]) + "\n"


def _top1(value) -> str:
    return "" if pd.isna(value) else f"{value:.4f}"


def accuracy(results: Path) -> str:
    """Test top-1 of every model, from metrics/accuracy.csv."""
    table = pd.read_csv(results / "metrics/accuracy.csv")
    rows = [[_name(r.model), _top1(r.linear_probe_top1), _top1(r.finetune_top1), _top1(r.supervised_top1),
             _top1(r.probe_random_init_top1)] for r in table.itertuples()]
    return _table(["model", "linear probe", "fine-tune", "supervised", "probe on a random encoder"], rows)


def _value(x) -> str:
    return "" if pd.isna(x) else f"{x:.3g}"


def findings(results: Path) -> str:
    """Every claim measure with both numbers and its verdict, from metrics/findings.csv."""
    table = pd.read_csv(results / "metrics/findings.csv", keep_default_na=False, na_values=[""])
    counts = table["verdict"].value_counts()
    words = [f"{counts.get(v, 0)} {word}" for v, word in
             (("holds", "hold"), ("does not hold", "do not hold"), ("undecided", "undecided"))]
    rows = [[r.claim, r.measure, f"{r.wider} {_value(r.wider_value)}", f"{r.than} {_value(r.than_value)}",
             r.verdict + (f" ({r.reason})" if isinstance(r.reason, str) and r.reason else "")]
            for r in table.itertuples()]
    return (f"Of the {len(table)} claim measures: {', '.join(words)}.\n\n"
            + _table(["claim", "measure", "claimed wider", "than", "verdict"], rows))


def surface_measures(results: Path) -> str:
    """Each surface's centre loss and a few of its measures, from metrics/summary.csv."""
    table = pd.read_csv(results / "metrics/summary.csv")
    columns = ["centre_loss", "lambda_max", "basin_radius_r0.5", "flatness_rel_s0.1", "sharpness_rel_rho0.5",
               "convex_area"]
    rows = [[f"{_name(r['model'])} {r['objective']}", *(_value(r[c]) for c in columns)] for _, r in table.iterrows()]
    return _table(["surface", *columns], rows)


def _interval(r) -> str:
    return "" if pd.isna(r.ci_low) else f"[{r.ci_low:.3g}, {r.ci_high:.3g}]"


def studies(results: Path) -> str:
    """Every study's findings across replicates (studies/*/findings.csv) and how its variants
    pretrained (studies/*/summary.csv)."""
    parts = []
    for folder in sorted(p for p in (results / "studies").iterdir() if (p / "findings.csv").is_file()):
        table = pd.read_csv(folder / "findings.csv", keep_default_na=False, na_values=[""], dtype={"setting": str})
        counts = table["verdict"].value_counts()
        words = ", ".join(f"{counts.get(v, 0)} {v}" for v in ("holds", "does not hold", "undecided"))
        rows = [[r.claim, r.measure, r.setting, str(r.n), _value(r.mean_wider), _value(r.mean_than),
                 _value(r.mean_difference), _interval(r), f"{r.holds_in}/{r.n}",
                 r.verdict + (f" ({r.reason})" if isinstance(r.reason, str) and r.reason else "")]
                for r in table.itertuples()]
        summary = pd.read_csv(folder / "summary.csv", dtype={"setting": str})
        trained = summary.drop_duplicates("variant")
        training = [[r.variant, r.setting, str(r.pretrain_batch_size), f"{r.pretrain_lr:.3g}",
                     "yes" if r.lr_follows_batch else "no"] for r in trained.itertuples()]
        parts.append(f"**{folder.name}** ({len(summary)} replicate surfaces of {len(trained)} trainings; "
                     f"{len(table)} claim measures: {words})\n\n"
                     + _table(["claim", "measure", "setting", "n", "mean wider", "mean than", "mean difference",
                               "95% interval", "holds in", "verdict"], rows)
                     + "\n" + _table(["training", "setting", "pretrain batch", "peak lr", "lr follows the batch"],
                                      training))
    return "\n".join(parts)


def _row(table: pd.DataFrame, model: str, target: str) -> pd.Series | None:
    """The convergence table's row of `model` and `target`, None when it has none."""
    rows = table[(table["model"] == model) & (table["target"] == target)]
    return rows.iloc[0] if len(rows) else None


def _step(row: pd.Series) -> str:
    return f"step {int(row['step'])}" if row["reached"] else "never"


def convergence(results: Path) -> str:
    """Steps to fractions of the decrease and to the other model's final loss, per replayed
    pretraining, from metrics/convergence.csv."""
    table = pd.read_csv(results / "metrics/convergence.csv")
    table = table[table["stage"] == "pretrain"]
    models = list(dict.fromkeys(table["model"]))
    fractions = sorted({t for t in table["target"] if t.startswith("decrease_")}, key=lambda t: float(t[9:]))
    last = int(pd.read_csv(results / f"trajectories/{models[0]}/pretrain/curve.csv")["step"].iloc[-1])
    rows, said = [], []
    for model in models:
        reach = []
        for other in models:
            row = _row(table, model, f"final_of_{other}")
            if other == model or row is None:
                continue
            reach.append(f"{_step(row)} ({_name(other)}'s {row['threshold']:.3f})")
            said.append(f"{_name(model)} reaches {_name(other)}'s final loss ({row['threshold']:.3f}) at step "
                        f"{int(row['step'])} of {last + 1}" if row["reached"] else
                        f"{_name(model)} does not reach {_name(other)}'s ({row['threshold']:.3f}) within its training")
        rows.append([_name(model), *(_step(_row(table, model, f)) for f in fractions), "; ".join(reach)])
    header = ["model", *(f"{float(f[9:]):.0%} of the decrease" for f in fractions), "reaches the other's final loss"]
    return _table(header, rows) + "\n" + "; ".join(said) + ".\n"


def trajectory(results: Path) -> str:
    """The PCA planes of the replayed pretrainings, from trajectories/{model}/pretrain/pca.json
    (`distance_travelled` is cumulative: its last entry is the whole path)."""
    lines = []
    for folder in sorted((results / "trajectories").glob("*/pretrain")):
        pca = json.loads((folder / "pca.json").read_text())
        r1, r2 = pca["explained_variance_ratio"]
        lines.append(f"- {_name(folder.parent.name)}: {len(pca['steps'])} snapshots over {pca['steps'][-1]} steps; "
                     f"the plane explains {r1 + r2:.0%} of the path ({r1:.0%} + {r2:.0%}); the weights travel "
                     f"{pca['distance_travelled'][-1]:.1f} between snapshots, from a start "
                     f"{pca['distance_to_final'][0]:.1f} away from the final weights (norm {pca['final_norm']:.1f}).")
    return "\n".join(lines) + "\n"


# each subpackage's job, for the README's "Where the code is"
ROLES = {".": "entry and config: the command line, config checks, studies' variants, the methods, code hashes, "
              "the planner, warm start, devices, test hooks",
         "data": "data sets: official files (IDX, CIFAR batches), preparation, the evaluation subset, streamed image folders",
         "augment": "training augmentations on a batch's tensors, one kind per module",
         "models": "MAE and classifier ViTs, position embeddings, masking",
         "train": "training stages, loops, recipes, optimisers, the RC-MAE step, recording",
         "landscape": "objectives, directions, grid and tiles, the grid engine, trajectory planes, benchmarks",
         "metrics": "Hessian, flatness, basins, findings, replicates' intervals, accuracy and convergence tables",
         "figures": "surface, comparison, trajectory, reconstruction, study and interactive figures",
         "storage": "result files, checkpoints and their release formats, snapshots"}


def code_tree(_results: Path) -> str:
    """Lines and modules of each subpackage of the library (the code, not a run)."""
    rows = []
    for package, role in ROLES.items():
        modules = sorted((LIBRARY / package).glob("*.py"))
        lines = sum(len(m.read_text().splitlines()) for m in modules)
        names = ", ".join(m.stem for m in modules if m.stem != "__init__")
        rows.append([f"`{package}/`" if package != "." else "top level", str(lines), role, names])
    return _table(["package", "lines", "what", "modules"], rows)


def kernels(_results: Path) -> str:
    """Which CPU kernels torch ran: other kernels (AVX2 against AVX-512, say) round differently and
    training amplifies it, so the quoted numbers are those of machines with these kernels. The
    script runs where the workflow ran."""
    import torch

    return (f"These numbers come from a run on torch's {torch.backends.cpu.get_cpu_capability()} CPU kernels "
            "(`torch.backends.cpu.get_cpu_capability()`); other kernels give other last digits.\n")


QUOTES = {"kernels": kernels, "code-tree": code_tree, "accuracy": accuracy, "findings": findings, "convergence": convergence, "trajectory": trajectory,
          "studies": studies, "surface-measures": surface_measures}
# docs/ figure -> (the run's figure, width in pixels)
FIGURES = {"docs/mae_vs_supervised.png": ("figures/compare/mae_vs_supervised_compare.png", 738),
           "docs/mae_vs_rcmae_trajectory.png": ("figures/trajectories/mae_vs_rcmae/pretrain_path.png", 960)}


def copy_figures(results: Path, root: Path) -> None:
    from PIL import Image

    for target, (source, width) in FIGURES.items():
        with Image.open(results / source) as image:
            height = round(image.height * width / image.width)
            image.resize((width, height), Image.Resampling.LANCZOS).save(root / target, optimize=True)
        print(f"wrote {target} from {results / source}")


def rewrite(text: str, results: Path, only: set[str] | None = None) -> str:
    """`text` with its quoted blocks (those named in `only`, or all) written anew from `results`;
    an unknown block name is an error."""
    def block(match: re.Match) -> str:
        name = match["name"]
        if name not in QUOTES:
            raise SystemExit(f"unknown quoted block {name!r}; known: {', '.join(QUOTES)}")
        if only is not None and name not in only:
            return match[0]
        return match[1] + QUOTES[name](results) + match[4]
    return BLOCK.sub(block, text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a block differs")
    parser.add_argument("--only", action="append", choices=sorted(QUOTES), metavar="NAME",
                        help="only this block (repeatable; code-tree needs no run)")
    args = parser.parse_args(argv)
    only = set(args.only) if args.only else None
    if not args.check and only is None and any(path.name == "README.md" for path in args.files):  # the run's figures
        copy_figures(args.results, Path(__file__).resolve().parents[2])
    stale = 0
    for path in args.files:
        text = path.read_text()
        new = rewrite(text, args.results, only)
        if new == text:
            continue
        if args.check:
            stale += 1
            sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True),
                                                       f"{path} (as written)", f"{path} (from {args.results})"))
        else:
            path.write_text(new)
            print(f"rewrote the quoted blocks of {path}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
