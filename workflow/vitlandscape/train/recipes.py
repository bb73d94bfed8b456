"""Training recipes: each stage's official settings, and a config's changes to them.

A stage's config (`models.<name>.pretrain|probe|finetune`) gives the run's scale (epochs,
batch size, warm-up) and may change any element of its `recipe`; what it leaves out is the
official recipe of that stage and method:

- MAE / RC-MAE pretraining (facebookresearch/mae main_pretrain.py, youngwanLEE/rc-mae):
  AdamW (0.9, 0.95), base lr 1.5e-4, weight decay 0.05 (not on 1-D tensors), random resized
  crop (scale 0.2-1, bicubic) + horizontal flip, mixed precision.
- Linear probe (main_linprobe.py): LARS (momentum 0.9, trust 0.001), base lr 0.1, no weight
  decay, random resized crop (0.08-1) + flip.
- Fine-tuning (main_finetune.py, README's per-model settings): AdamW (0.9, 0.999), layer-wise
  lr decay, drop path, min lr 1e-6, no weight decay on cls_token / pos_embed, RandAugment
  (rand-m9-mstd0.5-inc1), random erasing 0.25, mixup 0.8 / cutmix 1.0, label smoothing 0.1.
- MoCo v3 pretraining (facebookresearch/moco-v3 main_moco.py, its ViT settings): AdamW (0.9,
  0.999), base lr 1.5e-4, weight decay 0.1 (not on 1-D tensors, as the MAE recipes; MoCo v3
  decays every tensor), the BYOL two-view augmentation (random resized crop 0.08-1, flip,
  colour jitter, grey, blur, solarisation: augment/twoview.py), mixed precision.
- Supervised ViT from scratch (DeiT): as fine-tuning without layer decay; base lr 5e-4 per
  512 images (2.5e-4 per 256), min lr 1e-5. Repeated augmentation and DeiT's warm-up from
  1e-6 are left out (the schedule warms up from 0 as the MAE recipes do).

Every stage may add sharpness-aware minimisation (`sam`: none, sam or asam, radius `sam_rho`)
around its own optimizer; the official recipes use none.

Learning rates scale with the batch: lr = blr * batch_size / 256, unless the stage gives an
absolute `lr`. Mixed precision is bf16 autocast with float32 weights (the MAE code's fp16 +
loss scaling has the same purpose; bf16 needs no scaler).
"""
import copy

from vitlandscape import methods
from vitlandscape.models.arch import resolve_arch

BASE_BATCH = 256
# Elements that act on a classifier trained end to end: not for MAE pretraining or the linear probe.
CLASSIFIER_TRAINING = ("mixup", "cutmix", "label_smoothing", "drop_path", "layer_decay")

_AUGMENTED = {"crop_scale": [0.08, 1.0], "hflip": 0.5,
              "rand_augment": {"num_ops": 2, "magnitude": 9.0, "magnitude_std": 0.5},
              "random_erasing": 0.25, "mixup": 0.8, "cutmix": 1.0, "label_smoothing": 0.1}
_PLAIN = {"crop_scale": None, "hflip": 0.0, "rand_augment": None, "random_erasing": 0.0,
          "mixup": 0.0, "cutmix": 0.0, "label_smoothing": 0.0}
# No recipe of the paper's code uses sharpness-aware minimisation.
_NO_SAM = {"sam": "none", "sam_rho": 0.05}

OFFICIAL = {
    "pretrain": {"blr": 1.5e-4, "weight_decay": 0.05,
                 "recipe": {"optimizer": "adamw", "betas": [0.9, 0.95], "min_lr": 0.0, "layer_decay": None,
                            "no_weight_decay": [], "drop_path": 0.0, "precision": "bf16",
                            **_PLAIN, "crop_scale": [0.2, 1.0], "hflip": 0.5, **_NO_SAM}},
    "supervised": {"blr": 2.5e-4, "weight_decay": 0.05,
                   "recipe": {"optimizer": "adamw", "betas": [0.9, 0.999], "min_lr": 1e-5, "layer_decay": None,
                              "no_weight_decay": ["cls_token", "pos_embed"], "drop_path": 0.1,
                              "precision": "bf16", **_AUGMENTED, **_NO_SAM}},
    "contrastive": {"blr": 1.5e-4, "weight_decay": 0.1,
                    "recipe": {"optimizer": "adamw", "betas": [0.9, 0.999], "min_lr": 0.0, "layer_decay": None,
                               "no_weight_decay": [], "drop_path": 0.0, "precision": "bf16",
                               **_PLAIN, "crop_scale": [0.08, 1.0], "hflip": 0.5, **_NO_SAM}},
    "probe": {"blr": 0.1, "weight_decay": 0.0,
              "recipe": {"optimizer": "lars", "betas": [0.9, 0.999], "min_lr": 0.0, "layer_decay": None,
                         "no_weight_decay": [], "drop_path": 0.0, "precision": "bf16",
                         **_PLAIN, "crop_scale": [0.08, 1.0], "hflip": 0.5, **_NO_SAM}},
    "finetune": {"blr": 1e-3, "weight_decay": 0.05,
                 "recipe": {"optimizer": "adamw", "betas": [0.9, 0.999], "min_lr": 1e-6, "layer_decay": 0.75,
                            "no_weight_decay": ["cls_token", "pos_embed"], "drop_path": 0.1,
                            "precision": "bf16", **_AUGMENTED, **_NO_SAM}},
}

# The official fine-tuning settings per model size (MAE's FINETUNE.md); other sizes take
# main_finetune.py's defaults (those of OFFICIAL["finetune"]).
FINETUNE_BY_WIDTH = {768: {"blr": 5e-4, "layer_decay": 0.65, "drop_path": 0.1},
                     1024: {"blr": 1e-3, "layer_decay": 0.75, "drop_path": 0.2},
                     1280: {"blr": 1e-3, "layer_decay": 0.75, "drop_path": 0.3}}

def official(method: str, stage: str, arch) -> dict:
    """The official `blr`, `weight_decay` and `recipe` of a stage ('pretrain', 'probe',
    'finetune') for a method and architecture."""
    kind = {"supervised": "supervised", "mocov3": "contrastive"}.get(method, stage) if stage == "pretrain" else stage
    settings = copy.deepcopy(OFFICIAL[kind])
    if kind == "finetune":
        size = FINETUNE_BY_WIDTH.get(resolve_arch(arch, with_decoder=False)["embed_dim"], {})
        settings["blr"] = size.get("blr", settings["blr"])
        settings["recipe"].update({k: v for k, v in size.items() if k != "blr"})
    return settings


def resolve(model_cfg: dict, stage: str) -> dict:
    """The stage's hyper-parameters as training uses them: epochs, batch_size, warmup_epochs,
    lr (absolute: the stage's `lr`, else blr * batch_size / 256), weight_decay, seed and the
    complete `recipe` (official elements where the config gives none)."""
    given = model_cfg[stage]
    settings = official(model_cfg["method"], stage, model_cfg["arch"])
    recipe = {**settings["recipe"], **(given.get("recipe") or {})}
    blr = given.get("blr") if given.get("blr") is not None else settings["blr"]
    lr = given["lr"] if given.get("lr") is not None else blr * given["batch_size"] / BASE_BATCH
    weight_decay = given.get("weight_decay")
    return {**given, "lr": lr, "blr": blr,
            "weight_decay": settings["weight_decay"] if weight_decay is None else weight_decay,
            "seed": model_cfg["seed"], "recipe": recipe}


def batch_scaled(momentum: float, batch_size: int, reference: int | None) -> float:
    """The EMA momentum for `batch_size` when `momentum` suits a batch of `reference`: m ** kappa
    for a batch kappa times larger keeps the teacher's averaging horizon in images, not steps
    (Busbridge et al. 2023); `momentum` itself when `reference` is None."""
    return momentum if reference is None else momentum ** (batch_size / reference)


def uses_sam(recipe: dict) -> bool:
    """Whether a step takes SAM's second forward-backward pass (sam or asam)."""
    return recipe["sam"] != "none"


def augments(recipe: dict) -> bool:
    """Whether the recipe changes the images a step sees (crop, flip, RandAugment, erasing, mixing)."""
    return bool(recipe["crop_scale"] or recipe["hflip"] or recipe["rand_augment"] or recipe["random_erasing"]
                or recipe["mixup"] or recipe["cutmix"])


def probe_features_cached(model_cfg: dict) -> bool:
    """Whether the linear probe computes the frozen encoder's features once: when asked
    (`probe.features: cached`), or when its recipe leaves the images unchanged."""
    return model_cfg["probe"]["features"] == "cached" or not augments(resolve(model_cfg, "probe")["recipe"])


def problems(key: str, model_cfg: dict, stage: str) -> list[str]:
    """What the schema cannot say about a stage's recipe (`key`: its config path)."""
    given = model_cfg[stage]
    found = []
    if given.get("lr") is not None and given.get("blr") is not None:
        found.append(f"{key}: give lr (absolute) or blr (per {BASE_BATCH} images), not both")
    stage_cfg = resolve(model_cfg, stage)
    recipe = stage_cfg["recipe"]
    if recipe["crop_scale"] and recipe["crop_scale"][0] > recipe["crop_scale"][1]:
        found.append(f"{key}.recipe.crop_scale: {recipe['crop_scale']} is not [smallest, largest] area fraction")
    if (recipe["mixup"] or recipe["cutmix"]) and stage_cfg["batch_size"] % 2:
        found.append(f"{key}.recipe: mixup/cutmix pair each image with another of its batch; "
                     f"batch_size {stage_cfg['batch_size']} must be even")
    why = {"probe": "the linear probe trains only its head on the frozen encoder",
           "pretrain": f"{methods.NAMES[model_cfg['method']]} pretraining has no labels or classifier"}.get(stage)
    if why and (stage, model_cfg["method"]) != ("pretrain", "supervised"):
        given_elements = [k for k in CLASSIFIER_TRAINING if recipe[k]]
        if given_elements:
            found.append(f"{key}.recipe: {why}: {', '.join(given_elements)} do not apply")
    return found

