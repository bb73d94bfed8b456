"""The workflow's training stages as plain functions (the CLI and the rules call these)."""
import json

import torch

from vitlandscape import checkpoints, data, devices, formats, objectives, train
from vitlandscape.models.arch import build_mae, resolve_arch
from vitlandscape.models.classifier import build_classifier
from vitlandscape.outputs import sha256, write_json


# Batch size of accuracy and feature passes (no gradients).
EVAL_BATCH = 512


def cpu_state(model) -> dict:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def check_image_size(arch: dict, prepared: dict, model: str) -> None:
    if arch["img_size"] != prepared["image_size"]:
        raise ValueError(f"models.{model}.arch.img_size is {arch['img_size']} but data.image_size is "
                         f"{prepared['image_size']}")


def pretrain(cfg: dict, data_path, out, device="cpu", workers=0) -> dict:
    """Train one model from scratch: MAE, RC-MAE (student + EMA teacher) or supervised ViT.
    `workers`: DataLoader processes for streamed data."""
    device = devices.resolve(device)
    prepared = data.load_prepared(data_path)
    method = cfg["method"]
    hp = {**cfg["pretrain"], "seed": cfg["seed"]}
    batches = data.train_batches(prepared, "supervised" if method == "supervised" else "pretrain",
                                 hp["batch_size"], hp["seed"], workers, device)
    torch.manual_seed(cfg["seed"])
    if method == "supervised":
        arch = resolve_arch(cfg["arch"], with_decoder=False)
        check_image_size(arch, prepared, cfg["name"])
        model = build_classifier(arch, prepared["num_classes"], head="supervised").to(device)
        history = train.train_classifier(model, batches, hp, desc="supervised")
        top1 = train.accuracy(model, data.ordered_batches(prepared, "test", EVAL_BATCH, workers, device))
        ckpt = {"kind": "classifier", "head": "supervised", "method": method, "arch": arch,
                "num_classes": prepared["num_classes"], "model": cpu_state(model),
                "history": history, "test_top1": top1}
        print(f"supervised test top-1: {top1:.4f}")
    else:
        arch = resolve_arch(cfg["arch"], with_decoder=True)
        check_image_size(arch, prepared, cfg["name"])
        model = build_mae(arch, cfg["norm_pix_loss"]).to(device)
        history, teacher = train.pretrain_mae(model, batches, cfg, rcmae=method == "rcmae")
        ckpt = {"kind": "mae", "method": method, "arch": arch, "norm_pix_loss": cfg["norm_pix_loss"],
                "mask_ratio": cfg["mask_ratio"], "history": history, "model": cpu_state(model)}
        if teacher is not None:
            ckpt.update(student=cpu_state(model), teacher=cpu_state(teacher),
                        model=cpu_state(teacher if cfg["downstream_weights"] == "teacher" else model))
        what = "MAE + consistency loss" if method == "rcmae" else "MAE loss"
        print(f"{method} last-epoch training {what}: {history[-1]['loss']:.4f}")
    checkpoints.atomic_save(ckpt, out)
    return ckpt


def train_top1(model, prepared: dict, device) -> tuple[float, int]:
    """(top-1, images) on the training split; for streamed data on its evaluation subset,
    as a pass over every training image would cost as much as an epoch."""
    if data.is_streaming(prepared):
        batches = data.chunks(*data.eval_set(prepared, device), EVAL_BATCH)
    else:
        batches = data.ordered_batches(prepared, "train", EVAL_BATCH, 0, device)
    return train.accuracy(model, batches), sum(len(labels) for _, labels in batches)


def downstream(cfg: dict, stage: str, data_path, checkpoint, out, metrics_out, device="cpu", workers=0) -> dict:
    """Linear probe (`stage='probe'`) or fine-tuning (`'finetune'`) of an MAE encoder."""
    device = devices.resolve(device)
    prepared = data.load_prepared(data_path)
    arch = resolve_arch(cfg["arch"], with_decoder=False)
    check_image_size(arch, prepared, cfg["name"])
    pretrained = formats.read(checkpoint, prefer=cfg["downstream_weights"], trusted=cfg.get("trust_checkpoint", False))
    print(f"pretrained checkpoint {checkpoint}: {pretrained.label}")
    hp = {**cfg[stage], "seed": cfg["seed"]}
    # In-memory data have no augmentation: their probe features are the same at every step.
    cached = stage == "probe" and (cfg["probe"]["features"] == "cached" or not data.is_streaming(prepared))

    def run(state):
        if cached:
            batches = data.ordered_batches(prepared, "train", EVAL_BATCH, workers, device)
        else:
            batches = data.train_batches(prepared, stage, hp["batch_size"], hp["seed"], workers, device)
        return train.downstream(state, arch, prepared["num_classes"], batches, hp, stage, device, cached)

    def test_top1(model):
        return train.accuracy(model, data.ordered_batches(prepared, "test", EVAL_BATCH, workers, device))

    model, history = run(formats.encoder_source(pretrained))
    top1, images = train_top1(model, prepared, device)
    metrics = {"model": cfg["name"], "method": cfg["method"], "stage": stage, "test_top1": test_top1(model),
               "train_top1": top1, "train_top1_images": images,
               "checkpoint": str(checkpoint), "checkpoint_sha256": sha256(checkpoint),
               "checkpoint_format": pretrained.format}
    if stage == "probe":
        # The same probe on a randomly initialised encoder: what pretraining adds.
        torch.manual_seed(cfg["seed"])
        baseline, _ = run(build_mae(cfg["arch"], cfg["norm_pix_loss"]).state_dict())
        metrics["random_init_test_top1"] = test_top1(baseline)
    ckpt = {"kind": "classifier", "head": stage, "global_pool": hp.get("global_pool", False),
            "method": cfg["method"], "arch": arch, "num_classes": prepared["num_classes"],
            "model": cpu_state(model), "history": history, "test_top1": metrics["test_top1"]}
    checkpoints.atomic_save(ckpt, out)
    write_json(metrics, metrics_out)
    print(json.dumps(metrics, indent=2))
    return metrics


def evaluate(cfg: dict, stage: str, data_path, checkpoint, metrics_out, device="cpu", workers=0) -> dict:
    """Test top-1 of a given (released or earlier) probe, fine-tuned or supervised checkpoint,
    for the accuracy table beside the stages the workflow trains."""
    device = devices.resolve(device)
    prepared = data.load_prepared(data_path)
    model, ckpt = objectives.load(stage, checkpoint, cfg)
    print(f"checkpoint {checkpoint}: {ckpt.label}")
    classes = model.num_classes
    if classes < prepared["num_classes"]:
        raise ValueError(f"checkpoint {checkpoint} classifies {classes} classes but data set "
                         f"{prepared['dataset']} has {prepared['num_classes']}")
    metrics = {"model": cfg["name"], "method": cfg["method"], "stage": stage,
               "test_top1": train.accuracy(model.to(device),
                                           data.ordered_batches(prepared, "test", EVAL_BATCH, workers, device)),
               "checkpoint": str(checkpoint), "checkpoint_sha256": sha256(checkpoint),
               "checkpoint_format": ckpt.format}
    write_json(metrics, metrics_out)
    print(json.dumps(metrics, indent=2))
    return metrics
