"""What each method has: the landscape objectives it measures by default and those it can;
the objective each training stage optimises. Imports nothing."""

OBJECTIVES = {"mae": ["pretext", "probe"], "rcmae": ["pretext", "probe"], "mocov3": ["contrastive", "probe"],
              "supervised": ["supervised"]}
ALLOWED = {"mae": {"pretext", "probe", "finetune"}, "rcmae": {"pretext", "probe", "finetune"},
           "mocov3": {"contrastive", "probe", "finetune"}, "supervised": {"supervised"}}
# The self-supervised methods: pretrained without labels, then probed and fine-tuned.
SELF_SUPERVISED = ("mae", "rcmae", "mocov3")
# The objective each method's pretraining optimises.
PRETEXT = {"mae": "pretext", "rcmae": "pretext", "mocov3": "contrastive", "supervised": "supervised"}
NAMES = {"mae": "MAE", "rcmae": "RC-MAE", "mocov3": "MoCo v3", "supervised": "supervised ViT"}


def objectives(model_cfg: dict) -> list[str]:
    """The model's landscape objectives: as listed, or the method's defaults."""
    return model_cfg.get("objectives") or OBJECTIVES[model_cfg["method"]]


def stage_objective(model_cfg: dict, stage: str) -> str:
    """The objective a training stage optimises (whose forward pass it repeats, whose landscape
    its trajectory is drawn on)."""
    if stage == "pretrain":
        return PRETEXT[model_cfg["method"]]
    return stage


# downstream_weights: the EMA weights of a model that has two sets (RC-MAE's and DINO's
# teacher, MoCo v3's momentum encoder), or those trained by gradients (student, base encoder)
EMA_WEIGHTS = ("teacher", "momentum")
GRADIENT_WEIGHTS = ("student", "base")


def downstream_is_ema(model_cfg: dict) -> bool:
    """Whether the model's `downstream_weights` names its EMA weights."""
    return model_cfg["downstream_weights"] in EMA_WEIGHTS
