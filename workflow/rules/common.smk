# Helpers shared by the rules: config checks, per-stage settings, code hashes, targets.
import copy
import functools
import json
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

LIBDIR = Path(workflow.basedir) / "workflow"
sys.path.insert(0, str(LIBDIR))
from vitlandscape import codehash, configcheck, methods, paths, studies, warmstart  # noqa: E402
from vitlandscape.landscape import grid  # noqa: E402

# Every job runs the library from this checkout through the shell function `vitlandscape`
# (`python -m vitlandscape STAGE ...`): with the conda environment's python under
# --software-deployment-method conda, else with the python running Snakemake (so
# `.venv/bin/snakemake` works without activating the venv). Where the interpreter lives
# is not a result-relevant parameter, so it stays out of params.
_CONDA = any(m.name == "CONDA" for m in workflow.deployment_settings.deployment_method)
_PYTHON = "python" if _CONDA else sys.executable
_FUNCTION = (f"vitlandscape() {{ PYTHONPATH='{LIBDIR}'${{PYTHONPATH:+:$PYTHONPATH}} "
             f"'{_PYTHON}' -m vitlandscape \"$@\"; }}; ")
_ESCAPED = _FUNCTION.replace("{", "{{").replace("}", "}}")  # the prefix is formatted like a command
shell.prefix(f"set -euo pipefail; {_ESCAPED}")
ENV = "../../envs/vitlandscape.yaml"

config = copy.deepcopy(config)  # defaults filled by validate() may be shared objects
_problems = configcheck.problems(config)
if _problems:
    raise WorkflowError("invalid config:\n  " + "\n  ".join(_problems))


# `cuda` where torch sees no GPU, before any job: only when jobs run here (a cluster's submit
# host often has no GPU while its nodes do; there each job checks its own device). Snakemake
# knows the executor only once the run starts, hence onstart rather than the parse.
onstart:
    if workflow.local_exec:
        _device_problems = configcheck.device_problems(config)
        if _device_problems:
            raise WorkflowError("invalid config:\n  " + "\n  ".join(_device_problems))
        # under conda, jobs use the environment's python and packages, not this one's: no server
        if config["warm_start"] and not _CONDA:
            WARM_SERVER.append(warmstart.start(LIBDIR, "results/logs/warm_start.log"))


# The warm-start server of a local run (vitlandscape/warmstart.py), stopped when the run ends.
WARM_SERVER = []


def stop_warm_server():
    while WARM_SERVER:
        warmstart.stop(WARM_SERVER.pop())


# The models of the config, and those its studies add (vitlandscape/studies.py): every model
# has its rules; only the config's own make the run's targets (the studies' their own tables).
BASE_MODELS = config["models"]
STUDIES = {study["name"]: study for study in config["studies"]}
VARIANTS = studies.variants(config)
MODELS = {**BASE_MODELS, **{name: v.model for name, v in VARIANTS.items()}}
DATASET = config["data"]["dataset"]
DATA_FILE = paths.data_file(DATASET)
# How many processes decode images changes how fast, not what, a job computes: the training
# rules take it as a resource (not a rerun trigger, unlike params).
DATA_SETTINGS = {k: v for k, v in config["data"].items() if k != "workers"}
WORKERS = config["data"]["workers"]
TRAIN_GPU = 1 if config["device"] == "cuda" else 0
LANDSCAPE = config["landscape"]
LANDSCAPE_GPU = 1 if LANDSCAPE["device"] == "cuda" else 0
TILES = grid.tile_names(LANDSCAPE["alpha"], LANDSCAPE["beta"], LANDSCAPE["tile"])
SURFACES = [(name, objective) for name, m in BASE_MODELS.items() for objective in methods.objectives(m)]
INTERPOLATIONS = {i["name"]: i for i in LANDSCAPE["interpolations"]}
TRAJECTORIES = config["trajectories"]
TRAJECTORY_RUNS = [(name, stage) for name in TRAJECTORIES["models"] for stage in TRAJECTORIES["stages"]]
TRAJECTORY_TILES = grid.tile_names(TRAJECTORIES["alpha"], TRAJECTORIES["beta"], TRAJECTORIES["tile"])
FIGURES = config["figures"]
FORMATS = FIGURES["formats"]
COMPARISONS = {c["name"]: c for c in FIGURES["compare"]}
METRICS = config["metrics"]


wildcard_constraints:
    model="|".join(re.escape(name) for name in MODELS),
    variant="|".join(re.escape(name) for name in VARIANTS) or "(?!)",
    dataset="[A-Za-z0-9_]+",
    objective="pretext|contrastive|probe|finetune|supervised",
    tile=r"a\d+_b\d+",


# A hash of the library code each stage can run goes into its rules' params, so that an edit
# reruns exactly the stages it can affect (Snakemake does not track imports): the stage's entry
# modules and everything they import, found from the import graph (vitlandscape/codehash.py).
@functools.cache
def code_hash(stage):
    return codehash.code_hash(LIBDIR / "vitlandscape", codehash.STAGE_ENTRIES[stage])


def as_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


_BASE_KEYS = ["method", "arch", "seed", "norm_pix_loss", "mask_ratio", "downstream_weights"]
_RCMAE_KEYS = ["ema_momentum", "ema_schedule", "consistency_weight"]


def trust(name):
    """`trust_checkpoint` only where a model sets it, so that settings (and with them what has
    to rerun) stay as they were for every model that does not."""
    return {"trust_checkpoint": True} if MODELS[name]["trust_checkpoint"] else {}


def stage_settings(name, stage):
    """Only the config a stage depends on, so an unrelated edit reruns nothing."""
    m = MODELS[name]
    keys = _BASE_KEYS + [stage] + (_RCMAE_KEYS if stage == "pretrain" and m["method"] == "rcmae" else [])
    if stage == "pretrain" and m["method"] == "mocov3":
        keys.append("moco")
    if "ema_momentum" in keys and m["ema_batch_reference"] is not None:  # passed only when set: reruns nothing else
        keys.append("ema_batch_reference")
    return as_json({"name": name, **{k: m[k] for k in keys}, **trust(name)})


def trained_as(name):
    """The model whose checkpoints `name` is measured on: itself, or the training a study's
    variant on other directions or another evaluation subset shares."""
    return VARIANTS[name].trained_as if name in VARIANTS else name


def pretrained_path(name):
    """The model's pretrained checkpoint: given in the config, or trained by the workflow."""
    return MODELS[name]["checkpoint"] or paths.trained_checkpoint(trained_as(name), "pretrain")


def pretrained(wildcards):
    return pretrained_path(wildcards.model)


def given_checkpoint_path(name, stage):
    """The checkpoint the config gives for a stage (probe, finetune, supervised), else None."""
    m = MODELS[name]
    return m["checkpoint"] if stage in ("pretrain", "supervised") else m[stage]["checkpoint"]


def given_checkpoint(wildcards):
    return given_checkpoint_path(wildcards.model, wildcards.stage)


def objective_checkpoint_path(name, objective):
    """The trained weights an objective is measured on: given in the config, or trained."""
    return paths.objective_checkpoint(trained_as(name), MODELS[name], objective)


def objective_checkpoint(wildcards):
    return objective_checkpoint_path(wildcards.model, wildcards.objective)


_DIRECTION_KEYS = ["direction_seed", "normalization", "perturb_1d", "perturb_frozen", "orthogonal"]
_SURFACE_KEYS = _DIRECTION_KEYS + ["alpha", "beta", "tile", "mask_seed", "batch_size", "device", "precision"]


def landscape_of(name):
    """The landscape settings of a model: a study's variant has its own direction seed."""
    return {**LANDSCAPE, "direction_seed": VARIANTS[name].direction_seed} if name in VARIANTS else LANDSCAPE


def landscape_settings(name, objective, keys):
    m = MODELS[name]
    model_keys = ["method", "arch", "norm_pix_loss", "mask_ratio", "downstream_weights"]
    if objective == "contrastive":  # its sizes, temperature and views: passed only there, so nothing else reruns
        model_keys.append("moco")
        if "mask_seed" in keys:  # where the evaluation is fixed
            keys = keys + ["view_seed"]
    return {"name": name, "objective": objective, **{k: m[k] for k in model_keys}, **trust(name),
            "landscape": {k: landscape_of(name)[k] for k in keys}}


def eval_data_path(name):
    """The prepared data a model's landscape and metrics are measured on: the run's evaluation
    subset, or the other subset of a study's variant with its own eval seed."""
    if name in VARIANTS and VARIANTS[name].eval_seed != config["data"]["seed"]:
        return paths.eval_subset_file(DATASET, VARIANTS[name].eval_seed)
    return DATA_FILE


def eval_data(wildcards):
    return eval_data_path(wildcards.model)


def direction_settings(w):
    return as_json(landscape_settings(w.model, w.objective, _DIRECTION_KEYS))


def surface_settings(w):
    return as_json(landscape_settings(w.model, w.objective, _SURFACE_KEYS))


def line_settings(w):
    return as_json(landscape_settings(w.model, w.objective, _SURFACE_KEYS + ["line"]))


# The landscape keys that fix what a metric is measured on (evaluation set and masks), and
# those that fix how its random perturbations are normalised.
_EVAL_KEYS = ["mask_seed", "batch_size", "device"]
_PERTURBATION_KEYS = ["normalization", "perturb_1d", "perturb_frozen"]


def metric_settings(w, part, keys, with_hessian=False):
    """A metric job's settings: the model, the landscape keys it depends on and its own
    `metrics` subsection (the ratio map also runs Lanczos with the Hessian's seed and batch)."""
    metrics = {part: METRICS[part]}
    if with_hessian:
        metrics["hessian"] = {k: METRICS["hessian"][k] for k in ("seed", "batch_size")}
    return as_json({**landscape_settings(w.model, w.objective, keys), "metrics": metrics})


def metric_files(part):
    """The Hessian or flatness files of every surface, in the order of SURFACES; none when off."""
    if not METRICS[part]["enabled"]:
        return []
    return [f"results/metrics/{name}/{objective}/{part}.json" for name, objective in SURFACES]


def table_settings():
    """What the metrics tables depend on beyond their input files."""
    return as_json({k: METRICS[k] for k in ("relative_rises", "absolute_rises", "sharpness_rho", "claims")})


def interpolation_settings(w):
    spec = INTERPOLATIONS[w.name]
    settings = landscape_settings(spec["start"], spec["objective"], ["mask_seed", "batch_size", "device", "precision"])
    end_trust = {"end_trust_checkpoint": True} if MODELS[spec["end"]]["trust_checkpoint"] else {}
    return as_json({**settings, "interpolation": w.name, "end_model": spec["end"], "range": spec["range"],
                    **end_trust})


def interpolation_checkpoints(w):
    spec = INTERPOLATIONS[w.name]
    return {"start": objective_checkpoint_path(spec["start"], spec["objective"]),
            "end": objective_checkpoint_path(spec["end"], spec["objective"])}


def trajectory_checkpoint(name, stage):
    return paths.trained_checkpoint(name, stage)


def trajectory_inputs(w):
    """The replayed stage's checkpoint (which the replay must reproduce) and, for a probe or
    fine-tuning, the checkpoint it starts from."""
    inputs = {"checkpoint": trajectory_checkpoint(w.model, w.stage)}
    if w.stage != "pretrain":
        inputs["pretrained"] = pretrained_path(w.model)
    return inputs


def trajectory_settings(w):
    """A surface's settings with the PCA plane's grid: the tile and assembly jobs are the surface's."""
    settings = landscape_settings(w.model, methods.stage_objective(MODELS[w.model], w.stage), _SURFACE_KEYS)
    how = TRAJECTORIES["normalization"]
    settings["landscape"].update({k: TRAJECTORIES[k] for k in ("alpha", "beta", "tile")},
                                 normalization=f"pca-{how}", direction_seed="n/a")
    return as_json({**settings, "trajectories": {"normalization": how}})


def trajectory_group(group):
    """`mae_vs_rcmae` -> [mae, rcmae]; a single model's name -> [name]."""
    return group.split("_vs_")


def trajectory_figure_inputs(w):
    folders = [f"results/trajectories/{name}/{w.stage}" for name in trajectory_group(w.group)]
    return {"surfaces": [f"{f}/surface.zarr" for f in folders], "summaries": [f"{f}/pca.json" for f in folders],
            "curves": [f"{f}/curve.csv" for f in folders]}


def probed_trajectories():
    """(model, stage) of the replayed MAE / RC-MAE pretrainings whose snapshots are probed."""
    if not TRAJECTORIES["probe_snapshots"]:
        return []
    return [(n, s) for n, s in TRAJECTORY_RUNS if s == "pretrain" and MODELS[n]["method"] != "supervised"]


def trajectory_targets():
    if not TRAJECTORY_RUNS:
        return []
    groups = TRAJECTORIES["models"] + ["_vs_".join(g) for g in TRAJECTORIES["compare"]]
    return ["results/metrics/convergence.csv"] + expand(
        "results/figures/trajectories/{group}/{stage}_{kind}.{fmt}", group=groups, stage=TRAJECTORIES["stages"],
        kind=["path", "curves", "distances"], fmt=FORMATS)


def self_supervised():
    return [n for n, m in BASE_MODELS.items() if m["method"] in methods.SELF_SUPERVISED]


def supervised():
    return [n for n, m in BASE_MODELS.items() if m["method"] == "supervised"]


def accuracy_metrics():
    """Accuracy files of every probe, fine-tune and given supervised model: from the
    training stage, or from evaluating the checkpoint the config gives."""
    files = []
    for n in self_supervised():
        for stage in MODELS[n]["accuracy"]:
            given = given_checkpoint_path(n, stage)
            files.append(f"results/accuracy/{n}/{stage}.json" if given else f"results/checkpoints/{n}/{stage}.json")
    return files + [f"results/accuracy/{n}/supervised.json" for n in supervised() if MODELS[n]["checkpoint"]]


def trained_supervised():
    """Supervised models the workflow trains (their checkpoint holds the test accuracy)."""
    return [n for n in supervised() if not MODELS[n]["checkpoint"]]


def accuracy_inputs():
    return accuracy_metrics() + [paths.trained_checkpoint(n, "pretrain") for n in trained_supervised()]


def figure_prefix(wildcards, output):
    """`results/figures/mae/pretext` from `results/figures/mae/pretext_3d.png`: the plotting
    stages write `{prefix}_{kind}.{format}`."""
    return str(output[0]).rsplit("_", 1)[0]


def figure_settings():
    """The figure options (not the list of comparisons, nor the reconstructions' own options):
    only figure rules depend on them."""
    return as_json({k: v for k, v in FIGURES.items() if k not in ("compare", "reconstructions")})


def reconstruction_settings(w):
    """The pretext objective's evaluation, the figure options and the reconstructions' own."""
    settings = landscape_settings(w.model, "pretext", ["mask_seed", "batch_size", "device", "precision"])
    return as_json({**settings, "figures": json.loads(figure_settings()),
                    "reconstructions": FIGURES["reconstructions"]})


def comparison_surfaces(w):
    return [f"results/surfaces/{s}.zarr" for s in COMPARISONS[w.name]["surfaces"]]


def figure_targets():
    kinds = ["3d", "contour", "slices", "line_path"]
    files = []
    for name, objective in SURFACES:
        surface_kinds = kinds + (["accuracy"] if objective not in ("pretext", "contrastive") else [])  # no labels
        files += expand(f"results/figures/{name}/{objective}_{{kind}}.{{fmt}}", kind=surface_kinds, fmt=FORMATS)
        files += [f"results/figures/{name}/{objective}.html", f"results/figures/{name}/{objective}.vts"]
        if objective == "pretext":
            files += expand(f"results/figures/{name}/pretext_reconstructions.{{fmt}}", fmt=FORMATS)
    files += expand("results/figures/interpolations/{name}_path.{fmt}", name=INTERPOLATIONS, fmt=FORMATS)
    files += expand("results/figures/compare/{name}_{kind}.{fmt}", name=COMPARISONS, kind=["compare", "basins"],
                    fmt=FORMATS)
    if METRICS["hessian"]["enabled"]:
        files += expand("results/figures/metrics/hessian_spectrum.{fmt}", fmt=FORMATS)
    if METRICS["ratio_map"]["enabled"]:
        files += expand(f"results/figures/{{surface}}_ratio_map.{{fmt}}", surface=[f"{n}/{o}" for n, o in SURFACES],
                        fmt=FORMATS)
    return files


def surface_targets():
    return [f"results/surfaces/{name}/{objective}.zarr" for name, objective in SURFACES]


def all_targets():
    return (["results/metrics/accuracy.csv", "results/metrics/summary.csv", "results/metrics/findings.csv"]
            + surface_targets()
            + [f"results/lines/{name}/{objective}.nc" for name, objective in SURFACES]
            + [f"results/interpolations/{name}.nc" for name in INTERPOLATIONS]
            + figure_targets() + trajectory_targets() + study_targets() + ["results/config.yaml"])


def study_replicates(name):
    """(variant, objective) of every surface a study measures, in the order of its variants."""
    return [(v, o) for v in studies.study_variants(config, STUDIES[name]) for o in methods.objectives(v.model)]


def study_metric_files(w):
    return [f"results/metrics/{v.name}/{objective}.json" for v, objective in study_replicates(w.study)]


def study_settings(w):
    """Who each replicate is (base, training variant, setting, seeds, how it trained), the claims
    and the bootstrap: all that the study's tables depend on beyond the metrics files."""
    study = STUDIES[w.study]
    replicates = [{"name": v.name, "objective": o, "model": v.base, "variant": v.trained_as, "setting": v.setting,
                   "training_seed": v.training_seed, "direction_seed": v.direction_seed, "eval_seed": v.eval_seed,
                   "seed_index": studies.seed_index(study, v), "training": studies.training_columns(v.model)}
                  for v, o in study_replicates(w.study)]
    return as_json({"study": w.study, "varies": studies.varied_key(study), "claims": METRICS["claims"],
                    "bootstrap": study["bootstrap"], "replicates": replicates})


def study_measures_settings(w):
    study = STUDIES[w.study]
    measures = list(dict.fromkeys(m for claim in METRICS["claims"] for m in claim["measures"]))
    return as_json({"figures": json.loads(figure_settings()), "study": {
        "name": w.study, "varies": studies.varied_key(study), "measures": measures, "bootstrap": study["bootstrap"]}})


def study_contour_variants(study_name, objective):
    """The study's trainings on its first direction pair and evaluation subset, for one objective."""
    replicates = study_replicates(study_name)
    first = replicates[0][0]
    return [v for v, o in replicates
            if o == objective and (v.direction_seed, v.eval_seed) == (first.direction_seed, first.eval_seed)]


def variant_measured(w, part):
    """The Hessian or flatness file of a variant's weights and evaluation set (not its directions)."""
    if not METRICS[part]["enabled"]:
        return []
    return [f"results/metrics/{VARIANTS[w.variant].measured_as}/{w.objective}/{part}.json"]


def study_objectives(name):
    return list(dict.fromkeys(o for _, o in study_replicates(name)))


def study_targets():
    files = []
    for name in STUDIES:
        files += [f"results/studies/{name}/summary.csv", f"results/studies/{name}/findings.csv"]
        files += expand(f"results/studies/{name}/{name}_measures.{{fmt}}", fmt=FORMATS)
        files += expand(f"results/studies/{name}/{name}_contours_{{objective}}.{{fmt}}",
                        objective=study_objectives(name), fmt=FORMATS)
    return files


def finished_message():
    return ("vitlandscape finished. Tables: results/metrics/  Figures: results/figures/  "
            "Surfaces: results/surfaces/  Logs: results/logs/  Timings: results/benchmarks/")
