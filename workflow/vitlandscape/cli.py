"""Command line: one subcommand per workflow stage (`python -m vitlandscape STAGE --help`).

Settings arrive as JSON, inline or as `@file.json`: the Snakemake rules pass exactly the
part of the validated config that a stage depends on.
"""
import argparse
import errno
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
                   "digits, else 1000)")
    p.add_argument("--train-images", type=int, default=None, help="training images per epoch (default: "
                   "digits' training split; 1,281,167 for imagefolder, ImageNet-1k; required otherwise)")
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


def _run(args) -> None:
    # Stages that only read and write files import neither torch nor timm (2 to 4 s a job).
    if args.stage == "plan":  # counts from the config: torch is imported only to measure
        _plan(args)
    elif args.stage == "metrics-tables":
        from vitlandscape.metrics import tables
        tables.tables(args.settings, args.surfaces, args.hessian, args.flatness, args.out_dir)
    elif args.stage == "assemble":
        from vitlandscape.landscape import tiles
        tiles.assemble(args.settings, args.tiles, args.checkpoint, args.directions, args.out)
    elif args.stage == "write-config":
        _write_config(args.settings, args.out)
    elif args.stage == "convergence":
        from vitlandscape.metrics import convergence
        convergence.table(args.settings, dict(item.split("=", 1) for item in args.curves), args.out,
                          dict(item.split("=", 1) for item in args.probes))
    elif args.stage.startswith("plot-"):
        _plot(args)
    else:
        _compute(args)


def _plot(args) -> None:
    from vitlandscape.figures import stages as figures_stages
    if args.stage == "plot-surface":
        figures_stages.surface_figures(args.settings, args.surface, args.prefix, args.html, args.vts)
    elif args.stage == "plot-accuracy":
        figures_stages.accuracy_figure(args.settings, args.surface, args.prefix)
    elif args.stage == "plot-path":
        figures_stages.path_figure(args.settings, args.path, args.prefix)
    elif args.stage == "plot-compare":
        figures_stages.comparison_figures(args.settings, args.surfaces, args.labels, args.prefix, args.title)
    elif args.stage == "plot-spectrum":
        figures_stages.spectrum_figure(args.settings, args.hessian, args.labels, args.prefix)
    elif args.stage == "plot-ratio-map":
        figures_stages.ratio_map_figure(args.settings, args.ratio_map, args.prefix)
    elif args.stage == "plot-trajectory":
        figures_stages.trajectory_figures(args.settings, args.surfaces, args.summaries, args.curves, args.labels,
                                          args.prefix, args.title)


def _compute(args) -> None:
    """The stages that read or run models: each imports only the modules it calls (timm, with
    torchvision, costs about 2 s a job; data preparation and the accuracy table need neither)."""
    import torch
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    if args.stage == "prepare-data":
        from vitlandscape.data import prepare
        prepare.prepare_data(args.settings, args.out)
    elif args.stage == "accuracy-table":
        from vitlandscape.metrics import accuracy
        supervised = dict(item.split("=", 1) for item in args.supervised)
        accuracy.accuracy_table(args.metrics, supervised, args.out)
    elif args.stage in ("pretrain", "probe", "finetune", "evaluate", "trajectory", "snapshot-probe"):
        _train(args)
    elif args.stage in ("directions", "surface-tile", "line", "interpolate", "trajectory-plane"):
        _landscape(args)
    elif args.stage in ("hessian", "flatness", "ratio-map"):
        _curvature(args)
    elif args.stage == "bench":
        _bench_compare(args)


def _train(args) -> None:
    from vitlandscape.train import stages as train_stages
    if args.stage == "pretrain":
        train_stages.pretrain(args.settings, args.data, args.out, args.device, args.workers)
    elif args.stage in ("probe", "finetune"):
        train_stages.downstream(args.settings, args.stage, args.data, args.checkpoint, args.out, args.metrics,
                                args.device, args.workers)
    elif args.stage == "snapshot-probe":
        train_stages.snapshot_probes(args.settings, args.data, args.snapshots, args.count, args.out, args.device,
                                     args.workers)
    elif args.stage == "trajectory":
        train_stages.trajectory(args.settings, args.stage_name, args.schedule, args.data, args.checkpoint,
                                args.snapshots, args.curve, args.pretrained, args.device, args.workers)
    else:
        train_stages.evaluate(args.settings, args.stage_name, args.data, args.checkpoint, args.metrics, args.device,
                              args.workers)


def _landscape(args) -> None:
    from vitlandscape.landscape import stages as landscape_stages
    if args.stage == "directions":
        landscape_stages.make_directions(args.settings, args.checkpoint, args.out)
    elif args.stage == "surface-tile":
        landscape_stages.surface_tile(args.settings, args.data, args.checkpoint, args.directions, args.tile, args.out)
    elif args.stage == "line":
        landscape_stages.line(args.settings, args.data, args.checkpoint, args.directions, args.out)
    elif args.stage == "trajectory-plane":
        landscape_stages.trajectory_plane(args.settings, args.checkpoint, args.snapshots, args.out, args.summary)
    else:
        landscape_stages.interpolate(args.settings, args.data, args.start, args.end, args.out)


def _curvature(args) -> None:
    from vitlandscape.metrics import stages as metrics_stages
    if args.stage == "hessian":
        metrics_stages.hessian_metrics(args.settings, args.data, args.checkpoint, args.out)
    elif args.stage == "flatness":
        metrics_stages.flatness_metrics(args.settings, args.data, args.checkpoint, args.out)
    else:
        metrics_stages.ratio_map(args.settings, args.data, args.checkpoint, args.directions, args.out)


def _plan(args) -> None:
    """Validate the config as the workflow does (defaults filled), then print and save the plan."""
    import yaml

    from vitlandscape import configcheck, plan
    config = yaml.safe_load(Path(args.configfile).read_text())
    try:
        configcheck.validate_config(config, Path(__file__).resolve().parents[2] / "config" / "schema.yaml")
    except configcheck.ConfigError as err:
        raise SystemExit(f"plan: {args.configfile}: {err}") from None
    num_classes = args.num_classes or (10 if config["data"]["dataset"] == "digits" else 1000)
    try:
        train_images = args.train_images or plan.default_train_images(config)
    except plan.PlanError as err:  # before measuring: say it at once
        raise SystemExit(f"plan: {err}") from None
    measured = None
    if args.measure:
        from vitlandscape.landscape import throughput
        measured = throughput.measure(config, plan.forwards(config), num_classes, args.device, args.precision,
                                      args.batch_size, args.measure_seconds)
    result = plan.plan(config, args.tflops or plan.DEFAULT_TFLOPS, num_classes, train_images, measured)
    print(plan.table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


def _write_config(config: dict, out) -> None:
    import yaml

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"wrote {out}")


def _bench_compare(args) -> None:
    """One grid by every method on the chosen surfaces of a finished run: bench.json and a table."""
    import yaml

    from vitlandscape.landscape import bench, bench_cases
    from vitlandscape.storage import outputs
    config = yaml.safe_load(Path(args.config).read_text())
    try:
        cases = bench_cases.cases(config, args.surfaces, args.data)
    except ValueError as err:
        raise SystemExit(f"bench: {args.config} {err}") from None
    result = bench.compare(cases, args.grid, args.threads, args.device, args.repeats)
    outputs.write_json(result, args.out)
    print(bench.table(result))
    print(f"wrote {args.out}")
