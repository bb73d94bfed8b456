"""The cost planner: FLOPs counted by hand agree with torch's count of the real model."""
import json
import subprocess
import sys

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from conftest import ROOT, TINY_ARCH, model_settings, validated
from vitlandscape import plan
from vitlandscape.data import prepare
from vitlandscape.landscape import throughput
from vitlandscape.models.arch import build_mae
from vitlandscape.models.classifier import build_classifier


def counted_flops(model, *inputs) -> int:
    """Matmul and convolution FLOPs that torch counts, attention on its math path (there it
    is made of matmuls; the fused kernels are invisible to the counter on the CPU)."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(*inputs)
    return counter.get_total_flops()


@pytest.mark.parametrize("mask_ratio", [0.75, 0.5])
def test_pretext_flops_equal_torchs_count(mask_ratio):
    model = build_mae(TINY_ARCH).eval()
    counted = counted_flops(model, torch.randn(3, 3, 16, 16), mask_ratio, torch.rand(3, 16))
    expected = plan.flops_per_image(model_settings(mask_ratio=mask_ratio), "pretext", 10)
    assert counted == 3 * expected


@pytest.mark.parametrize("head", ["probe", "finetune", "supervised"])
def test_classifier_flops_equal_torchs_count(head):
    model = build_classifier(TINY_ARCH, 7, head).eval()
    counted = counted_flops(model, torch.randn(2, 3, 16, 16))
    assert counted == 2 * plan.flops_per_image(model_settings(), head, 7)


def test_vit_base_counts_by_hand():
    """ViT-B/16 at 224 px (hand counts: 35.1 GFLOP classification, 19.6 GFLOP pretext at 0.75)."""
    base = {"arch": "mae_vit_base_patch16", "mask_ratio": 0.75}
    # blocks: 197 tokens x (12 x 768^2 + 2 x 197 x 768) x 12; patch embedding 196 x 768^2; head 768 x 1000
    classify = 2 * (12 * 197 * (12 * 768 ** 2 + 2 * 197 * 768) + 196 * 768 ** 2 + 768 * 1000)
    assert plan.flops_per_image(base, "supervised", 1000) == classify
    assert round(classify / 1e9, 1) == 35.1
    assert round(plan.flops_per_image(base, "pretext", 1000) / 1e9, 1) == 19.6


def test_plan_of_a_config(default_config):
    config = validated(default_config)
    config["landscape"].update(alpha=[-1, 1, 51], beta=[-1, 1, 51], tile=[17, 20])
    config["data"]["eval_samples"] = 256
    result = plan.plan(config, tflops=100.0, num_classes=10)
    by_name = {s["name"]: s for s in result["surfaces"]}
    assert set(by_name) == {"mae/pretext", "mae/probe", "rcmae/pretext", "rcmae/probe", "sup/supervised",
                            "mae/pretrain path plane", "rcmae/pretrain path plane"}
    s = by_name["mae/probe"]
    assert (s["points"], s["tiles"], s["images"]) == (51 * 51, 9, 256)
    assert s["total_flops"] == s["flops_per_image"] * 256 * 2601
    assert s["gpu_hours"] == pytest.approx(s["total_flops"] / 100e12 / 3600)
    assert s["tile_gpu_hours"] == pytest.approx(s["flops_per_image"] * 256 * 17 * 20 / 100e12 / 3600)
    assert result["total_gpu_hours"] == pytest.approx(sum(x["gpu_hours"] for x in result["surfaces"]))


def test_metrics_cost_counted_by_hand(default_config):
    """Hessian: 30 Lanczos steps + 3 + 1 residual products + 6 probes + 1 x 16 density steps = 56
    products at 11 forwards each; flatness: 1 + 5 samples x 3 sigmas = 16 evaluations; a 3 x 3
    ratio map of 20-step Lanczos runs adds 9 x 22 products."""
    config = validated(default_config)
    config["data"]["eval_samples"] = 256
    config["metrics"]["hessian"].update(lanczos_steps=30, top_k=3, trace_probes=6, density_runs=1, density_steps=16)
    config["metrics"]["ratio_map"].update(enabled=True, alpha=[-1, 1, 3], beta=[-1, 1, 3], lanczos_steps=20)
    result = plan.plan(config, tflops=100.0, num_classes=10)
    by_name = {m["name"]: m for m in result["metrics"]}
    sup = by_name["sup/supervised"]
    assert (sup["hessian_products"], sup["flatness_evaluations"], sup["ratio_map_products"]) == (56, 16, 198)
    per_image = plan.flops_per_image(config["models"]["sup"], "supervised", 10)
    assert sup["total_flops"] == per_image * 256 * (11 * (56 + 198) + 16)
    assert sup["gpu_hours"] == pytest.approx(sup["total_flops"] / 100e12 / 3600)
    assert result["total_metrics_gpu_hours"] == pytest.approx(sum(m["gpu_hours"] for m in result["metrics"]))
    config["metrics"]["hessian"]["enabled"] = config["metrics"]["flatness"]["enabled"] = False
    config["metrics"]["ratio_map"]["enabled"] = False
    assert all(m["total_flops"] == 0 for m in plan.plan(config, 100.0, 10)["metrics"])


# Tiny ViT (TINY_ARCH: 16 px, patch 4 -> 16 patches of 4*4*3 = 48 values; width 32, 2 blocks; decoder
# 16 wide, 1 block) with 7 classes, counted by hand in multiply-adds. A block on T tokens of width w:
# T * (3 w^2 qkv + w^2 projection + 8 w^2 MLP) + 2 T^2 w attention.
TINY_ENCODER = 16 * 48 * 32 + 2 * (17 * 12 * 32 ** 2 + 2 * 17 ** 2 * 32)  # all 16 patches + cls
TINY_HEAD = 32 * 7
# mask 0.75 keeps 4 patches (+ cls = 5 tokens); the decoder embeds 5, decodes and predicts 17 tokens
TINY_PRETEXT = (16 * 48 * 32 + 2 * (5 * 12 * 32 ** 2 + 2 * 5 ** 2 * 32)
                + 5 * 32 * 16 + (17 * 12 * 16 ** 2 + 2 * 17 ** 2 * 16) + 17 * 16 * 48)


def tiny_config(**models) -> dict:
    """A validated config of tiny models (stage epochs pretrain 2, probe 3, finetune 5) on digits."""
    stages = {"pretrain": {"epochs": 2}, "probe": {"epochs": 3}, "finetune": {"epochs": 5}}
    entries = {name: {"arch": dict(TINY_ARCH) if method != "supervised" else
                      {k: TINY_ARCH[k] for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads")},
                      **stages, **extra, "method": method}
               for name, (method, extra) in models.items()}
    return validated({"data": {"image_size": 16}, "models": entries})


def test_training_flops_counted_by_hand():
    config = tiny_config(m=("mae", {}), r=("rcmae", {"probe": {"epochs": 3, "features": "cached"}}),
                         s=("supervised", {}))
    result = plan.plan(config, tflops=2.0, num_classes=7, train_images=100)
    by_name = {t["name"]: t for t in result["training"]}
    mac = 2  # FLOPs per multiply-add
    assert by_name["m/pretrain"]["flops"] == 2 * 100 * 3 * mac * TINY_PRETEXT  # forward + backward = 3 forwards
    assert by_name["r/pretrain"]["flops"] == 2 * 100 * 4 * mac * TINY_PRETEXT  # + the teacher's forward
    # streaming probe: the encoder every epoch; cached: once; the head trains every epoch
    assert by_name["m/probe"]["flops"] == 100 * (3 * mac * TINY_ENCODER + 3 * 3 * mac * TINY_HEAD)
    assert by_name["r/probe"]["flops"] == 100 * (1 * mac * TINY_ENCODER + 3 * 3 * mac * TINY_HEAD)
    assert by_name["m/finetune"]["flops"] == 5 * 100 * 3 * mac * (TINY_ENCODER + TINY_HEAD)
    assert by_name["r/finetune"]["flops"] == by_name["m/finetune"]["flops"]  # no teacher after pretraining
    assert by_name["s/pretrain"]["flops"] == 2 * 100 * 3 * mac * (TINY_ENCODER + TINY_HEAD)
    assert set(by_name) == {"m/pretrain", "m/probe", "m/finetune", "r/pretrain", "r/probe", "r/finetune",
                            "s/pretrain"}
    assert [(t["images"], t["epochs"]) for t in result["training"]] == [
        (100, 2), (100, 3), (100, 5), (100, 2), (100, 3), (100, 5), (100, 2)]
    for t in result["training"]:
        assert t["gpu_hours"] == pytest.approx(t["flops"] / 2e12 / 3600)
    assert result["total_training_gpu_hours"] == pytest.approx(sum(t["gpu_hours"] for t in result["training"]))


def test_trajectory_replays_and_path_planes_are_counted():
    config = tiny_config(m=("mae", {}), r=("rcmae", {}))
    config["trajectories"].update(models=["m", "r"], stages=["pretrain", "finetune"], alpha=[-1.0, 1.0, 5],
                                  beta=[-1.0, 1.0, 4], tile=[3, 4])
    result = plan.plan(config, tflops=2.0, num_classes=7, train_images=100)
    training = {t["name"]: t["flops"] for t in result["training"]}
    mac = 2
    for name, per_epoch_image in (("m", 3 * mac * TINY_PRETEXT), ("r", 4 * mac * TINY_PRETEXT)):
        assert training[f"{name}/pretrain replay"] == training[f"{name}/pretrain"] == 2 * 100 * per_epoch_image
    assert training["r/finetune replay"] == 5 * 100 * 3 * mac * (TINY_ENCODER + TINY_HEAD)
    planes = {s["name"]: s for s in result["surfaces"] if "plane" in s["name"]}
    assert set(planes) == {"m/pretrain path plane", "r/pretrain path plane", "m/finetune path plane",
                           "r/finetune path plane"}
    eval_images = config["data"]["eval_samples"]
    assert planes["m/pretrain path plane"]["total_flops"] == 20 * eval_images * mac * TINY_PRETEXT
    assert planes["m/pretrain path plane"]["tiles"] == 2 and planes["m/finetune path plane"]["objective"] == "finetune"


def test_given_checkpoints_skip_their_stages():
    config = tiny_config(given=("mae", {"checkpoint": "mae.pth"}),
                         probed=("rcmae", {"probe": {"checkpoint": "probe.pth"}}),
                         tuned=("mae", {"finetune": {"checkpoint": "finetune.pth"}}),
                         done=("mae", {"checkpoint": "a.pth", "probe": {"checkpoint": "b.pth"},
                                       "finetune": {"checkpoint": "c.pth"}}),
                         sup=("supervised", {"checkpoint": "deit.pth"}))
    names = [t["name"] for t in plan.plan(config, num_classes=7, train_images=100)["training"]]
    assert names == ["given/probe", "given/finetune", "probed/pretrain", "probed/finetune",
                     "tuned/pretrain", "tuned/probe"]


def test_stages_neither_the_accuracy_table_nor_a_landscape_needs_are_not_trained():
    config = tiny_config(vis=("mae", {"checkpoint": "v.pth", "objectives": ["pretext"], "accuracy": []}),
                         probe_only=("mae", {"accuracy": ["probe"]}),
                         tuned_surface=("mae", {"accuracy": [], "objectives": ["finetune"]}))
    names = [t["name"] for t in plan.plan(config, num_classes=7, train_images=100)["training"]]
    assert names == ["probe_only/pretrain", "probe_only/probe", "tuned_surface/pretrain", "tuned_surface/finetune"]


@pytest.mark.parametrize("test_fraction", [0.2, 0.3])
def test_digits_training_images_are_those_of_the_split(test_fraction):
    config = tiny_config(m=("mae", {}))
    config["data"]["test_fraction"] = test_fraction
    assert plan.plan(config)["training"][0]["images"] == len(prepare.prepare(config["data"])["train_images"])


def test_training_images_of_other_data_sets():
    config = tiny_config(m=("mae", {}))
    config["data"].update(dataset="imagefolder", path="imagenet")
    assert plan.plan(config)["training"][0]["images"] == 1_281_167  # ImageNet-1k's training split
    config["data"]["dataset"] = "npz"
    with pytest.raises(plan.PlanError, match="--train-images"):
        plan.plan(config)
    assert plan.plan(config, train_images=50)["training"][0]["images"] == 50
    config["models"]["m"].update(checkpoint="m.pth", probe={**config["models"]["m"]["probe"], "checkpoint": "p.pth"},
                                 finetune={**config["models"]["m"]["finetune"], "checkpoint": "f.pth"})
    assert plan.plan(config)["training"] == []  # nothing trains: the count is not needed


def test_measured_rates_replace_the_assumed_one():
    config = tiny_config(m=("mae", {}), s=("supervised", {}))
    ips = {("m", "pretext"): 400.0, ("m", "probe"): 300.0, ("m", "finetune"): 200.0, ("s", "supervised"): 100.0}
    result = plan.plan(config, num_classes=7, train_images=100,
                       measured={"device": "cpu, 1 threads", "precision": "fp32", "images_per_s": ips})
    assert (result["tflops"], result["device"], result["precision"]) == (None, "cpu, 1 threads", "fp32")
    by_name = {s["name"]: s for s in result["surfaces"] + result["training"]}
    pretext = 2 * TINY_PRETEXT * 400 / 1e12  # TFLOP/s achieved
    assert (by_name["m/pretext"]["measured_images_per_s"], by_name["m/pretext"]["measured_tflops"]) == (400, pretext)
    # a surface takes images x points / (images/s); a training stage runs at its forward's rate
    s = by_name["s/supervised"]
    assert s["gpu_hours"] == pytest.approx(s["images"] * s["points"] / 100 / 3600)
    assert by_name["m/pretrain"]["gpu_hours"] == pytest.approx(by_name["m/pretrain"]["flops"] / (pretext * 1e12) / 3600)
    assert by_name["m/finetune"]["tflops"] == 2 * (TINY_ENCODER + TINY_HEAD) * 200 / 1e12
    assert by_name["m/probe"]["tflops"] == 2 * (TINY_ENCODER + TINY_HEAD) * 300 / 1e12
    assert by_name["s/pretrain"]["tflops"] == s["measured_tflops"]


def test_images_per_s_times_the_passes_after_the_warm_up(monkeypatch):
    """On a clock that advances 0.25 s a pass: 3 warm-up passes, then the 4 that fill 1 s."""
    clock, passes = [0.0], []

    def run():
        clock[0] += 0.25
        passes.append(clock[0])

    monkeypatch.setattr(throughput, "perf_counter", lambda: clock[0])
    rate = throughput.images_per_s(run, 8, torch.device("cpu"), "fp32", 1.0)
    assert len(passes) == 3 + 4 and rate == 4 * 8 / 1.0


def test_measure_times_each_distinct_forward_once(monkeypatch):
    config = tiny_config(m=("mae", {}), r=("rcmae", {}), half=("mae", {"mask_ratio": 0.5}))
    timed = []
    monkeypatch.setattr(throughput, "images_per_s", lambda *args: timed.append(args) or float(len(timed)))
    measured = throughput.measure(config, plan.forwards(config), 7, "cpu", batch_size=2)
    rates = measured["images_per_s"]
    assert rates["m", "pretext"] == rates["r", "pretext"] != rates["half", "pretext"]  # same model, other mask
    assert rates["m", "probe"] == rates["r", "probe"] == rates["half", "probe"]
    assert len(timed) == len(set(rates.values())) == 4  # pretext x 2 mask ratios, probe, finetune
    assert set(rates) == {(n, o) for n in ("m", "r", "half") for o in ("pretext", "probe", "finetune")}
    assert (measured["precision"], measured["device"]) == ("fp32", f"cpu, {torch.get_num_threads()} threads")


@pytest.mark.subprocess
def test_plan_measures_on_the_cpu(tmp_path):
    """`plan --measure` times the tiny models on the CPU (10 s on the 2-core machine, most of it importing torch and timm)."""
    config = tiny_config(m=("mae", {}), s=("supervised", {}))
    config["landscape"].update(alpha=[-1, 1, 3], beta=[-1, 1, 3], tile=[2, 2])
    (tmp_path / "tiny.yaml").write_text(json.dumps(config))
    run = subprocess.run([sys.executable, "-m", "vitlandscape", "plan", "--configfile", "tiny.yaml", "--measure",
                          "--device", "cpu", "--batch-size", "4", "--measure-seconds", "0.1", "--json", "plan.json"],
                         cwd=tmp_path, env={"PYTHONPATH": str(ROOT / "workflow"), "PATH": ""},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "plan.json").read_text())
    assert result["device"].startswith("cpu, ") and result["precision"] == "fp32" and result["tflops"] is None
    for s in result["surfaces"]:
        assert s["measured_images_per_s"] > 0 and s["measured_tflops"] > 0
        assert s["measured_tflops"] == pytest.approx(s["flops_per_image"] * s["measured_images_per_s"] / 1e12)
        assert s["gpu_hours"] == pytest.approx(s["total_flops"] / (s["measured_tflops"] * 1e12) / 3600)
    assert [t["name"] for t in result["training"]] == ["m/pretrain", "m/probe", "m/finetune", "s/pretrain"]
    assert all(t["gpu_hours"] > 0 for t in result["training"])
    assert "images/s" in run.stdout and "rates measured on cpu" in run.stdout


@pytest.mark.subprocess
def test_plan_command_writes_json(tmp_path):
    run = subprocess.run([sys.executable, "-m", "vitlandscape", "plan", "--configfile", str(ROOT / "config/config.yaml"),
                          "--tflops", "50", "--json", str(tmp_path / "plan.json")],
                         cwd=tmp_path, env={"PYTHONPATH": str(ROOT / "workflow"), "PATH": ""},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "plan.json").read_text())
    assert result["tflops"] == 50 and len(result["surfaces"]) == 7  # 5 surfaces, 2 path planes
    assert {"name", "flops_per_image", "images", "points", "total_flops", "gpu_hours"} <= set(result["surfaces"][0])
    assert "mae/pretext" in run.stdout and "GPU-hours at 50 TFLOP/s" in run.stdout
    assert [t["name"] for t in result["training"]][:3] == ["mae/pretrain", "mae/probe", "mae/finetune"]
    assert "mae/finetune" in run.stdout and "GPU-hours of training" in run.stdout


@pytest.mark.subprocess
def test_plan_without_measuring_imports_no_torch(tmp_path):
    """The planner counts from the config: neither the module nor the command loads torch (2 s)."""
    script = ("import sys\n"
              "import vitlandscape.plan\n"
              "assert 'torch' not in sys.modules, 'import vitlandscape.plan loaded torch'\n"
              "from vitlandscape.cli import main\n"
              f"main(['plan', '--configfile', {str(ROOT / 'config/config.yaml')!r}])\n"
              "assert 'torch' not in sys.modules, 'the plan command loaded torch'\n")
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env={"PYTHONPATH": str(ROOT / "workflow"),
                         "PATH": ""}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "mae/pretext" in run.stdout


def test_a_studys_variants_are_planned_as_the_workflow_runs_them(default_config):
    """Surfaces of every variant; trainings of the variants that train (pretraining and the
    probe, no fine-tuning); Hessian and flatness once per training, not per direction pair."""
    config = validated({**default_config, "studies": [
        {"name": "seeds", "models": ["mae"], "vary": {"seed": [0, 1]}, "direction_seeds": [0, 2]},
        {"name": "batch", "models": ["mae"], "vary": {"pretrain.batch_size": [256]}}]})
    result = plan.plan(config, tflops=100.0, num_classes=10, train_images=1000)
    surfaces = {s["name"] for s in result["surfaces"]}
    for variant in ("mae.seed=1", "mae.directions=2", "mae.seed=1.directions=2", "mae.pretrain.batch_size=256"):
        assert {f"{variant}/pretext", f"{variant}/probe"} <= surfaces
    trained = {t["name"]: t for t in result["training"]}
    assert {"mae.seed=1/pretrain", "mae.seed=1/probe", "mae.pretrain.batch_size=256/pretrain"} <= set(trained)
    assert not any(n.startswith("mae.seed=1/finetune") or "directions" in n for n in trained)
    # the seed changes nothing of the cost; 256 images a step with the same epochs: the same FLOPs too
    assert trained["mae.seed=1/pretrain"]["flops"] == trained["mae/pretrain"]["flops"]
    metrics = {m["name"] for m in result["metrics"]}
    assert {"mae.seed=1/pretext", "mae.pretrain.batch_size=256/probe"} <= metrics
    assert not any("directions" in n for n in metrics)
    assert len(result["surfaces"]) == len(plan.plan(validated(default_config), 100.0, 10, 1000)["surfaces"]) + 4 * 2
