"""Command line: one subcommand per workflow stage (`python -m vitlandscape STAGE --help`).

Settings arrive as JSON, inline or as `@file.json`: the Snakemake rules pass exactly the
part of the validated config that a stage depends on.
"""
import argparse
import collections
import errno
import importlib
import json
from pathlib import Path


def settings_arg(text: str) -> dict:
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"--settings is not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--settings must be a JSON object")
    return value


def _common(p: argparse.ArgumentParser, data: bool = True) -> None:
    p.add_argument("--settings", type=settings_arg, required=True, help="JSON object or @file.json")
    if data:
        p.add_argument("--data", required=True, help="prepared data file (prepare-data output)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])


def _workers(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=0,
                   help="DataLoader worker processes decoding streamed images (data.workers)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vitlandscape", description=__doc__)
    sub = parser.add_subparsers(dest="stage", required=True)

    p = sub.add_parser("prepare-data", help="load the data set, split it, fix the eval subset")
    _common(p, data=False)
    p.add_argument("--out", required=True)

    p = sub.add_parser("pretrain", help="train MAE / RC-MAE / supervised ViT from scratch")
    _common(p)
    _workers(p)
    p.add_argument("--out", required=True)

    for stage in ("probe", "finetune"):
        p = sub.add_parser(stage, help=f"{stage} an MAE encoder on the labels")
        _common(p)
        _workers(p)
        p.add_argument("--checkpoint", required=True, help="pretrained MAE checkpoint")
        p.add_argument("--out", required=True)
        p.add_argument("--metrics", required=True, help="accuracy JSON to write")

    p = sub.add_parser("evaluate", help="test accuracy of a given probe / fine-tuned / supervised checkpoint")
    _common(p)
    _workers(p)
    p.add_argument("--stage", dest="stage_name", required=True, choices=["probe", "finetune", "supervised"])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--metrics", required=True, help="accuracy JSON to write")

    p = sub.add_parser("trajectory", help="replay a training stage, keeping its loss curve and weight snapshots")
    _common(p)
    _workers(p)
    p.add_argument("--stage", dest="stage_name", required=True, choices=["pretrain", "probe", "finetune"])
    p.add_argument("--schedule", type=json.loads, required=True, help='JSON, e.g. {"points": 12, "spacing": "log"}')
    p.add_argument("--checkpoint", required=True, help="the stage's checkpoint, which the replay must reproduce")
    p.add_argument("--pretrained", default=None, help="the checkpoint a probe or fine-tuning starts from")
    p.add_argument("--snapshots", required=True, help="safetensors file of the snapshots")
    p.add_argument("--curve", required=True, help="CSV of the loss curve, one row per step")

    p = sub.add_parser("snapshot-probe", help="linear-probe accuracy of a recorded pretraining's snapshots")
    _common(p)
    _workers(p)
    p.add_argument("--snapshots", required=True)
    p.add_argument("--count", type=int, required=True, help="snapshots probed, evenly spread")
    p.add_argument("--out", required=True, help="JSON: steps and test top-1")

    p = sub.add_parser("trajectory-plane", help="PCA directions of a recorded training path, and the path on them")
    _common(p, data=False)
    p.add_argument("--checkpoint", required=True, help="where the path ends: the landscape's centre")
    p.add_argument("--snapshots", required=True)
    p.add_argument("--out", required=True, help="safetensors directions file")
    p.add_argument("--summary", required=True, help="JSON: the path's coordinates, variance ratios, distances")

    p = sub.add_parser("convergence", help="steps and seconds until each training curve has converged so far")
    p.add_argument("--settings", type=settings_arg, required=True, help="JSON object or @file.json")
    p.add_argument("--curves", nargs="+", required=True, metavar="MODEL/STAGE=CSV")
    p.add_argument("--probes", nargs="*", default=[], metavar="MODEL/STAGE=JSON",
                   help="snapshot-probe results of some of the curves")
    p.add_argument("--out", required=True)

    p = sub.add_parser("plot-trajectory", help="training paths on their PCA planes, loss curves and distances")
    _common(p, data=False)
    p.add_argument("--surfaces", nargs="+", required=True, help="Zarr surfaces of the PCA planes")
    p.add_argument("--summaries", nargs="+", required=True, help="pca.json of each path, in the same order")
    p.add_argument("--curves", nargs="+", required=True, help="curve CSVs, in the same order")
    p.add_argument("--labels", nargs="+", required=True)
    p.add_argument("--title", default=None)
    p.add_argument("--prefix", required=True)

    p = sub.add_parser("directions", help="two filter-normalised random directions")
    _common(p, data=False)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="safetensors file")

    p = sub.add_parser("surface-tile", help="evaluate one tile of the loss grid")
    _common(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--directions", required=True)
    p.add_argument("--tile", required=True, help="tile name a<i>_b<j>")
    p.add_argument("--out", required=True, help="netCDF tile file")

    p = sub.add_parser("assemble", help="join tiles into one chunked Zarr surface")
    _common(p, data=False)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--directions", required=True)
    p.add_argument("--tiles", nargs="+", required=True)
    p.add_argument("--out", required=True, help="Zarr store")

    p = sub.add_parser("line", help="1-D landscape along the first direction")
    _common(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--directions", required=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("interpolate", help="loss along the straight path between two checkpoints")
    _common(p)
    p.add_argument("--start", required=True)
    p.add_argument("--end", required=True)
    p.add_argument("--out", required=True)

    for stage, what in (("hessian", "top eigenvalues, trace and spectral density of the Hessian at the trained "
                                    "weights"),
                        ("flatness", "loss rise under filter-normalised Gaussian perturbations")):
        p = sub.add_parser(stage, help=what)
        _common(p)
        p.add_argument("--checkpoint", required=True)
        p.add_argument("--out", required=True, help="JSON file")

    p = sub.add_parser("ratio-map", help="|lambda_min / lambda_max| of the Hessian over a coarse grid")
    _common(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--directions", required=True)
    p.add_argument("--out", required=True, help="netCDF file")

    p = sub.add_parser("metrics-tables", help="per-surface metrics files, summary.csv and findings.csv")
    p.add_argument("--settings", type=settings_arg, required=True, help="JSON object or @file.json")
    p.add_argument("--surfaces", nargs="+", required=True, help="Zarr surfaces")
    p.add_argument("--hessian", nargs="*", default=[], help="Hessian files, in the order of --surfaces")
    p.add_argument("--flatness", nargs="*", default=[], help="flatness files, in the order of --surfaces")
    p.add_argument("--out-dir", required=True)

    p = sub.add_parser("surface-metrics", help="one study variant's metrics file (its surface, Hessian, flatness)")
    p.add_argument("--settings", type=settings_arg, required=True, help="JSON object or @file.json")
    p.add_argument("--surface", required=True, help="Zarr surface")
    p.add_argument("--hessian", default=None, help="Hessian file of the same weights and evaluation set")
    p.add_argument("--flatness", default=None, help="flatness file of the same weights and evaluation set")
    p.add_argument("--out", required=True)

    p = sub.add_parser("study-tables", help="a study's summary.csv and findings.csv with intervals")
    p.add_argument("--settings", type=settings_arg, required=True, help="JSON object or @file.json")
    p.add_argument("--metrics", nargs="+", required=True, help="metrics files, in the order of the replicates")
    p.add_argument("--out-dir", required=True)

    p = sub.add_parser("plot-surface", help="3-D, contour, slice (and accuracy) figures, HTML and VTS")
    _common(p, data=False)
    p.add_argument("--surface", required=True, help="Zarr surface")
    p.add_argument("--prefix", required=True, help="output path prefix of the static figures")
    p.add_argument("--html", required=True)
    p.add_argument("--vts", required=True)

    p = sub.add_parser("plot-accuracy", help="accuracy landscape of a classification surface")
    _common(p, data=False)
    p.add_argument("--surface", required=True, help="Zarr surface")
    p.add_argument("--prefix", required=True)

    p = sub.add_parser("plot-reconstructions", help="MAE reconstructions at points along a pretext surface's x "
                                                    "direction, each with its loss")
    p.add_argument("--settings", type=settings_arg, required=True, help="JSON object or @file.json")
    p.add_argument("--data", required=True, help="prepared data file (prepare-data output)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--directions", required=True)
    p.add_argument("--surface", required=True, help="the Zarr pretext surface, whose losses the figure's must be")
    p.add_argument("--prefix", required=True)

    p = sub.add_parser("plot-path", help="figure of a 1-D landscape (line or interpolation)")
    _common(p, data=False)
    p.add_argument("--path", required=True, help="netCDF file of a line or interpolation")
    p.add_argument("--prefix", required=True)

    p = sub.add_parser("plot-compare", help="side-by-side surfaces and basin overlay")
    _common(p, data=False)
    p.add_argument("--surfaces", nargs="+", required=True, help="Zarr surfaces")
    p.add_argument("--labels", nargs="+", required=True)
    p.add_argument("--title", default=None)
    p.add_argument("--prefix", required=True)

    p = sub.add_parser("plot-study-measures", help="a study's claim measures against its setting, with intervals")
    _common(p, data=False)
    p.add_argument("--summary", required=True, help="the study's summary.csv")
    p.add_argument("--prefix", required=True)

    p = sub.add_parser("plot-study-contours", help="a study's variants' contours on one colour scale")
    _common(p, data=False)
    p.add_argument("--surfaces", nargs="+", required=True, help="Zarr surfaces of its variants, one objective")
    p.add_argument("--labels", nargs="+", required=True)
    p.add_argument("--prefix", required=True)

    p = sub.add_parser("plot-spectrum", help="Hessian spectral densities, one panel per surface")
    _common(p, data=False)
    p.add_argument("--hessian", nargs="+", required=True, help="Hessian JSON files")
    p.add_argument("--labels", nargs="+", required=True)
    p.add_argument("--prefix", required=True)

    p = sub.add_parser("plot-ratio-map", help="map of |lambda_min / lambda_max| over the surface's plane")
    _common(p, data=False)
    p.add_argument("--ratio-map", required=True, help="netCDF file of the ratio-map stage")
    p.add_argument("--prefix", required=True)

    p = sub.add_parser("bench", help="one grid computed by the engine, loss-landscapes and a Li et al. loop, "
                                      "against plain forward passes: rates, memory, speed-ups (JSON and table)")
    p.add_argument("--config", default="results/config.yaml", help="effective config of a finished run")
    p.add_argument("--data", default=None, help="prepared data (default: results/data/<dataset>.pt)")
    p.add_argument("--surfaces", nargs="+", default=None, metavar="MODEL/OBJECTIVE",
                   help="default: the first pretext and the first supervised (else classification) surface")
    p.add_argument("--grid", type=int, default=11, help="points per side of the square grid over the config's "
                   "landscape.alpha x landscape.beta ranges (default 11: 121 points)")
    p.add_argument("--repeats", type=int, default=1, help="rounds of every method; each method's time is its "
                   "fastest round (default 1)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", default="results/bench/bench.json")

    p = sub.add_parser("plan", help="FLOPs and GPU-hours of every surface and training stage, from the config")
    p.add_argument("--configfile", default="config/config.yaml", help="a config file (defaults are filled in)")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--tflops", type=float, default=None,
                      help="sustained TFLOP/s of the GPU (default: 40, the fp32 grid engine measured on an H200)")
    rate.add_argument("--measure", action="store_true",
                      help="time every model's forward pass on this machine and use the rates it achieves")
    p.add_argument("--num-classes", type=int, default=None, help="classes of the data set (default: 10 for "
                   "digits, fashion_mnist, mnist and cifar10, 100 for cifar100, else 1000)")
    p.add_argument("--train-images", type=int, default=None, help="training images per epoch (default: "
                   "digits' training split; 60,000 for fashion_mnist and mnist, 50,000 for cifar10 and cifar100; "
                   "1,281,167 for imagefolder, ImageNet-1k; required otherwise)")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    measure = p.add_argument_group("--measure options")
    measure.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    measure.add_argument("--precision", default=None, choices=["bf16", "fp32"],
                         help="fp32 (default: what the grid engine computes) or bf16 autocast")
    measure.add_argument("--batch-size", type=int, default=None, help="default: landscape.batch_size")
    measure.add_argument("--measure-seconds", type=float, default=2.0,
                         help="timed seconds per distinct model, after 3 warm-up passes (default 2)")

    p = sub.add_parser("write-config", help="write the effective config (JSON settings) as YAML")
    p.add_argument("--settings", type=settings_arg, required=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("accuracy-table", help="collect accuracies into one CSV")
    p.add_argument("--metrics", nargs="*", default=[], help="probe/finetune JSON files")
    p.add_argument("--supervised", nargs="*", default=[], metavar="NAME=CHECKPOINT")
    p.add_argument("--out", required=True)
    return parser


# Settings behind a stage's --device, for the message when it asks for a GPU this machine lacks.
DEVICE_KEYS = {**dict.fromkeys(("pretrain", "probe", "finetune", "evaluate", "trajectory", "snapshot-probe"),
                                "device"),
               **dict.fromkeys(("bench", "plan"), "--device")}
WRITE_ERRNOS = (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT)
OUTPUT_ARGS = ("out", "out_dir", "prefix", "html", "vts", "metrics", "json")  # named when the error names no file


def main(argv=None) -> None:
    """Run one stage. A result that cannot be written (outputs.OutputError; a full disk, a quota,
    a read-only or forbidden folder elsewhere) and a GPU this machine lacks end the stage with one
    line and exit status 1; every other error keeps its traceback."""
    args = build_parser().parse_args(argv)
    from vitlandscape.devices import DeviceError
    from vitlandscape.storage.outputs import OutputError
    try:
        _run(args)
    except DeviceError as err:
        err.key = DEVICE_KEYS.get(args.stage, "landscape.device")
        raise SystemExit(f"vitlandscape {args.stage}: {err}") from None
    except OSError as err:
        if not isinstance(err, OutputError) and err.errno not in WRITE_ERRNOS:
            raise
        where = err.filename or " / ".join(str(v) for k, v in vars(args).items() if k in OUTPUT_ARGS and v)
        verb = "access" if err.errno == errno.EACCES and not isinstance(err, OutputError) else "write"  # maybe a read
        raise SystemExit(f"vitlandscape {args.stage}: cannot {verb} {where}: {err.strerror}") from None


# Each stage: the library module that runs it, imported only when the stage runs (torch costs
# 2 s a job, timm with torchvision 2 more, so file stages import neither), the call, and
# whether the stage computes with torch (then --threads sets torch's CPU threads).
Stage = collections.namedtuple("Stage", "module call torch")

STAGES = {
    "prepare-data": Stage("data.prepare", lambda m, a: m.prepare_data(a.settings, a.out), True),
    "pretrain": Stage("train.stages", lambda m, a: m.pretrain(a.settings, a.data, a.out, a.device, a.workers), True),
    **{stage: Stage("train.stages", lambda m, a: m.downstream(
        a.settings, a.stage, a.data, a.checkpoint, out=a.out, metrics_out=a.metrics, device=a.device,
        workers=a.workers), True) for stage in ("probe", "finetune")},
    "evaluate": Stage("train.stages", lambda m, a: m.evaluate(
        a.settings, a.stage_name, a.data, a.checkpoint, a.metrics, a.device, a.workers), True),
    "trajectory": Stage("train.stages", lambda m, a: m.trajectory(
        a.settings, a.stage_name, a.schedule, a.data, a.checkpoint, snapshots_out=a.snapshots,
        curve_out=a.curve, pretrained=a.pretrained, device=a.device, workers=a.workers), True),
    "snapshot-probe": Stage("train.stages", lambda m, a: m.snapshot_probes(
        a.settings, a.data, a.snapshots, a.count, a.out, a.device, a.workers), True),
    "directions": Stage("landscape.stages", lambda m, a: m.make_directions(a.settings, a.checkpoint, a.out), True),
    "surface-tile": Stage("landscape.stages", lambda m, a: m.surface_tile(
        a.settings, a.data, a.checkpoint, a.directions, a.tile, a.out), True),
    "line": Stage("landscape.stages", lambda m, a: m.line(a.settings, a.data, a.checkpoint, a.directions, a.out),
                  True),
    "interpolate": Stage("landscape.stages", lambda m, a: m.interpolate(a.settings, a.data, a.start, a.end, a.out),
                         True),
    "trajectory-plane": Stage("landscape.stages", lambda m, a: m.trajectory_plane(
        a.settings, a.checkpoint, a.snapshots, a.out, a.summary), True),
    "assemble": Stage("landscape.tiles", lambda m, a: m.assemble(
        a.settings, a.tiles, a.checkpoint, a.directions, a.out), False),
    "hessian": Stage("metrics.stages", lambda m, a: m.hessian_metrics(a.settings, a.data, a.checkpoint, a.out),
                     True),
    "flatness": Stage("metrics.stages", lambda m, a: m.flatness_metrics(a.settings, a.data, a.checkpoint, a.out),
                      True),
    "ratio-map": Stage("metrics.stages", lambda m, a: m.ratio_map(
        a.settings, a.data, a.checkpoint, a.directions, a.out), True),
    "metrics-tables": Stage("metrics.tables", lambda m, a: m.tables(
        a.settings, a.surfaces, a.hessian, a.flatness, a.out_dir), False),
    "surface-metrics": Stage("metrics.tables", lambda m, a: m.write_surface_metrics(
        a.settings, a.surface, a.hessian, a.flatness, a.out), False),
    "study-tables": Stage("metrics.replicates", lambda m, a: m.tables(a.settings, a.metrics, a.out_dir), False),
    "convergence": Stage("metrics.convergence", lambda m, a: m.table(
        a.settings, pairs(a.curves), a.out, pairs(a.probes)), False),
    "accuracy-table": Stage("metrics.accuracy", lambda m, a: m.accuracy_table(
        a.metrics, pairs(a.supervised), a.out), True),
    "plot-surface": Stage("figures.stages", lambda m, a: m.surface_figures(
        a.settings, a.surface, a.prefix, a.html, a.vts), False),
    "plot-accuracy": Stage("figures.stages", lambda m, a: m.accuracy_figure(a.settings, a.surface, a.prefix), False),
    "plot-reconstructions": Stage("figures.reconstructions", lambda m, a: m.reconstructions_figure(
        a.settings, a.data, a.checkpoint, a.directions, a.surface, a.prefix), True),
    "plot-path": Stage("figures.stages", lambda m, a: m.path_figure(a.settings, a.path, a.prefix), False),
    "plot-study-measures": Stage("figures.studies", lambda m, a: m.measures_figure(a.settings, a.summary, a.prefix),
                                 False),
    "plot-study-contours": Stage("figures.studies", lambda m, a: m.contours_figure(
        a.settings, a.surfaces, a.labels, a.prefix), False),
    "plot-compare": Stage("figures.stages", lambda m, a: m.comparison_figures(
        a.settings, a.surfaces, a.labels, a.prefix, a.title), False),
    "plot-spectrum": Stage("figures.stages", lambda m, a: m.spectrum_figure(
        a.settings, a.hessian, a.labels, a.prefix), False),
    "plot-ratio-map": Stage("figures.stages", lambda m, a: m.ratio_map_figure(a.settings, a.ratio_map, a.prefix),
                            False),
    "plot-trajectory": Stage("figures.stages", lambda m, a: m.trajectory_figures(
        a.settings, a.surfaces, a.summaries, a.curves, a.labels, a.prefix, a.title), False),
    "plan": Stage("plan", lambda m, a: m.command(
        a.configfile, tflops=a.tflops, measure=a.measure, num_classes=a.num_classes, train_images=a.train_images,
        json_out=a.json, device=a.device, precision=a.precision, batch_size=a.batch_size,
        measure_seconds=a.measure_seconds), False),  # torch only to --measure
    "write-config": Stage("storage.outputs", lambda m, a: m.write_yaml(a.settings, a.out), False),
    "bench": Stage("landscape.bench", lambda m, a: m.command(
        a.config, a.surfaces, a.data, grid_points=a.grid, threads=a.threads, device=a.device, repeats=a.repeats,
        out=a.out), True),
}


def pairs(items) -> dict:
    """NAME=VALUE arguments as a dict."""
    return dict(item.split("=", 1) for item in items)


def _run(args) -> None:
    stage = STAGES[args.stage]
    if stage.torch and getattr(args, "threads", None):
        import torch
        torch.set_num_threads(args.threads)
    stage.call(importlib.import_module(f"vitlandscape.{stage.module}"), args)
