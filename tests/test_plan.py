"""The cost planner: FLOPs counted by hand agree with torch's count of the real model."""
import json
import subprocess
import sys

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vitlandscape import plan
from vitlandscape.models.arch import build_mae
from vitlandscape.models.classifier import build_classifier
from conftest import ROOT, TINY_ARCH, model_settings, validated


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
    result = plan.plan(config, tflops=100.0, num_classes=10)
    by_name = {s["name"]: s for s in result["surfaces"]}
    assert set(by_name) == {"mae/pretext", "mae/probe", "rcmae/pretext", "rcmae/probe", "sup/supervised"}
    s = by_name["mae/probe"]
    assert (s["points"], s["tiles"], s["images"]) == (51 * 51, 9, 256)
    assert s["total_flops"] == s["flops_per_image"] * 256 * 2601
    assert s["gpu_hours"] == pytest.approx(s["total_flops"] / 100e12 / 3600)
    assert s["tile_gpu_hours"] == pytest.approx(s["flops_per_image"] * 256 * 17 * 20 / 100e12 / 3600)
    assert result["total_gpu_hours"] == pytest.approx(sum(x["gpu_hours"] for x in result["surfaces"]))


@pytest.mark.subprocess
def test_plan_command_writes_json(tmp_path):
    run = subprocess.run([sys.executable, "-m", "vitlandscape", "plan", "--configfile", str(ROOT / "config/config.yaml"),
                          "--tflops", "50", "--json", str(tmp_path / "plan.json")],
                         cwd=tmp_path, env={"PYTHONPATH": str(ROOT / "workflow"), "PATH": ""},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "plan.json").read_text())
    assert result["tflops"] == 50 and len(result["surfaces"]) == 5
    assert {"name", "flops_per_image", "images", "points", "total_flops", "gpu_hours"} <= set(result["surfaces"][0])
    assert "mae/pretext" in run.stdout and "GPU-hours at 50 TFLOP/s" in run.stdout


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
