"""The config's checks before any job runs: the JSON schema (`validate_config`, one readable
line per error), then what a schema cannot express (`problems`, on the validated config).

Each problem names the config key at fault, the value and what is expected.
"""
import zipfile
from pathlib import Path

from vitlandscape import schemaerrors, studies
from vitlandscape.methods import ALLOWED, objectives
from vitlandscape.metrics import findings
from vitlandscape.models.arch import DECODER_KEYS, PRESETS, dimensions, is_timm
from vitlandscape.train import recipes


class ConfigError(ValueError):
    pass


def validate_config(config: dict, schema_path) -> None:
    """Validate against the JSON schema, filling in defaults (as snakemake.utils.validate does);
    raise a ConfigError with one line per error."""
    lines = schemaerrors.problems(config, schema_path)
    if lines:
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines))


def _model_problems(name: str, m: dict, image_size: int) -> list[str]:
    key = f"models.{name}"
    try:
        dims = dimensions(m["arch"])
    except ValueError as err:  # a timm arch that timm cannot build
        return [f"{key}.{err}"]
    out = []
    if dims["img_size"] != image_size:
        out.append(f"{key}.arch.img_size is {dims['img_size']} but data.image_size is {image_size}")
    if dims["img_size"] % dims["patch_size"]:
        out.append(f"{key}.arch.img_size {dims['img_size']} is not a multiple of patch_size {dims['patch_size']}")
    if dims["embed_dim"] % dims["num_heads"]:
        out.append(f"{key}.arch.embed_dim {dims['embed_dim']} is not divisible by num_heads {dims['num_heads']}")
    encoder_only = m["method"] in ("supervised", "mocov3")
    what = "a supervised model" if m["method"] == "supervised" else "a MoCo v3 model"
    if encoder_only and isinstance(m["arch"], str) and "decoder_embed_dim" in dims:
        encoders = [p for p in PRESETS if "decoder_embed_dim" not in PRESETS[p]]
        out.append(f"{key}.arch: {m['arch']} is an MAE preset with a decoder, which {what} does not "
                   f"have; expected one of {', '.join(encoders)}")
    elif encoder_only:
        out += [f"{key}.arch.{k}: {dims[k]} is a decoder setting, which {what} does not have; "
                f"expected no {k}" for k in DECODER_KEYS if k in dims]
    if m["method"] in ("mae", "rcmae") and is_timm(m["arch"]):
        if not m.get("checkpoint") or "pretext" in objectives(m):
            out.append(f"{key}.arch.timm: {m['arch']['timm']} has no MAE decoder, so method {m['method']} can "
                       f"neither pretrain it nor measure its pretext loss; give `checkpoint` (a pretrained "
                       f"encoder in timm's names) and objectives among probe, finetune")
    elif m["method"] in ("mae", "rcmae"):
        missing = [k for k in ("decoder_embed_dim", "decoder_depth", "decoder_num_heads") if k not in dims]
        if missing:
            out.append(f"{key}.arch needs {', '.join(missing)} for method {m['method']}")
        elif dims["decoder_embed_dim"] % dims["decoder_num_heads"]:
            out.append(f"{key}.arch.decoder_embed_dim is not divisible by decoder_num_heads")
        patches = (dims["img_size"] // dims["patch_size"]) ** 2
        if int(patches * (1 - m["mask_ratio"])) < 1:
            out.append(f"{key}.mask_ratio {m['mask_ratio']} keeps no patch of {patches}")
    wrong = sorted(set(objectives(m)) - ALLOWED[m["method"]])
    if wrong:
        out.append(f"{key}.objectives: {', '.join(wrong)} not available for method {m['method']} "
                   f"(choose from {', '.join(sorted(ALLOWED[m['method']]))})")
    stages = ["pretrain"] if m["method"] == "supervised" else ["pretrain", "probe", "finetune"]
    out += [p for stage in stages for p in recipes.problems(f"{key}.{stage}", m, stage)]
    return out + _checkpoint_problems(key, m)


def given_checkpoints(m: dict) -> dict:
    """Config key -> (file, what it must serve) for every checkpoint the model entry gives."""
    given = {}
    if m.get("checkpoint"):
        uses = [o for o in objectives(m) if o in ("pretext", "contrastive", "supervised")]
        given["checkpoint"] = (m["checkpoint"], uses or ["encoder"])
    for stage in ("probe", "finetune"):
        if m.get(stage, {}).get("checkpoint"):
            given[f"{stage}.checkpoint"] = (m[stage]["checkpoint"], [stage])
    return given


def _checkpoint_problems(key: str, m: dict) -> list[str]:
    """Each given checkpoint exists, is in a recognised format that serves its use, and
    records the same `norm_pix_loss` as the config (where it records one)."""
    out = []
    for name, (path, uses) in given_checkpoints(m).items():
        if not Path(path).is_file():
            out.append(f"{key}.{name}: file {path} does not exist")
            continue
        from vitlandscape.storage import checkpoint_header, formats  # import torch: only when a checkpoint is given

        try:
            ckpt = checkpoint_header.read(path, prefer=m.get("downstream_weights", "teacher"),
                                          trusted=m.get("trust_checkpoint", False))
            for use in uses:
                if use == "encoder":
                    formats.encoder_source(ckpt)
                else:
                    formats.require(ckpt, use)
        except (formats.CheckpointError, OSError) as err:
            out.append(f"{key}.{name}: {err}")
            continue
        recorded = formats.args_norm_pix_loss(ckpt)
        if "pretext" in uses and recorded is not None and recorded != m["norm_pix_loss"]:
            out.append(f"{key}.norm_pix_loss is {m['norm_pix_loss']} but checkpoint {path} was trained with "
                       f"norm_pix_loss={recorded}: the pretext loss would not be the one it minimised")
        out += _arch_problems(key, name, ckpt, uses, m)
    return out


def _arch_problems(key: str, name: str, ckpt, uses: list[str], m: dict) -> list[str]:
    """The checkpoint's tensor names and shapes against the model `arch` builds for each use
    (on the meta device): the strict check the job makes when it loads the weights."""
    import torch

    from vitlandscape.landscape import objectives
    from vitlandscape.models.classifier import build_classifier, encoder_weights
    from vitlandscape.storage import checkpoint_header
    from vitlandscape.storage.checkpoints import CheckpointError, check_keys

    wanted, found = dimensions(m["arch"]), checkpoint_header.dims(ckpt.state)
    timm_arch = is_timm(m["arch"])
    differ = [f"{key}.arch.{k}: {wanted[k]} does not match checkpoint {ckpt.path} ({key}.{name}); expected {v}, "
              f"as in the checkpoint"
              for k, v in found.items() if k in wanted and wanted[k] != v
              and ("pretext" in uses or k not in DECODER_KEYS)  # only the pretext loss uses the decoder
              and not (timm_arch and k == "img_size")]  # timm's position embeddings are resampled
    if differ:
        return differ
    what = f"checkpoint {ckpt.path}"
    try:
        with torch.device("meta"):
            for use in uses:
                if use == "encoder":
                    model = build_classifier(m["arch"], 1, "probe")
                    check_keys(*encoder_weights(model, ckpt.state, timm_arch), what)
                else:
                    model = objectives.model_for(ckpt, use, m)
                    check_keys(model.state_dict(), objectives.fitted_state(model, ckpt, m), what)
    except CheckpointError as err:
        text = f"{key}.{name}: {err} (the model of {key}.arch)"
        return [text if len(text) <= 400 else text[:397] + "..."]
    return []


def _interpolation_problems(i: int, spec: dict, models: dict) -> list[str]:
    key = f"landscape.interpolations[{i}] ({spec['name']})"
    out = []
    for end in ("start", "end"):
        name = spec[end]
        if name not in models:
            out.append(f"{key}.{end}: {name!r} is not a model of this config (models: {', '.join(models)})")
        elif spec["objective"] not in ALLOWED[models[name]["method"]]:
            out.append(f"{key}.objective: {spec['objective']} not available for model {name}")
    if not out and dimensions(models[spec["start"]]["arch"]) != dimensions(models[spec["end"]]["arch"]):
        out.append(f"{key}: {spec['start']} and {spec['end']} have different architectures")
    return out


def _metrics_problems(config: dict, surfaces: set[str]) -> list[str]:
    """Sharpness circles inside the surface grid; claims that name computed surfaces and
    measured measures."""
    metrics, ls = config["metrics"], config["landscape"]
    reach = min(-ls["alpha"][0], ls["alpha"][1], -ls["beta"][0], ls["beta"][1])
    out = [f"metrics.sharpness_rho: {rho:g} is beyond the surface grid (the circle around the trained weights "
           f"must fit in landscape.alpha {ls['alpha'][:2]} and landscape.beta {ls['beta'][:2]})"
           for rho in metrics["sharpness_rho"] if rho > reach]
    return out + findings.claim_problems(metrics, surfaces)


DATA_LAYOUT = {"npz": "an .npz file with arrays images and labels",
               "cifar": "a folder with CIFAR data_batch_* files",
               "imagefolder": "a folder with train/<class>/ image folders (ImageNet layout)"}


def _npz_arrays(path: Path) -> set[str]:
    """The array names of an .npz file (a zip of NAME.npy files), read from its directory."""
    if not zipfile.is_zipfile(path):
        return set()
    with zipfile.ZipFile(path) as npz:
        return {Path(name).stem for name in npz.namelist()}


def _data_problems(data: dict) -> list[str]:
    dataset, path = data["dataset"], data.get("path")
    if dataset == "digits":
        return []
    if dataset not in DATA_LAYOUT:  # the official files: their reader's check (it imports torch, via data.common)
        from vitlandscape.data import common, files
        try:
            files.locate(dataset, path)
        except common.DataError as err:
            return [str(err)]
        return []
    if not path:
        return [f"data.path is required for data.dataset {dataset!r}"]
    path = Path(path)
    if not path.exists():
        return [f"data.path: {path} does not exist"]
    if dataset == "npz":
        fits = {"images", "labels"} <= _npz_arrays(path)
    elif dataset == "cifar":
        fits = any(path.glob("data_batch_*"))
    else:
        fits = (path / "train").is_dir()
    return [] if fits else [f"data.path: {path} is not {DATA_LAYOUT[dataset]} (data.dataset is {dataset})"]


def _axis_problems(config: dict) -> list[str]:
    """Every [min, max, points] axis runs upwards (one point may sit at min == max)."""
    ls, ratio_map, paths = config["landscape"], config["metrics"]["ratio_map"], config["trajectories"]
    axes = {"landscape.alpha": ls["alpha"], "landscape.beta": ls["beta"], "landscape.line": ls["line"],
            "trajectories.alpha": paths["alpha"], "trajectories.beta": paths["beta"],
            **{f"landscape.interpolations[{i}].range": spec["range"] for i, spec in enumerate(ls["interpolations"])},
            "metrics.ratio_map.alpha": ratio_map["alpha"], "metrics.ratio_map.beta": ratio_map["beta"]}
    return [f"{key}: {list(spec)} has min {spec[0]} >= max {spec[1]}; expected [min, max, points] with min < max "
            f"(min == max only with 1 point)" for key, spec in axes.items()
            if spec[0] > spec[1] or (spec[0] == spec[1] and spec[2] > 1)]


def _trajectory_problems(config: dict) -> list[str]:
    """Trajectories replay trainings the workflow runs: of models it trains, stages they have."""
    paths, models = config["trajectories"], config["models"]
    out = []
    snapshots = paths["snapshots"]
    if ("every" in snapshots) == ("points" in snapshots) or ("spacing" in snapshots and "every" in snapshots):
        out.append(f"trajectories.snapshots: {snapshots} gives no schedule; expected {{every: k}} or "
                   f"{{points: n, spacing: linear|log}}")
    for name in paths["models"]:
        key = f"trajectories.models: {name}"
        if name not in models:
            out.append(f"{key} is not a model (known: {', '.join(models)})")
            continue
        m = models[name]
        if "_vs_" in name:
            out.append(f"{key}: a model whose path is drawn cannot have '_vs_' in its name (it joins compared names)")
        if m["method"] == "mocov3":
            out.append(f"{key} is a MoCo v3 model: replaying its training on the contrastive landscape is not "
                       f"supported yet (its snapshots would need the momentum encoder and predictor too)")
            continue
        for stage in paths["stages"]:
            if stage != "pretrain" and m["method"] == "supervised":
                out.append(f"{key} is supervised: it has no {stage} stage to replay (trajectories.stages)")
            elif (m["checkpoint"] if stage == "pretrain" else m[stage]["checkpoint"]) and stage != "pretrain":
                out.append(f"{key}: its {stage} checkpoint is given (models.{name}.{stage}.checkpoint), so "
                           f"there is no training to replay")
            elif stage == "pretrain" and m["checkpoint"]:
                out.append(f"{key}: its checkpoint is given (models.{name}.checkpoint), so there is no "
                           f"pretraining to replay")
    for i, group in enumerate(paths["compare"]):
        for name in group:
            if name not in paths["models"]:
                out.append(f"trajectories.compare[{i}]: {name} is not in trajectories.models "
                           f"({', '.join(paths['models']) or 'none'})")
    return out


def device_problems(config: dict) -> list[str]:
    """`cuda` requested where torch sees no GPU, for a run whose jobs run on this machine
    (on a cluster the submitting host often has none while the nodes do: the workflow asks
    only when it executes locally, and each job checks again in devices.resolve). Imports
    torch only when some device is cuda."""
    wanted = [key for key, value in (("device", config["device"]), ("landscape.device", config["landscape"]["device"]))
              if value == "cuda"]
    if not wanted:
        return []
    import torch

    if torch.cuda.is_available():
        return []
    return [f"{key}: 'cuda' requested, but no GPU is visible to torch on this machine (torch.cuda.is_available() "
            f"is False); expected cpu or auto here, or run on a GPU node (snakemake --profile slurm)" for key in wanted]


def problems(config: dict) -> list[str]:
    """What the schema cannot check, on a validated config (defaults filled)."""
    data = config["data"]
    out = _data_problems(data) + _axis_problems(config)
    for name, m in config["models"].items():
        out += _model_problems(name, m, data["image_size"])
    surfaces = {f"{name}/{o}" for name, m in config["models"].items() for o in objectives(m)}
    for i, spec in enumerate(config["landscape"]["interpolations"]):
        out += _interpolation_problems(i, spec, config["models"])
    for i, panel in enumerate(config["figures"]["compare"]):
        for s in panel["surfaces"]:
            if s not in surfaces:
                out.append(f"figures.compare[{i}] ({panel['name']}): surface {s} is not computed "
                           f"(known: {', '.join(sorted(surfaces))})")
    return out + _metrics_problems(config, surfaces) + _trajectory_problems(config) + _study_problems(config)


def _study_problems(config: dict) -> list[str]:
    """The studies' keys and values, then each training variant as a model of its own."""
    out = studies.study_problems(config)
    if out:
        return list(dict.fromkeys(out))
    for v in studies.variants(config).values():
        if v.trains:
            out += _model_problems(f"{v.base} (as variant {v.name} of study {v.study})", v.model,
                                   config["data"]["image_size"])
    return list(dict.fromkeys(out))
