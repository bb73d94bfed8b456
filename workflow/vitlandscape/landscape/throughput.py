"""Sustained inference throughput of the configured models on this machine (`plan --measure`).

Each distinct (architecture, objective) is built at random initialisation and timed on
random inputs of its image size: a few warm-up passes, then as many passes as fill the
time asked for, synchronised once at the end on CUDA.
"""
import json
import math
from time import perf_counter

import torch

from vitlandscape import devices
from vitlandscape.models import mocov3
from vitlandscape.models.arch import build_mae, resolve_arch
from vitlandscape.models.classifier import build_classifier

WARMUP_PASSES = 3
MIN_PASSES = 2


def forward_pass(m: dict, objective: str, num_classes: int, batch_size: int, device: torch.device):
    """A no-argument function running one batch through the model of `objective`."""
    dims = resolve_arch(m["arch"], with_decoder=objective == "pretext")
    x = torch.randn(batch_size, 3, dims["img_size"], dims["img_size"], device=device)
    if objective == "pretext":
        model = build_mae(dims, m["norm_pix_loss"]).to(device).eval()
        patches = (dims["img_size"] // dims["patch_size"]) ** 2
        noise = torch.rand(batch_size, patches, generator=torch.Generator().manual_seed(0)).to(device)
        return lambda: model(x, m["mask_ratio"], noise)
    if objective == "contrastive":  # the online part on both views, as plan.flops_per_image counts it
        online = mocov3.Online(mocov3.from_config({**m, "arch": dims})).to(device).eval()
        return lambda: (online(x), online(x))
    global_pool = objective == "finetune" and m["finetune"]["global_pool"]
    model = build_classifier(dims, num_classes, objective, global_pool).to(device).eval()
    return lambda: model(x)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_s(run, batch_size: int, device: torch.device, precision: str, seconds: float) -> float:
    """Images per second of `run`, timed over about `seconds` after the warm-up."""
    with torch.inference_mode(), devices.precision(precision, device):
        for _ in range(WARMUP_PASSES - 1):
            run()
        synchronize(device)
        start = perf_counter()
        run()  # the last warm-up pass sizes the timed run
        synchronize(device)
        passes = max(MIN_PASSES, math.ceil(seconds / (perf_counter() - start)))
        start = perf_counter()
        for _ in range(passes):
            run()
        synchronize(device)
        return passes * batch_size / (perf_counter() - start)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu, {torch.get_num_threads()} threads"


def measure(config: dict, pairs, num_classes: int, device: str = "auto", precision: str | None = None,
            batch_size: int | None = None, seconds: float = 2.0) -> dict:
    """Images/s of every (model, objective) in `pairs`, each distinct forward timed once.

    precision: 'fp32' (default: what the grid engine computes) or 'bf16' (autocast).
    batch_size: default landscape.batch_size. Returns the `measured` argument of `plan.plan`.
    """
    device = devices.resolve(device)
    precision = precision or "fp32"
    batch_size = batch_size or config["landscape"]["batch_size"]
    rates, timed = {}, {}
    for name, objective in pairs:
        m = config["models"][name]
        # models alike but for their names (mae and rcmae) share one measurement
        key = json.dumps([resolve_arch(m["arch"], with_decoder=objective == "pretext"), objective,
                          m["mask_ratio"] if objective == "pretext" else None,
                          m["norm_pix_loss"] if objective == "pretext" else None,
                          m["moco"] if objective == "contrastive" else None])
        if key not in timed:
            torch.manual_seed(0)
            run = forward_pass(m, objective, num_classes, batch_size, device)
            timed[key] = images_per_s(run, batch_size, device, precision, seconds)
        rates[name, objective] = timed[key]
    return {"device": device_name(device), "precision": precision, "images_per_s": rates}
