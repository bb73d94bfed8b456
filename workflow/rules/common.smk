# Helpers shared by the rules: config checks, per-stage settings, code hashes, targets.
import copy
import hashlib
import json
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

LIBDIR = Path(workflow.basedir) / "workflow"
sys.path.insert(0, str(LIBDIR))
from vitlandscape import configcheck  # noqa: E402

# Every job runs the library from this checkout: `python -m vitlandscape STAGE ...`.
VL = f"PYTHONPATH={LIBDIR}${{PYTHONPATH:+:$PYTHONPATH}} python -m vitlandscape"
ENV = "../../envs/vitlandscape.yaml"

config = copy.deepcopy(config)  # defaults filled by validate() may be shared objects
_problems = configcheck.problems(config)
if _problems:
    raise WorkflowError("invalid config:\n  " + "\n  ".join(_problems))

MODELS = config["models"]
DATASET = config["data"]["dataset"]
DATA_FILE = f"results/data/{DATASET}.pt"
TRAIN_GPU = 1 if config["device"] == "cuda" else 0


wildcard_constraints:
    model="|".join(MODELS),
    dataset="[A-Za-z0-9_]+",


# Library modules each stage imports; their hash goes into params so that editing the
# code reruns exactly the stages that use it (Snakemake does not track imports).
_COMMON = ["__init__.py", "__main__.py", "cli.py", "stages.py", "checkpoints.py", "data.py", "devices.py"]
_MODELS = ["models/__init__.py", "models/arch.py", "models/mae.py", "models/classifier.py",
           "models/posembed.py", "masking.py"]
STAGE_MODULES = {
    "prepare_data": _COMMON,
    "train": _COMMON + _MODELS + ["train.py"],
    "table": _COMMON,
}


def code_hash(stage):
    digest = hashlib.sha256()
    for module in sorted(STAGE_MODULES[stage]):
        digest.update(module.encode())
        digest.update((LIBDIR / "vitlandscape" / module).read_bytes())
    return digest.hexdigest()[:16]


def as_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


_BASE_KEYS = ["method", "arch", "seed", "norm_pix_loss", "mask_ratio", "downstream_weights"]
_RCMAE_KEYS = ["ema_momentum", "ema_schedule", "consistency_weight"]


def stage_settings(name, stage):
    """Only the config a stage depends on, so an unrelated edit reruns nothing."""
    m = MODELS[name]
    keys = _BASE_KEYS + [stage] + (_RCMAE_KEYS if stage == "pretrain" and m["method"] == "rcmae" else [])
    return as_json({"name": name, **{k: m[k] for k in keys}})


def pretrained(wildcards):
    """The model's pretrained checkpoint: given in the config, or trained by the workflow."""
    given = MODELS[wildcards.model]["checkpoint"]
    return given if given else f"results/checkpoints/{wildcards.model}/pretrain.pt"


def self_supervised():
    return [n for n, m in MODELS.items() if m["method"] in ("mae", "rcmae")]


def supervised():
    return [n for n, m in MODELS.items() if m["method"] == "supervised"]


def accuracy_inputs():
    files = [f"results/checkpoints/{n}/{stage}.json" for n in self_supervised() for stage in ("probe", "finetune")]
    return files + [f"results/checkpoints/{n}/pretrain.pt" for n in supervised()]


def all_targets():
    return ["results/metrics/accuracy.csv"]


def finished_message():
    return ("vitlandscape finished. Tables: results/metrics/  Figures: results/figures/  "
            "Surfaces: results/surfaces/  Logs: results/logs/  Timings: results/benchmarks/")
