"""Every checkable config error is found before any job runs, one line each, naming the key
path, the bad value and what is expected: schema errors (configcheck.validate_config) and the
checks on the validated config (configcheck.problems), checkpoints against `arch` included,
read without loading their tensors."""
import argparse
import copy
import json
import os
import re

import pytest
import torch
from safetensors.torch import save_file

from conftest import ROOT, TINY_ARCH, validated
from vitlandscape import configcheck, schemaerrors
from vitlandscape.models.arch import build_mae
from vitlandscape.models.classifier import build_classifier, encoder_state
from vitlandscape.storage import checkpoint_header
from vitlandscape.storage.checkpoints import CheckpointError

SCHEMA = ROOT / "config" / "schema.yaml"
SUP_ARCH = {k: TINY_ARCH[k] for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads")}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """Checkpoints in released layouts, all trained with TINY_ARCH (embed_dim 32, depth 2), and data."""
    root = tmp_path_factory.mktemp("released")
    mae = build_mae(TINY_ARCH).state_dict()
    torch.save({"model": mae, "args": argparse.Namespace(norm_pix_loss=False)}, root / "mae_visualize.pth")
    torch.save({"model": encoder_state(mae)}, root / "mae_encoder.pth")
    torch.save({"model": {k: v for k, v in mae.items() if k != "blocks.1.attn.qkv.bias"}}, root / "no_qkv_bias.pth")
    torch.save({"student": {f"module.{k}": v for k, v in mae.items()},
                "teacher": {f"module.{k}": v for k, v in mae.items()}}, root / "rcmae_release.pth")
    torch.save({"model": build_classifier(TINY_ARCH, 10, "probe").state_dict()}, root / "linprobe.pth")
    save_file({k: v.contiguous() for k, v in build_classifier(SUP_ARCH, 10, "supervised").state_dict().items()},
              root / "model.safetensors")
    (root / "images").mkdir()
    return {name: str(root / name) for name in ("mae_visualize.pth", "mae_encoder.pth", "no_qkv_bias.pth",
                                                "rcmae_release.pth", "linprobe.pth", "model.safetensors", "images")}


def check(config: dict) -> list[str]:
    """What the workflow reports before any job: schema errors, else the config checks."""
    return schemaerrors.problems(config, SCHEMA) or configcheck.problems(config)


def tiny(config: dict, model: str, arch: dict | None = None, **entries) -> None:
    """Give `model` the tiny architecture (or `arch`) and `entries`."""
    config["models"][model] = {**config["models"][model], "arch": dict(arch or TINY_ARCH), **entries}


def at(path: str, value):
    def mutate(config, files):
        *parents, last = path.split(".")
        node = config
        for key in parents:
            node = node[key]
        node[last] = value(files) if callable(value) else copy.deepcopy(value)
    return mutate


def both(*mutations):
    def mutate(config, files):
        for m in mutations:
            m(config, files)
    return mutate


# (what is wrong, mutation, key path the line starts with, fragment of the value and expectation)
CASES = [
    # -- schema: unknown keys, types, enums, ranges --
    ("misspelt key", at("models.sup.pretrain", {"epoch": 3}), "models.sup.pretrain.epoch",
     "unknown key (did you mean epochs?); expected one of epochs, batch_size"),
    ("unknown top-level key", at("devcie", "cpu"), "devcie", "unknown key (did you mean device?)"),
    ("wrong type", at("data.image_size", "16"), "data.image_size", '"16" is a string; expected an integer'),
    ("unknown method", at("models.mae.method", "moco"), "models.mae.method",
     '"moco" is not allowed (did you mean mocov3?); expected one of mae, rcmae, mocov3, supervised'),
    ("unknown preset", at("models.mae.arch", "vit_base_patch15"), "models.mae.arch",
     '"vit_base_patch15" is not allowed (did you mean vit_base_patch16?); expected one of mae_vit_base_patch16'),
    ("arch of the wrong kind", at("models.mae.arch", 5), "models.mae.arch",
     "5 is not allowed; expected one of mae_vit_base_patch16, "),
    ("arch key missing", lambda c, f: c["models"]["sup"]["arch"].pop("depth"), "models.sup.arch.depth",
     "missing; this key is required"),
    ("embed_dim not a multiple of 4", at("models.sup.arch.embed_dim", 30), "models.sup.arch.embed_dim",
     "30 is not allowed; expected a multiple of 4"),
    ("grid of 0 points", at("landscape.beta", [-1.0, 1.0, 0]), "landscape.beta[2]",
     "0 is out of range; expected an integer >= 1"),
    ("axis of 2 items", at("landscape.line", [-1.0, 1.0]), "landscape.line",
     "[-1.0, 1.0] has 2 items; expected exactly 3 items: [min, max, number of points]"),
    ("tile of 0 points", at("landscape.tile", [11, 0]), "landscape.tile[1]",
     "0 is out of range; expected an integer >= 1"),
    ("eval_samples < 1", at("data.eval_samples", 0), "data.eval_samples",
     "0 is out of range; expected an integer >= 1"),
    ("mask ratio of 1", at("models.mae.mask_ratio", 1.0), "models.mae.mask_ratio",
     "1.0 is out of range; expected a number > 0 and < 1"),
    ("model name", at("models.mae-b", {"method": "mae", "arch": "mae_vit_base_patch16"}), "models.mae-b",
     '"mae-b" is not allowed as a name; expected a name matching ^[A-Za-z]'),
    ("model without settings", at("models.sup", None), "models.sup", "empty (null); expected a mapping"),
    ("unknown objective", at("models.mae.objectives", ["pretext", "loss"]), "models.mae.objectives[1]",
     '"loss" is not allowed; expected one of pretext, contrastive, probe, supervised, finetune'),
    # -- the grid --
    ("min >= max", at("landscape.alpha", [1.0, -1.0, 21]), "landscape.alpha",
     "[1.0, -1.0, 21] has min 1.0 >= max -1.0; expected [min, max, points] with min < max"),
    ("min == max with many points", at("landscape.interpolations", [
        {"name": "m", "start": "mae", "end": "rcmae", "objective": "pretext", "range": [0.5, 0.5, 3]}]),
     "landscape.interpolations[0].range", "has min 0.5 >= max 0.5; expected [min, max, points] with min < max"),
    # -- architectures and methods --
    ("image size not divisible by patch", at("models.sup.arch.patch_size", 5), "models.sup.arch.img_size",
     "16 is not a multiple of patch_size 5"),
    ("arch image size vs data", at("data.image_size", 32), "models.mae.arch.img_size",
     "is 16 but data.image_size is 32"),
    ("decoder settings on a supervised model", at("models.sup.arch.decoder_embed_dim", 32),
     "models.sup.arch.decoder_embed_dim", "32 is a decoder setting, which a supervised model does not have"),
    ("MAE preset on a supervised model", both(at("data.image_size", 224), at("models", {
        "sup": {"method": "supervised", "arch": "mae_vit_base_patch16"}}), at("figures.compare", []),
        at("metrics.claims", []), at("landscape.interpolations", [])), "models.sup.arch",
     "mae_vit_base_patch16 is an MAE preset with a decoder, which a supervised model does not have; "
     "expected one of vit_small_patch16"),
    ("objective the method lacks", at("models.sup.objectives", ["supervised", "probe"]), "models.sup.objectives",
     "probe not available for method supervised (choose from supervised)"),
    ("interpolation across architectures", at("models.rcmae.arch", dict(TINY_ARCH)),
     "landscape.interpolations[0] (mae_to_rcmae)", "mae and rcmae have different architectures"),
    ("comparison of a surface not configured", at("figures.compare", [
        {"name": "p", "surfaces": ["mae/pretext", "sup/probe"]}]), "figures.compare[0] (p)",
     "surface sup/probe is not computed (known: "),
    # -- trajectories --
    ("trajectory of an unknown model", at("trajectories.models", ["mae", "vit"]), "trajectories.models: vit",
     "is not a model (known: mae, rcmae, sup)"),
    ("trajectory of a given checkpoint", both(at("models.mae.checkpoint", lambda f: f["mae_visualize.pth"]),
                                              at("models.mae.arch", dict(TINY_ARCH))),
     "trajectories.models: mae", "its checkpoint is given (models.mae.checkpoint)"),
    ("probe trajectory of a supervised model", both(at("trajectories.models", ["sup"]),
                                                    at("trajectories.stages", ["probe"]), at("trajectories.compare", [])),
     "trajectories.models: sup", "is supervised: it has no probe stage to replay"),
    ("compared path not replayed", at("trajectories.compare", [["mae", "sup"]]), "trajectories.compare[0]",
     "sup is not in trajectories.models (mae, rcmae)"),
    ("snapshot schedule of two kinds", at("trajectories.snapshots", {"every": 5, "points": 4}),
     "trajectories.snapshots", "gives no schedule; expected {every: k} or"),
    # -- files --
    ("missing data path", both(at("data.dataset", "npz"), at("data.path", "/nonexistent/bars.npz")), "data.path",
     "/nonexistent/bars.npz does not exist"),
    ("data path of another layout", both(at("data.dataset", "imagefolder"), at("data.path", lambda f: f["images"])),
     "data.path", "is not a folder with train/<class>/ image folders"),
    ("missing checkpoint", at("models.mae.checkpoint", "/nonexistent/mae.pth"), "models.mae.checkpoint",
     "file /nonexistent/mae.pth does not exist"),
    ("encoder-only checkpoint for the pretext loss",
     lambda c, f: tiny(c, "mae", checkpoint=f["mae_encoder.pth"]), "models.mae.checkpoint",
     "the pretext loss needs the decoder"),
    # -- checkpoints against arch: official layouts, read without loading --
    ("embed_dim 48 for a checkpoint trained with 32",
     lambda c, f: tiny(c, "mae", dict(TINY_ARCH, embed_dim=48), checkpoint=f["mae_visualize.pth"]),
     "models.mae.arch.embed_dim", "48 does not match checkpoint "),
    ("depth of an RC-MAE release",
     lambda c, f: tiny(c, "rcmae", dict(TINY_ARCH, depth=3), checkpoint=f["rcmae_release.pth"]),
     "models.rcmae.arch.depth", "3 does not match checkpoint "),
    ("decoder width of an official MAE",
     lambda c, f: tiny(c, "mae", dict(TINY_ARCH, decoder_embed_dim=32), checkpoint=f["mae_visualize.pth"]),
     "models.mae.arch.decoder_embed_dim", "expected 16, as in the checkpoint"),
    ("patch size of a timm safetensors file",
     lambda c, f: tiny(c, "sup", dict(SUP_ARCH, patch_size=2), checkpoint=f["model.safetensors"]),
     "models.sup.arch.patch_size", "2 does not match checkpoint "),
    ("image size of a linear probe",
     lambda c, f: tiny(c, "mae", dict(TINY_ARCH, img_size=32), probe={"checkpoint": f["linprobe.pth"]})
     or c["data"].update(image_size=32), "models.mae.arch.img_size", "expected 16, as in the checkpoint"),
    ("encoder of a probe's pretrained checkpoint",
     lambda c, f: tiny(c, "mae", dict(TINY_ARCH, embed_dim=64), checkpoint=f["mae_encoder.pth"],
                       objectives=["probe"]) or c.update(landscape={}, figures={}, metrics={}),
     "models.mae.arch.embed_dim", "expected 32, as in the checkpoint"),
    ("tensor names that no dimension explains",
     lambda c, f: tiny(c, "mae", checkpoint=f["no_qkv_bias.pth"]), "models.mae.checkpoint",
     "missing keys: blocks.1.attn.qkv.bias"),
]


@pytest.mark.parametrize("what,mutate,path,fragment", CASES, ids=[c[0] for c in CASES])
def test_a_bad_config_gets_one_line_naming_key_value_and_expectation(default_config, files, what, mutate, path,
                                                                      fragment):
    config = copy.deepcopy(default_config)
    mutate(config, files)
    lines = check(config)
    named = [line for line in lines if line.startswith((f"{path}:", f"{path} "))]
    assert named and any(fragment in line for line in named), lines
    assert all("\n" not in line and "Failed validating" not in line and len(line) < 450 for line in lines)


def test_table_is_distinct_and_covers_the_issue():
    assert len(CASES) >= 20 and len({c[0] for c in CASES}) == len(CASES) == len({c[2:] for c in CASES})


def test_good_configs_have_no_problems(default_config, files):
    assert check(copy.deepcopy(default_config)) == []
    config = copy.deepcopy(default_config)
    tiny(config, "mae", checkpoint=files["mae_visualize.pth"], probe={"checkpoint": files["linprobe.pth"]})
    tiny(config, "rcmae", checkpoint=files["rcmae_release.pth"])
    tiny(config, "sup", SUP_ARCH, checkpoint=files["model.safetensors"])
    config["trajectories"] = {}  # given checkpoints: no training to replay
    assert check(config) == []
    config["models"]["mae"].update(checkpoint=files["mae_encoder.pth"], objectives=["probe"],
                                   arch=dict(TINY_ARCH, decoder_embed_dim=64))  # the encoder use needs no decoder
    config.update(figures={}, landscape={}, metrics={"ratio_map": {"alpha": [0.5, 0.5, 1]}})  # 1 point: min == max
    assert check(config) == []


def test_validate_config_fills_defaults_as_snakemake_does_and_raises_one_line_each(default_config):
    ours = copy.deepcopy(default_config)
    configcheck.validate_config(ours, SCHEMA)
    assert ours == validated(default_config)
    bare = {"models": {"a": {"method": "mae", "arch": "mae_vit_base_patch16"},
                       "b": {"method": "mae", "arch": "mae_vit_base_patch16"}}}
    configcheck.validate_config(bare, SCHEMA)
    assert bare["models"]["a"]["accuracy"] == ["probe", "finetune"]
    assert bare["models"]["a"]["accuracy"] is not bare["models"]["b"]["accuracy"]  # never the schema's object
    bad = copy.deepcopy(default_config)
    bad["data"].update(eval_samples=0, dataset="svhn")
    with pytest.raises(configcheck.ConfigError) as err:
        configcheck.validate_config(bad, SCHEMA)
    assert str(err.value).splitlines() == [
        "invalid config:",
        '  data.dataset: "svhn" is not allowed; expected one of digits, npz, imagefolder, cifar, fashion_mnist, mnist, cifar10, '
        'cifar100',
        "  data.eval_samples: 0 is out of range; expected an integer >= 1"]


# ---- checkpoints are read without loading their tensors ----

def with_peak_growth(run) -> tuple:
    """run()'s result, and the bytes by which the process's peak resident memory grew meanwhile (Linux)."""
    def status(key):
        with open("/proc/self/status") as f:
            return int(re.search(rf"{key}:\s+(\d+) kB", f.read()).group(1)) * 1024
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak (VmHWM) to the current resident size
    before = status("VmRSS")
    result = run()
    return result, status("VmHWM") - before


def vit_base_mae_config(path) -> dict:
    return {"data": {"image_size": 224}, "models": {"mae": {
        "method": "mae", "arch": "mae_vit_base_patch16", "checkpoint": str(path), "objectives": ["pretext"]}}}


def test_safetensors_checkpoint_is_read_from_its_header_alone(tmp_path):
    """A ViT-B MAE in safetensors (450 MB of tensors, a hole on disk): its header is all that is read."""
    with torch.device("meta"):
        state = build_mae("mae_vit_base_patch16").state_dict()
    header, offset = {}, 0
    for name, tensor in state.items():
        size = tensor.numel() * 4
        header[name] = {"dtype": "F32", "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    path = tmp_path / "mae_vit_base.safetensors"
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        f.truncate(8 + len(text) + offset)
    config = vit_base_mae_config(path)
    configcheck.validate_config(config, SCHEMA)
    problems, growth = with_peak_growth(lambda: configcheck.problems(config))
    assert problems == [] and growth < 100e6
    config["models"]["mae"]["arch"] = "mae_vit_large_patch16"
    assert "models.mae.arch.embed_dim: 1024 does not match checkpoint" in configcheck.problems(config)[0]
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 4)
    with pytest.raises(CheckpointError, match="is truncated: its header describes"):
        checkpoint_header.read(path)


def test_torch_checkpoint_is_memory_mapped(tmp_path):
    """An official-layout checkpoint with 256 MB of optimizer state: its tensors stay on disk."""
    path = tmp_path / "mae_pretrain_full.pth"
    mae = build_mae(TINY_ARCH).state_dict()
    torch.save({"model": mae, "optimizer": {"state": {0: {"exp_avg": torch.ones(64 * 2 ** 20)}}}}, path)
    config = {"models": {"mae": {"method": "mae", "arch": dict(TINY_ARCH), "checkpoint": str(path)}}}
    configcheck.validate_config(config, SCHEMA)
    problems, growth = with_peak_growth(lambda: configcheck.problems(config))
    assert problems == [] and growth < 100e6
