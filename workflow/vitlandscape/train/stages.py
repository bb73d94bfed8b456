"""The workflow's training stages as plain functions (the CLI and the rules call these)."""
import json

import torch

from vitlandscape import devices, methods
from vitlandscape.augment.batch import Augmentation
from vitlandscape.data import prepare
from vitlandscape.landscape import objectives
from vitlandscape.models import mocov3
from vitlandscape.models.arch import build_mae, is_timm, resolve_arch
from vitlandscape.models.classifier import build_classifier
from vitlandscape.storage import checkpoints, formats
from vitlandscape.storage.outputs import checkpoint_identity, sha256, write_json
from vitlandscape.train import loops, recipes
from vitlandscape.train import mocov3 as mocov3_training

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
    ckpt = train_from_scratch(cfg, prepare.load_prepared(data_path), device, workers)
    checkpoints.atomic_save(ckpt, out)
    return ckpt


def train_from_scratch(cfg: dict, prepared: dict, device, workers=0, record=None) -> dict:
    """The checkpoint `pretrain` saves; `record` (recording.TrainingRecord) follows the training."""
    method = cfg["method"]
    stage_cfg = recipes.resolve(cfg, "pretrain")
    if method == "mocov3":
        return train_mocov3(cfg, stage_cfg, prepared, device, workers, record)
    batches = prepare.train_batches(prepared, stage_cfg["recipe"], stage_cfg["batch_size"], stage_cfg["seed"], workers, device)
    augmentation = batch_augmentation(stage_cfg, prepared)
    torch.manual_seed(cfg["seed"])
    if method == "supervised":
        arch = resolve_arch(cfg["arch"], with_decoder=False)
        check_image_size(arch, prepared, cfg["name"])
        model = build_classifier(arch, prepared["num_classes"], head="supervised",
                                 drop_path=stage_cfg["recipe"]["drop_path"]).to(device)
        history = loops.train_classifier(model, batches, stage_cfg, desc="supervised", record=record,
                                         augmentation=augmentation)
        top1 = loops.accuracy(model, prepare.ordered_batches(prepared, "test", EVAL_BATCH, workers, device))
        ckpt = {"kind": "classifier", "head": "supervised", "method": method, "arch": arch,
                "num_classes": prepared["num_classes"], "model": cpu_state(model),
                "history": history, "test_top1": top1}
        print(f"supervised test top-1: {top1:.4f}")
    else:
        arch = resolve_arch(cfg["arch"], with_decoder=True)
        check_image_size(arch, prepared, cfg["name"])
        model = build_mae(arch, cfg["norm_pix_loss"]).to(device)
        history, teacher = loops.pretrain_mae(model, batches, cfg, stage_cfg, rcmae=method == "rcmae", record=record,
                                              augmentation=augmentation)
        ckpt = {"kind": "mae", "method": method, "arch": arch, "norm_pix_loss": cfg["norm_pix_loss"],
                "mask_ratio": cfg["mask_ratio"], "history": history, "model": cpu_state(model)}
        if teacher is not None:
            ckpt.update(student=cpu_state(model), teacher=cpu_state(teacher),
                        model=cpu_state(teacher if methods.downstream_is_ema(cfg) else model))
        what = "MAE + consistency loss" if method == "rcmae" else "MAE loss"
        print(f"{method} last-epoch training {what}: {history[-1]['loss']:.4f}")
    return ckpt


def train_mocov3(cfg: dict, stage_cfg: dict, prepared: dict, device, workers=0, record=None) -> dict:
    """MoCo v3 pretraining's checkpoint: `model` the encoder `downstream_weights` names (base or
    momentum, without the projector), `moco` the whole model (for the contrastive objective)."""
    arch = resolve_arch(cfg["arch"], with_decoder=False)
    check_image_size(arch, prepared, cfg["name"])
    # the two views crop and flip on the device; a streamed folder's loader only decodes and resizes
    plain = {**stage_cfg["recipe"], "crop_scale": None, "hflip": 0.0}
    batches = prepare.train_batches(prepared, plain, stage_cfg["batch_size"], stage_cfg["seed"], workers, device)
    torch.manual_seed(cfg["seed"])
    model = mocov3.from_config({**cfg, "arch": arch}).to(device)
    history = mocov3_training.pretrain(model, batches, cfg, stage_cfg, record)
    kept = model.momentum_encoder if methods.downstream_is_ema(cfg) else model.base_encoder
    encoder = {k: v for k, v in cpu_state(kept).items() if not k.startswith("head.")}
    print(f"mocov3 last-epoch training contrastive loss: {history[-1]['loss']:.4f}")
    return {"kind": "mocov3", "method": "mocov3", "arch": arch, "moco_settings": cfg["moco"], "history": history,
            "model": encoder, "moco": cpu_state(model)}


def batch_augmentation(stage_cfg: dict, prepared: dict) -> Augmentation | None:
    """The recipe's augmentation of each training batch, or None when it changes nothing; a
    streamed folder's loader has cropped and flipped each image already."""
    recipe = stage_cfg["recipe"]
    if prepare.is_streaming(prepared):
        recipe = {**recipe, "crop_scale": None, "hflip": 0.0}
    if not recipes.augments(recipe):
        return None
    # Its own seed: the shuffle's generator uses stage_cfg["seed"].
    return Augmentation(recipe, prepared["num_classes"], stage_cfg["seed"] + 1)


def train_top1(model, prepared: dict, device) -> tuple[float, int]:
    """(top-1, images) on the training split; for streamed data on its evaluation subset,
    as a pass over every training image would cost as much as an epoch."""
    if prepare.is_streaming(prepared):
        batches = prepare.chunks(*prepare.eval_set(prepared, device), EVAL_BATCH)
    else:
        batches = prepare.ordered_batches(prepared, "train", EVAL_BATCH, 0, device)
    return loops.accuracy(model, batches), sum(len(labels) for _, labels in batches)


def read_pretrained(cfg: dict, checkpoint):
    pretrained = formats.read(checkpoint, prefer=cfg["downstream_weights"], trusted=cfg.get("trust_checkpoint", False))
    print(f"pretrained checkpoint {checkpoint}: {pretrained.label}")
    return pretrained


def downstream_training(cfg: dict, stage: str, prepared: dict, device, workers=0):
    """`run(encoder_state, record=None) -> (model, history)`: the probe or fine-tuning of `stage`."""
    arch = resolve_arch(cfg["arch"], with_decoder=False)
    check_image_size(arch, prepared, cfg["name"])
    stage_cfg = recipes.resolve(cfg, stage)
    cached = stage == "probe" and recipes.probe_features_cached(cfg)

    def run(state, record=None):
        if cached:
            batches = prepare.ordered_batches(prepared, "train", EVAL_BATCH, workers, device)
        else:
            batches = prepare.train_batches(prepared, stage_cfg["recipe"], stage_cfg["batch_size"], stage_cfg["seed"], workers, device)
        return loops.downstream(state, arch, prepared["num_classes"], batches, stage_cfg, head=stage, device=device,
                                cached=cached, record=record,
                                augmentation=None if cached else batch_augmentation(stage_cfg, prepared))
    return run


def downstream(cfg: dict, stage: str, data_path, checkpoint, *, out, metrics_out, device="cpu", workers=0) -> dict:
    """Linear probe (`stage='probe'`) or fine-tuning (`'finetune'`) of an MAE encoder."""
    device = devices.resolve(device)
    prepared = prepare.load_prepared(data_path)
    pretrained = read_pretrained(cfg, checkpoint)
    run = downstream_training(cfg, stage, prepared, device, workers)
    arch = resolve_arch(cfg["arch"], with_decoder=False)

    def test_top1(model):
        return loops.accuracy(model, prepare.ordered_batches(prepared, "test", EVAL_BATCH, workers, device))

    model, history = run(formats.encoder_source(pretrained))
    top1, images = train_top1(model, prepared, device)
    metrics = {"model": cfg["name"], "method": cfg["method"], "stage": stage, "test_top1": test_top1(model),
               "train_top1": top1, "train_top1_images": images,
               **checkpoint_identity(checkpoint, pretrained.format)}
    if stage == "probe":
        # The same probe on a randomly initialised encoder: what pretraining adds.
        torch.manual_seed(cfg["seed"])
        baseline, _ = run(random_encoder(cfg))
        metrics["random_init_test_top1"] = test_top1(baseline)
    ckpt = {"kind": "classifier", "head": stage, "global_pool": cfg[stage].get("global_pool", False),
            "method": cfg["method"], "arch": arch, "num_classes": prepared["num_classes"],
            "model": cpu_state(model), "history": history, "test_top1": metrics["test_top1"]}
    checkpoints.atomic_save(ckpt, out)
    write_json(metrics, metrics_out)
    print(json.dumps(metrics, indent=2))
    return metrics


def random_encoder(cfg: dict) -> dict:
    """The weights of a randomly initialised encoder of the model's arch (an MAE's as MAE
    initialises it; a timm ViT's or MoCo v3's as timm does): the probe's baseline."""
    if is_timm(cfg["arch"]) or cfg["method"] == "mocov3":
        return build_classifier(cfg["arch"], 1, "probe").state_dict()
    return build_mae(cfg["arch"], cfg["norm_pix_loss"]).state_dict()


def evaluate(cfg: dict, stage: str, data_path, checkpoint, metrics_out, device="cpu", workers=0) -> dict:
    """Test top-1 of a given (released or earlier) probe, fine-tuned or supervised checkpoint,
    for the accuracy table beside the stages the workflow trains."""
    device = devices.resolve(device)
    prepared = prepare.load_prepared(data_path)
    model, ckpt = objectives.load(stage, checkpoint, cfg)
    print(f"checkpoint {checkpoint}: {ckpt.label}")
    classes = model.num_classes
    if classes < prepared["num_classes"]:
        raise ValueError(f"checkpoint {checkpoint} classifies {classes} classes but data set "
                         f"{prepared['dataset']} has {prepared['num_classes']}")
    metrics = {"model": cfg["name"], "method": cfg["method"], "stage": stage,
               "test_top1": loops.accuracy(model.to(device),
                                           prepare.ordered_batches(prepared, "test", EVAL_BATCH, workers, device)),
               **checkpoint_identity(checkpoint, ckpt.format)}
    write_json(metrics, metrics_out)
    print(json.dumps(metrics, indent=2))
    return metrics


# Largest relative difference (||replay - checkpoint|| / ||checkpoint|| over all weights) accepted
# between a replayed training's final weights and the checkpoint it replays: bit-identical on the
# same machine and thread count; other hardware or library versions move trained weights by
# about 1e-4 (README, Reproducibility).
REPLAY_TOLERANCE = 1e-3


def trajectory(cfg: dict, stage: str, schedule: dict, data_path, checkpoint, *, snapshots_out, curve_out,
               pretrained=None, device="cpu", workers=0) -> dict:
    """Train `stage` (pretrain, probe or finetune) again, as its rule did, recording the loss
    curve and weight snapshots on `schedule`: a changed schedule then never retrains the
    checkpoint the landscapes are drawn around. The replay's final weights must reproduce
    `checkpoint` (the stage's result); `pretrained`: the checkpoint a probe or fine-tuning starts from."""
    from vitlandscape.storage import snapshots
    from vitlandscape.train import recording
    device = devices.resolve(device)
    prepared = prepare.load_prepared(data_path)
    record = recording.TrainingRecord(schedule)
    if stage == "pretrain":
        train_from_scratch(cfg, prepared, device, workers, record)
    else:
        run = downstream_training(cfg, stage, prepared, device, workers)
        run(formats.encoder_source(read_pretrained(cfg, pretrained)), record)
    final = record.snapshots[record.total_steps]
    difference = replay_difference(final, checkpoints.load(checkpoint)["model"], checkpoint)
    print(f"{cfg['name']} {stage}: {record.total_steps} steps replayed, {len(record.snapshots)} snapshots; "
          f"final weights differ from {checkpoint} by {difference:.3g} (relative)")
    metadata = {"model": cfg["name"], "method": cfg["method"], "stage": stage, "schedule": json.dumps(schedule),
                "total_steps": record.total_steps, "checkpoint": str(checkpoint),
                "checkpoint_sha256": sha256(checkpoint), "replay_difference": difference}
    snapshots.save_snapshots(snapshots_out, record.snapshots, metadata)
    record.write_curve(curve_out)
    return metadata


def replay_difference(replayed: dict, saved: dict, checkpoint) -> float:
    """||replayed - saved|| / ||saved|| over every weight; an error naming `checkpoint` when the
    names differ or the difference exceeds REPLAY_TOLERANCE (another training made the file)."""
    if set(replayed) != set(saved):
        raise ValueError(f"the replayed training has other weights than {checkpoint}: "
                         f"{sorted(set(replayed) ^ set(saved))[:5]}")
    diff = sum(float((replayed[k].double() - saved[k].double()).pow(2).sum()) for k in saved) ** 0.5
    norm = sum(float(saved[k].double().pow(2).sum()) for k in saved) ** 0.5
    relative = diff / max(norm, 1e-30)
    if relative > REPLAY_TOLERANCE:
        raise ValueError(f"replaying the training does not reproduce {checkpoint} (relative difference "
                         f"{relative:.3g} > {REPLAY_TOLERANCE:g}): was it made with other settings or data?")
    return relative


def snapshot_probes(cfg: dict, data_path, snapshots_path, count: int, out, device="cpu", workers=0) -> dict:
    """Linear-probe test top-1 of `count` snapshots of a recorded pretraining (evenly spread,
    the first and the last included), each probed as the `probe` stage probes the final encoder."""
    from vitlandscape.storage import snapshots
    device = devices.resolve(device)
    prepared = prepare.load_prepared(data_path)
    steps, states, _ = snapshots.load_snapshots(snapshots_path)
    picked = sorted({round(i * (len(steps) - 1) / max(1, count - 1)) for i in range(count)})
    run = downstream_training(cfg, "probe", prepared, device, workers)
    accuracies = {}
    for i in picked:
        model, _ = run(states[i])
        accuracies[steps[i]] = loops.accuracy(model, prepare.ordered_batches(prepared, "test", EVAL_BATCH, workers,
                                                                             device))
        print(f"{cfg['name']} snapshot at step {steps[i]}: probe test top-1 {accuracies[steps[i]]:.4f}")
    result = {"model": cfg["name"], "stage": "pretrain", "snapshots": str(snapshots_path),
              "steps": list(accuracies), "test_top1": list(accuracies.values())}
    write_json(result, out)
    return result

