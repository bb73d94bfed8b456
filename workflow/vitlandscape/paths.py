"""Where a run keeps its data and checkpoints: the paths the library and the rules
(common.smk, through this module) both name, in one place; and where the config's schema
is. Imports nothing heavy."""
from pathlib import Path

SCHEMA = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"  # the library runs from the repo

DATA = "results/data/{dataset}.pt"
EVAL_SUBSET = "results/data/{dataset}.eval={eval_seed}.pt"  # a study's other evaluation subset
CHECKPOINT = "results/checkpoints/{model}/{stage}.pt"  # stage: pretrain, probe, finetune


def data_file(dataset: str) -> str:
    """The prepared data set (prepare_data's output)."""
    return DATA.format(dataset=dataset)


def eval_subset_file(dataset: str, eval_seed: int) -> str:
    """The prepared data set with another evaluation subset of the same training split."""
    return EVAL_SUBSET.format(dataset=dataset, eval_seed=eval_seed)


def trained_checkpoint(model: str, stage: str) -> str:
    """The checkpoint the workflow trains for a model's stage."""
    return CHECKPOINT.format(model=model, stage=stage)


def objective_checkpoint(model: str, settings: dict, objective: str) -> str:
    """The trained weights an objective is measured on: given in the model's `settings`
    (`checkpoint`, `probe.checkpoint`, `finetune.checkpoint`), else trained by the workflow."""
    if objective in ("pretext", "contrastive", "supervised"):
        return settings["checkpoint"] or trained_checkpoint(model, "pretrain")
    return settings[objective].get("checkpoint") or trained_checkpoint(model, objective)
