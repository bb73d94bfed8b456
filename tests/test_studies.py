"""Studies in config: variants as models, what they share, the checks before any job, and what
a study plans (dry runs)."""
import copy

import pytest
import yaml

from conftest import ROOT, planned_jobs, validated
from vitlandscape import configcheck, studies


def with_studies(config: dict, *specs: dict) -> dict:
    config = copy.deepcopy(config)
    config["studies"] = list(specs)
    return validated(config)


SEEDS = {"name": "seeds", "models": ["mae", "sup"], "vary": {"seed": [0, 1]}, "direction_seeds": [0, 2]}
BATCH = {"name": "batch", "models": ["mae"], "vary": {"pretrain.batch_size": [64, 128], "seed": [0, 1]}}


def test_variants_are_named_by_what_differs_from_their_base(default_config):
    config = with_studies(default_config, SEEDS, BATCH)
    names = [v.name for v in studies.study_variants(config, config["studies"][0])]
    assert names == ["mae", "mae.directions=2", "mae.seed=1", "mae.seed=1.directions=2",
                     "sup", "sup.directions=2", "sup.seed=1", "sup.seed=1.directions=2"]
    batch = studies.study_variants(config, config["studies"][1])
    # batch 128 is the base's own: that variant is the base (and mae.seed=1 the seeds study's)
    assert [v.name for v in batch] == ["mae.pretrain.batch_size=64", "mae.pretrain.batch_size=64.seed=1",
                                       "mae", "mae.seed=1"]
    assert [v.setting for v in batch] == ["64", "64", "128", "128"]
    added = studies.variants(config)
    assert "mae" not in added and sorted(added) == sorted(
        {"mae.directions=2", "mae.seed=1", "mae.seed=1.directions=2", "sup.directions=2", "sup.seed=1",
         "sup.seed=1.directions=2", "mae.pretrain.batch_size=64", "mae.pretrain.batch_size=64.seed=1"})


def test_a_variant_changes_only_its_setting_and_shares_its_training(default_config):
    config = with_studies(default_config, BATCH, {"name": "evals", "models": ["mae"], "eval_seeds": [0, 5],
                                                  "direction_seeds": [0, 3]})
    added = studies.variants(config)
    v = added["mae.pretrain.batch_size=64.seed=1"]
    expected = copy.deepcopy(config["models"]["mae"])
    expected["pretrain"]["batch_size"], expected["seed"] = 64, 1
    assert v.model == expected and v.trains
    other = added["mae.directions=3.eval=5"]
    assert (other.trained_as, other.measured_as, other.direction_seed, other.eval_seed) == (
        "mae", "mae.eval=5", 3, 5)
    assert not other.trains and other.model == config["models"]["mae"]
    assert added["mae.eval=5"].direction_seed == config["landscape"]["direction_seed"]


def test_an_official_default_is_the_base_not_a_variant(default_config):
    """`sam: none` is what the recipe uses when it says nothing: that variant is the base."""
    config = with_studies(default_config, {"name": "sam", "models": ["mae"],
                                           "vary": {"pretrain.recipe.sam": ["none", "asam"]}})
    assert [v.name for v in studies.study_variants(config, config["studies"][0])] == [
        "mae", "mae.pretrain.recipe.sam=asam"]


def test_training_columns_say_whether_the_lr_follows_the_batch(default_config):
    config = with_studies(default_config, BATCH)
    mae = config["models"]["mae"]
    small = studies.training_columns(studies.study_variants(config, config["studies"][0])[0].model)
    assert small["pretrain_batch_size"] == 64 and small["lr_follows_batch"]
    assert small["pretrain_lr"] == pytest.approx(mae["pretrain"]["blr"] * 64 / 256)
    fixed = copy.deepcopy(mae)
    fixed["pretrain"].update(lr=1e-3, blr=None)
    assert not studies.training_columns(fixed)["lr_follows_batch"]
    rcmae = copy.deepcopy(config["models"]["rcmae"])
    rcmae["ema_batch_reference"] = 64
    assert studies.training_columns(rcmae)["ema_momentum_used"] == pytest.approx(0.99 ** 2)


@pytest.mark.parametrize("spec, expected", [
    ({"name": "s", "models": ["mae"], "vary": {"pretrain.recipe.nope": [1]}},
     "studies[0] (s).vary.pretrain.recipe.nope: pretrain.recipe.nope is not a setting of a model"),
    ({"name": "s", "models": ["sup"], "vary": {"ema_momentum": [0.9]}},
     "studies[0] (s).vary.ema_momentum: ema_momentum is an RC-MAE setting; models.sup is method supervised"),
    ({"name": "s", "models": ["sup"], "vary": {"probe.epochs": [3]}},
     "studies[0] (s).vary.probe.epochs: probe.epochs is a self-supervised model's downstream stage; models.sup is method supervised"),
    ({"name": "s", "models": ["mae"], "vary": {"moco.temperature": [0.1]}},
     "studies[0] (s).vary.moco.temperature: moco.temperature is a MoCo v3 setting; models.mae is method mae"),
    ({"name": "s", "models": ["mae"], "vary": {"pretrain.batch_size": ["big"]}},
     "studies[0] (s).vary.pretrain.batch_size: 'big': pretrain.batch_size: \"big\" is a string; expected an integer"),
    ({"name": "s", "models": ["mae"], "vary": {"method": ["rcmae"]}},
     "studies[0] (s).vary.method: method is not a training setting"),
    ({"name": "s", "models": ["vit"], "vary": {"seed": [1]}}, "studies[0] (s).models: vit is not a model"),
    ({"name": "s", "models": ["mae"]}, "studies[0] (s): varies nothing"),
    ({"name": "s", "models": ["mae"], "vary": {"seed": [1], "mask_ratio": [0.5], "norm_pix_loss": [True]}},
     "studies[0] (s).vary: mask_ratio, norm_pix_loss: one setting at most besides seed"),
])
def test_bad_studies_are_refused_naming_the_key(default_config, spec, expected):
    problems = configcheck.problems(with_studies(default_config, spec))
    assert any(p.startswith(expected) for p in problems), problems


def test_a_name_clash_and_a_bad_variant_are_refused(default_config):
    problems = configcheck.problems(with_studies(default_config, SEEDS, {**SEEDS, "models": ["mae"]}))
    assert any(p.startswith("studies[1] (seeds).name: another study is called seeds") for p in problems)
    odd = configcheck.problems(with_studies(default_config, {"name": "odd", "models": ["mae"],
                                                             "vary": {"mask_ratio": [0.999]}}))
    assert any("variant mae.mask_ratio=0.999 of study odd" in p and "keeps no patch" in p for p in odd), odd


def test_the_example_studies_are_valid(default_config):
    config = copy.deepcopy(default_config)
    config.update(yaml.safe_load((ROOT / "config/studies.yaml").read_text()))
    assert configcheck.problems(validated(config)) == []


def plan(tmp_path, config):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return planned_jobs(tmp_path, "--configfile", str(path), snakefile_dir=ROOT)


@pytest.mark.subprocess
def test_a_study_plans_its_variants_chains_and_nothing_of_its_bases(tmp_path, default_config):
    """Without results: a seed study adds one pretraining per new seed and model, a probe for
    MAE's, directions and tiles per direction seed, Hessians only per training (not per
    direction pair), and its tables and figures."""
    config = copy.deepcopy(default_config)
    config["studies"] = [{"name": "seeds", "models": ["mae", "sup"], "vary": {"seed": [0, 1]},
                         "direction_seeds": [0, 2]}]
    jobs = plan(tmp_path, config)
    base = plan(tmp_path, default_config)
    added = [job for job in jobs if job not in base]
    by_rule = {}
    for rule, w in added:
        by_rule.setdefault(rule, []).append(w.get("model") or w.get("variant") or w.get("study"))
    assert sorted(by_rule["pretrain"]) == ["mae.seed=1", "sup.seed=1"]
    assert by_rule["downstream"] == ["mae.seed=1"]  # the probe; no fine-tuning for a variant
    assert sorted(set(by_rule["directions"])) == ["mae.directions=2", "mae.seed=1", "mae.seed=1.directions=2",
                                                  "sup.directions=2", "sup.seed=1", "sup.seed=1.directions=2"]
    assert sorted(set(by_rule["hessian"])) == ["mae.seed=1", "sup.seed=1"]
    assert by_rule["study_tables"] == ["seeds"] and by_rule["study_measures_figure"] == ["seeds"]
    assert sorted(w["objective"] for r, w in added if r == "study_contours_figure") == ["pretext", "probe",
                                                                                        "supervised"]
    # the variants' surfaces: 3 of MAE (2 objectives each) and 3 of the supervised ViT
    assert len([1 for r, _ in added if r == "variant_metrics"]) == 3 * 2 + 3
