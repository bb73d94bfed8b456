"""Checks of a schema-validated config (defaults filled) that a JSON schema cannot express.

Each problem names the config key at fault, so a bad config fails before any job runs.
"""
from pathlib import Path

from vitlandscape import findings
from vitlandscape.models.arch import PRESETS

OBJECTIVES = {"mae": ["pretext", "probe"], "rcmae": ["pretext", "probe"], "supervised": ["supervised"]}
ALLOWED = {"mae": {"pretext", "probe", "finetune"}, "rcmae": {"pretext", "probe", "finetune"},
           "supervised": {"supervised"}}


def objectives(model_cfg: dict) -> list[str]:
    """The model's landscape objectives: as listed, or the method's defaults."""
    return model_cfg.get("objectives") or OBJECTIVES[model_cfg["method"]]


def arch_dims(arch) -> dict:
    return PRESETS[arch] if isinstance(arch, str) else arch


def _model_problems(name: str, m: dict, image_size: int) -> list[str]:
    key = f"models.{name}"
    dims = arch_dims(m["arch"])
    out = []
    if dims["img_size"] != image_size:
        out.append(f"{key}.arch.img_size is {dims['img_size']} but data.image_size is {image_size}")
    if dims["img_size"] % dims["patch_size"]:
        out.append(f"{key}.arch.img_size {dims['img_size']} is not a multiple of patch_size {dims['patch_size']}")
    if dims["embed_dim"] % dims["num_heads"]:
        out.append(f"{key}.arch.embed_dim {dims['embed_dim']} is not divisible by num_heads {dims['num_heads']}")
    if m["method"] in ("mae", "rcmae"):
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
    return out + _checkpoint_problems(key, m)


def given_checkpoints(m: dict) -> dict:
    """Config key -> (file, what it must serve) for every checkpoint the model entry gives."""
    given = {}
    if m.get("checkpoint"):
        uses = [o for o in objectives(m) if o in ("pretext", "supervised")]
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
        from vitlandscape import formats  # imports torch: only when a checkpoint is given

        try:
            ckpt = formats.read(path, prefer=m.get("downstream_weights", "teacher"), mmap=True)
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
    return out


def _interpolation_problems(i: int, spec: dict, models: dict) -> list[str]:
    key = f"landscape.interpolations[{i}] ({spec['name']})"
    out = []
    for end in ("start", "end"):
        name = spec[end]
        if name not in models:
            out.append(f"{key}.{end}: {name!r} is not a model of this config (models: {', '.join(models)})")
        elif spec["objective"] not in ALLOWED[models[name]["method"]]:
            out.append(f"{key}.objective: {spec['objective']} not available for model {name}")
    if not out and arch_dims(models[spec["start"]]["arch"]) != arch_dims(models[spec["end"]]["arch"]):
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


def problems(config: dict) -> list[str]:
    data = config["data"]
    out = []
    if data["dataset"] != "digits":
        if not data.get("path"):
            out.append(f"data.path is required for data.dataset {data['dataset']!r}")
        elif not Path(data["path"]).exists():
            out.append(f"data.path: {data['path']} does not exist")
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
    return out + _metrics_problems(config, surfaces)
