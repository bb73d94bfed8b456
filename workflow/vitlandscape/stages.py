"""The workflow's training stages as plain functions (the CLI and the rules call these)."""
import json
from pathlib import Path

import pandas as pd
import torch

from vitlandscape import checkpoints, data, devices, formats, objectives, train
from vitlandscape.models.arch import build_mae, resolve_arch
from vitlandscape.models.classifier import build_classifier


def write_json(obj, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def prepare_data(cfg: dict, out) -> None:
    prepared = data.prepare(cfg)
    checkpoints.atomic_save(prepared, out)
    print(f"{cfg['dataset']}: {len(prepared['train_images'])} train, {len(prepared['test_images'])} test, "
          f"{len(prepared['eval_index'])} eval images, {prepared['num_classes']} classes -> {out}")


def on_device(prepared: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in prepared.items()}


def cpu_state(model) -> dict:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def check_image_size(arch: dict, prepared: dict, model: str) -> None:
    if arch["img_size"] != prepared["image_size"]:
        raise ValueError(f"models.{model}.arch.img_size is {arch['img_size']} but data.image_size is "
                         f"{prepared['image_size']}")


def pretrain(cfg: dict, data_path, out, device="cpu") -> dict:
    """Train one model from scratch: MAE, RC-MAE (student + EMA teacher) or supervised ViT."""
    device = devices.resolve(device)
    prepared = on_device(data.load_prepared(data_path), device)
    method = cfg["method"]
    torch.manual_seed(cfg["seed"])
    if method == "supervised":
        arch = resolve_arch(cfg["arch"], with_decoder=False)
        check_image_size(arch, prepared, cfg["name"])
        model = build_classifier(arch, prepared["num_classes"], head="supervised").to(device)
        history = train.train_classifier(model, prepared["train_images"], prepared["train_labels"],
                                         {**cfg["pretrain"], "seed": cfg["seed"]}, desc="supervised")
        top1 = train.accuracy(model, prepared["test_images"], prepared["test_labels"])
        ckpt = {"kind": "classifier", "head": "supervised", "method": method, "arch": arch,
                "num_classes": prepared["num_classes"], "model": cpu_state(model),
                "history": history, "test_top1": top1}
        print(f"supervised test top-1: {top1:.4f}")
    else:
        arch = resolve_arch(cfg["arch"], with_decoder=True)
        check_image_size(arch, prepared, cfg["name"])
        model = build_mae(arch, cfg["norm_pix_loss"]).to(device)
        history, teacher = train.pretrain_mae(model, prepared["train_images"], cfg, rcmae=method == "rcmae")
        ckpt = {"kind": "mae", "method": method, "arch": arch, "norm_pix_loss": cfg["norm_pix_loss"],
                "mask_ratio": cfg["mask_ratio"], "history": history, "model": cpu_state(model)}
        if teacher is not None:
            ckpt.update(student=cpu_state(model), teacher=cpu_state(teacher),
                        model=cpu_state(teacher if cfg["downstream_weights"] == "teacher" else model))
        what = "MAE + consistency loss" if method == "rcmae" else "MAE loss"
        print(f"{method} last-epoch training {what}: {history[-1]['loss']:.4f}")
    checkpoints.atomic_save(ckpt, out)
    return ckpt


def downstream(cfg: dict, stage: str, data_path, checkpoint, out, metrics_out, device="cpu") -> dict:
    """Linear probe (`stage='probe'`) or fine-tuning (`'finetune'`) of an MAE encoder."""
    device = devices.resolve(device)
    prepared = on_device(data.load_prepared(data_path), device)
    arch = resolve_arch(cfg["arch"], with_decoder=False)
    check_image_size(arch, prepared, cfg["name"])
    pretrained = formats.read(checkpoint, prefer=cfg["downstream_weights"])
    print(f"pretrained checkpoint {checkpoint}: {pretrained.label}")
    hp = {**cfg[stage], "seed": cfg["seed"]}
    model, history = train.downstream(formats.encoder_source(pretrained), arch, prepared, hp, head=stage,
                                      device=device)
    metrics = {"model": cfg["name"], "method": cfg["method"], "stage": stage,
               "test_top1": train.accuracy(model, prepared["test_images"], prepared["test_labels"]),
               "train_top1": train.accuracy(model, prepared["train_images"], prepared["train_labels"]),
               "checkpoint": str(checkpoint), "checkpoint_sha256": checkpoints.sha256(checkpoint),
               "checkpoint_format": pretrained.format}
    if stage == "probe":
        # The same probe on a randomly initialised encoder: what pretraining adds.
        torch.manual_seed(cfg["seed"])
        random_mae = build_mae(cfg["arch"], cfg["norm_pix_loss"])
        baseline, _ = train.downstream(random_mae.state_dict(), arch, prepared, hp, head="probe",
                                       device=device)
        metrics["random_init_test_top1"] = train.accuracy(baseline, prepared["test_images"],
                                                          prepared["test_labels"])
    ckpt = {"kind": "classifier", "head": stage, "global_pool": hp.get("global_pool", False),
            "method": cfg["method"], "arch": arch, "num_classes": prepared["num_classes"],
            "model": cpu_state(model), "history": history, "test_top1": metrics["test_top1"]}
    checkpoints.atomic_save(ckpt, out)
    write_json(metrics, metrics_out)
    print(json.dumps(metrics, indent=2))
    return metrics


def evaluate(cfg: dict, stage: str, data_path, checkpoint, metrics_out, device="cpu") -> dict:
    """Test top-1 of a given (released or earlier) probe, fine-tuned or supervised checkpoint,
    for the accuracy table beside the stages the workflow trains."""
    device = devices.resolve(device)
    prepared = on_device(data.load_prepared(data_path), device)
    model, ckpt = objectives.load(stage, checkpoint, cfg)
    print(f"checkpoint {checkpoint}: {ckpt.label}")
    classes = model.num_classes
    if classes < prepared["num_classes"]:
        raise ValueError(f"checkpoint {checkpoint} classifies {classes} classes but data set "
                         f"{prepared['dataset']} has {prepared['num_classes']}")
    metrics = {"model": cfg["name"], "method": cfg["method"], "stage": stage,
               "test_top1": train.accuracy(model.to(device), prepared["test_images"], prepared["test_labels"]),
               "checkpoint": str(checkpoint), "checkpoint_sha256": checkpoints.sha256(checkpoint),
               "checkpoint_format": ckpt.format}
    write_json(metrics, metrics_out)
    print(json.dumps(metrics, indent=2))
    return metrics


def accuracy_table(metric_files, supervised_checkpoints, out) -> pd.DataFrame:
    """One row per model: linear-probe, fine-tune and supervised top-1 (the paper's Table 1),
    from the stages' metrics files and from the supervised models the workflow trained."""
    rows = {}
    for path in metric_files:
        m = json.loads(Path(path).read_text())
        row = rows.setdefault(m["model"], {"model": m["model"], "method": m["method"]})
        if m["stage"] == "probe":
            row["linear_probe_top1"] = m["test_top1"]
            # absent for a given probe checkpoint: no probe was trained on a random encoder
            row["probe_random_init_top1"] = m.get("random_init_test_top1")
        else:
            row[{"finetune": "finetune_top1", "supervised": "supervised_top1"}[m["stage"]]] = m["test_top1"]
    for name, path in supervised_checkpoints.items():
        ckpt = checkpoints.load(path)
        rows[name] = {"model": name, "method": "supervised", "supervised_top1": ckpt["test_top1"]}
    columns = ["model", "method", "linear_probe_top1", "finetune_top1", "supervised_top1",
               "probe_random_init_top1"]
    table = pd.DataFrame(list(rows.values()), columns=columns)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False, float_format="%.4f")
    print(table.to_string(index=False))
    return table
