"""bf16 autocast on CPUs whose torch kernels are below AVX-512.

torch's fused CPU attention packs bf16 operands for oneDNN on hardware with bf16 dot products,
but the packing exists only in its AVX-512 kernels: below that capability (an older CPU build,
or ATEN_CPU_CAPABILITY=default on such hardware) a bf16 attention raises "pack_vnni2 is only
supported when avx512 is supported". `devices.bf16_autocast` takes the math attention path
there. This machine's hardware may lack bf16 dot products, in which case the fused kernel runs
at every capability: the tests check the choice made, that both paths agree where both run, and
that a bf16 training step runs under the forced default capability.
"""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, model_settings
from vitlandscape import devices

CPU = torch.device("cpu")


def flash_enabled() -> bool:
    """Whether SDPA may pick its fused (flash) kernel, on the CPU as on CUDA."""
    return torch.backends.cuda.flash_sdp_enabled()


@pytest.mark.parametrize("capability, fused", [("AVX512", True), ("AVX2", False), ("DEFAULT", False)])
def test_bf16_autocast_takes_the_math_attention_below_avx512(monkeypatch, capability, fused):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert flash_enabled()
    with devices.bf16_autocast(CPU):
        assert torch.is_autocast_enabled("cpu") and flash_enabled() == fused
    with devices.precision("bf16", CPU):
        assert flash_enabled() == fused
    assert flash_enabled() and not torch.is_autocast_enabled("cpu")  # restored on exit


@pytest.mark.filterwarnings("ignore:CUDA is not available")  # autocast itself is off without a GPU
def test_bf16_autocast_keeps_the_fused_attention_on_cuda(monkeypatch):
    """The math path is a CPU workaround only: a CUDA autocast leaves SDPA's choice alone."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    with devices.bf16_autocast(torch.device("cuda")):
        assert flash_enabled()


def test_math_and_fused_bf16_attention_agree_with_float64():
    """Both paths round to bf16 (8 mantissa bits: 2^-8 = 0.4 % per rounding, a few roundings
    between inputs and output), so each is within 3 % of the output's scale of the float64
    attention, and of each other."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(4, 2, 65, 8, generator=gen) for _ in range(3))
    weights = torch.softmax(q.double() @ k.double().transpose(-1, -2) / 8 ** 0.5, dim=-1)
    reference = weights @ v.double()
    scale = reference.abs().max().item()
    outputs = {}
    for name, backend in (("math", torch.nn.attention.SDPBackend.MATH),
                          ("fused", torch.nn.attention.SDPBackend.FLASH_ATTENTION)):
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.nn.attention.sdpa_kernel(backend):
            out = F.scaled_dot_product_attention(q, k, v)
        assert out.dtype == torch.bfloat16
        outputs[name] = out.double()
        assert (outputs[name] - reference).abs().max().item() < 0.03 * scale, name
    assert (outputs["math"] - outputs["fused"]).abs().max().item() < 0.03 * scale


STEP_UNDER_DEFAULT_KERNELS = """
import json, sys, torch
from vitlandscape import devices
from vitlandscape.train import stages
settings, data_file, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
with devices.bf16_autocast(torch.device("cpu")):
    fused = torch.backends.cuda.flash_sdp_enabled()
stages.pretrain(settings, data_file, out, "cpu")
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "fused": fused}))
"""


@pytest.mark.subprocess
def test_bf16_pretraining_runs_under_the_default_cpu_kernels(tmp_path, data_file):
    """A bf16 MAE pretraining (attention in encoder and decoder) in a process whose torch
    dispatches to its non-vectorised kernels: it takes the math attention and trains."""
    settings = model_settings("mae")
    settings["pretrain"] = {**settings["pretrain"], "epochs": 1, "recipe": {"precision": "bf16"}}
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT / "workflow")}
    out = tmp_path / "mae.pt"
    run = subprocess.run([sys.executable, "-c", STEP_UNDER_DEFAULT_KERNELS, json.dumps(settings), str(data_file),
                          str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"capability": "DEFAULT", "fused": False}
    state = torch.load(out, weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in state.values())
