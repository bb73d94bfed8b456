"""Config: the default validates; bad configs fail with a message that names the key."""
import copy
import subprocess
import sys

import pytest
import yaml
from snakemake.exceptions import WorkflowError

from conftest import ROOT, validated
from vitlandscape import configcheck, methods


def test_default_config_is_valid_and_defaults_are_filled(default_config):
    config = validated(default_config)
    assert configcheck.problems(config) == []
    assert config["landscape"]["alpha"] == [-1.0, 1.0, 21]
    assert config["models"]["rcmae"]["downstream_weights"] == "teacher"
    assert config["models"]["mae"]["norm_pix_loss"] is False
    assert methods.objectives(config["models"]["mae"]) == ["pretext", "probe"]
    assert methods.objectives(config["models"]["sup"]) == ["supervised"]


def _set(path, value):
    def mutate(config):
        *parents, last = path.split(".")
        node = config
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return mutate


def _delete(path):
    def mutate(config):
        *parents, last = path.split(".")
        node = config
        for key in parents:
            node = node[key]
        del node[last]
    return mutate


SCHEMA_ERRORS = [
    (_set("models.mae.pretrain", {"epoch": 3}), ["'epoch' was unexpected", "['models']['mae']['pretrain']"]),
    (_set("models.mae.method", "moco"), ["'moco' is not one of", "['models']['mae']['method']"]),
    (_set("data.dataset", "svhn"), ["'svhn' is not one of", "['data']['dataset']"]),
    (_set("data.image_size", "16"), ["'16' is not of type 'integer'", "['data']['image_size']"]),
    (_set("models.mae.mask_ratio", 1.0), ["mask_ratio", "1.0"]),
    (_set("models.mae.pretrain.lr", -1), ["-1 is less than or equal to the minimum of 0"]),
    (_set("models.mae.arch", "vit_gigantic"), ["vit_gigantic", "['models']['mae']['arch']"]),
    (_set("models.mae.objectives", ["pretext", "loss"]), ["'loss' is not one of"]),
    (_set("models.bad-name", {"method": "mae", "arch": "mae_vit_base_patch16"}), ["bad-name"]),
    (_set("landscape.alpha", [-1, 1]), ["['landscape']['alpha']"]),
    (_set("landscape.tile", [0, 5]), ["['landscape']['tile']"]),
    (_set("landscape.normalization", "batch"), ["'batch' is not one of", "['landscape']['normalization']"]),
    (_set("device", "tpu"), ["'tpu' is not one of", "['device']"]),
    (_set("colour", "red"), ["'colour' was unexpected"]),
    (_delete("models.sup.arch"), ["'arch' is a required property", "['models']['sup']"]),
    (_set("models", {}), ["should be non-empty", "['models']"]),
    (_set("figures.compare", [{"name": "x", "surfaces": ["mae/pretext"]}]), ["is too short"]),
]


@pytest.mark.parametrize("mutate,fragments", SCHEMA_ERRORS)
def test_schema_errors_name_the_key(default_config, mutate, fragments):
    config = copy.deepcopy(default_config)
    mutate(config)
    with pytest.raises(WorkflowError) as err:
        validated(config)
    for fragment in fragments:
        assert fragment in str(err.value)


CHECK_ERRORS = [
    (_set("models.mae.arch.img_size", 32), "models.mae.arch.img_size is 32 but data.image_size is 16"),
    (_set("models.mae.arch.patch_size", 5), "models.mae.arch.img_size 16 is not a multiple of patch_size 5"),
    (_set("models.mae.arch.num_heads", 3), "models.mae.arch.embed_dim 64 is not divisible by num_heads 3"),
    (_set("models.sup.objectives", ["pretext"]), "models.sup.objectives: pretext not available for method supervised"),
    (_set("models.mae.objectives", ["supervised"]),
     "models.mae.objectives: supervised not available for method mae (choose from finetune, pretext, probe)"),
    (_set("models.mae.checkpoint", "/nonexistent/mae.pth"), "models.mae.checkpoint: file /nonexistent/mae.pth does not exist"),
    (_set("data.dataset", "npz"), "data.path is required for data.dataset 'npz'"),
    (_set("data.path", "/nonexistent/data.npz"), None),
    (_set("models.mae.mask_ratio", 0.99), "models.mae.mask_ratio 0.99 keeps no patch of 16"),
    (_set("figures.compare", [{"name": "p", "surfaces": ["mae/pretext", "rcmae/supervised"]}]),
     "figures.compare[0] (p): surface rcmae/supervised is not computed (known: mae/pretext, mae/probe, "
     "rcmae/pretext, rcmae/probe, sup/supervised)"),
    (_set("models.sup.objectives", ["supervised", "pretext", "probe"]),
     "models.sup.objectives: pretext, probe not available for method supervised (choose from supervised)"),
    (_set("models.rcmae.arch", {"img_size": 16, "patch_size": 4, "embed_dim": 8, "depth": 1, "num_heads": 2}),
     "models.rcmae.arch needs decoder_embed_dim, decoder_depth, decoder_num_heads for method rcmae"),
    (_set("models.rcmae.arch.decoder_num_heads", 3),
     "models.rcmae.arch.decoder_embed_dim is not divisible by decoder_num_heads"),
    (_set("models.rcmae.arch", "mae_vit_base_patch16"), "models.rcmae.arch.img_size is 224 but data.image_size is 16"),
    (_set("models.mae.arch", "vit_base_patch16"),
     "models.mae.arch needs decoder_embed_dim, decoder_depth, decoder_num_heads for method mae"),
    (_set("models.rcmae.arch.img_size", 18), "models.rcmae.arch.img_size 18 is not a multiple of patch_size 4"),
    (lambda c: _set("models.mae.arch.img_size", 18)(c) or _set("models.mae.mask_ratio", 0.95)(c),
     "models.mae.mask_ratio 0.95 keeps no patch of 16"),
    (lambda c: _set("data.dataset", "npz")(c) or _set("data.path", "/nonexistent/data.npz")(c),
     "data.path: /nonexistent/data.npz does not exist"),
    (_set("landscape.interpolations", [{"name": "x", "start": "mae", "end": "moco", "objective": "pretext"}]),
     "landscape.interpolations[0] (x).end: 'moco' is not a model of this config (models: mae, rcmae, sup)"),
    (_set("landscape.interpolations", [{"name": "i", "start": "mae", "end": "x", "objective": "pretext"},
                                       {"name": "y", "start": "mae", "end": "sup", "objective": "pretext"}]),
     "landscape.interpolations[1] (y).objective: pretext not available for model sup"),
    (_set("landscape.interpolations", [{"name": "z", "start": "mae", "end": "sup", "objective": "probe"}]),
     "landscape.interpolations[0] (z).objective: probe not available for model sup"),
    (lambda c: _set("models.rcmae.arch", dict(c["models"]["mae"]["arch"], depth=2))(c) or _set(
        "landscape.interpolations", [{"name": "w", "start": "mae", "end": "rcmae", "objective": "pretext"}])(c),
     "landscape.interpolations[0] (w): mae and rcmae have different architectures"),
    (_set("metrics.sharpness_rho", [0.5, 1.5]), "metrics.sharpness_rho: 1.5 is beyond the surface grid"),
    (_set("metrics.claims", [{"name": "c", "claim": "x", "wider": "mae/pretext", "than": "sup/finetune",
                              "measures": ["basin_radius_r0.5"]}]),
     "metrics.claims[0] (c).than: surface sup/finetune is not computed"),
    (_set("metrics.claims", [{"name": "c", "claim": "x", "wider": "mae/pretext", "than": "sup/supervised",
                              "measures": ["basin_radius_r0.3"]}]),
     "metrics.claims[0] (c).measures: basin_radius_r0.3 is not measured"),
    (lambda c: _set("metrics.hessian.enabled", False)(c),
     "metrics.claims[1] (rcmae_convex_region_pretext).measures: ratio_min_max is not measured"),
]


@pytest.mark.parametrize("mutate,fragment", CHECK_ERRORS)
def test_semantic_errors_name_the_key(default_config, mutate, fragment):
    config = copy.deepcopy(default_config)
    mutate(config)
    if fragment is None:  # a path given to digits is ignored, not an error
        assert configcheck.problems(validated(config)) == []
        return
    problems = configcheck.problems(validated(config))
    assert any(fragment in problem for problem in problems), problems


def test_problems_are_all_reported_and_good_edge_cases_pass(default_config):
    config = copy.deepcopy(default_config)
    config["models"]["mae"]["arch"]["img_size"] = 32  # an arch that mae and rcmae share (a YAML anchor)
    config["models"]["sup"]["arch"]["num_heads"] = 3
    assert len(configcheck.problems(validated(config))) == 3
    config = copy.deepcopy(default_config)
    config["models"]["mae"]["mask_ratio"] = 0.9375  # keeps exactly 1 of 16 patches
    config["models"]["rcmae"]["arch"]["decoder_num_heads"] = 1
    config["data"]["path"] = "/nonexistent"  # digits ships with scikit-learn: no path needed
    assert configcheck.problems(validated(config)) == []


def test_supervised_presets(default_config):
    config = copy.deepcopy(default_config)
    config["data"]["image_size"] = 224
    config["models"] = {"deit_b": {"method": "supervised", "arch": "vit_base_patch16"},
                        "mae_b": {"method": "mae", "arch": "mae_vit_base_patch16"}}
    config["figures"]["compare"] = []
    config["metrics"]["claims"] = []
    config["landscape"]["interpolations"] = []
    config["trajectories"] = {}
    assert configcheck.problems(validated(config)) == []


def test_arch_without_decoder_for_mae(default_config):
    config = copy.deepcopy(default_config)
    config["models"]["mae"]["arch"] = {k: 16 if k == "img_size" else 4 for k in
                                       ("img_size", "patch_size", "embed_dim", "depth", "num_heads")}
    assert ("models.mae.arch needs decoder_embed_dim, decoder_depth, decoder_num_heads for method mae"
            in configcheck.problems(validated(config)))


@pytest.mark.subprocess
def test_workflow_refuses_a_bad_config_before_any_job(tmp_path, default_config):
    config = copy.deepcopy(default_config)
    config["models"]["rcmae"]["arch"]["img_size"] = 32
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    run = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(bad),
                          "--directory", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode != 0
    assert "models.rcmae.arch.img_size is 32 but data.image_size is 16" in run.stdout + run.stderr
    assert not (tmp_path / "results").exists()
