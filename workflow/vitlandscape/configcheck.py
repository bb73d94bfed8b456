"""Checks of a schema-validated config (defaults filled) that a JSON schema cannot express.

Each problem names the config key at fault, so a bad config fails before any job runs.
"""
from pathlib import Path

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
    if m.get("checkpoint") and not Path(m["checkpoint"]).is_file():
        out.append(f"{key}.checkpoint: file {m['checkpoint']} does not exist")
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
    return out
