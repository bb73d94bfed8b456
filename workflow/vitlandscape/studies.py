"""Studies: named sweeps over the training settings and seeds of models (config `studies:`).

A study names base models of `models:` and what varies:

    vary: {KEY: [values]}    KEY a dotted training setting of a model (`pretrain.batch_size`,
                             `pretrain.recipe.sam`, `ema_momentum`) or `seed` (the seed of every
                             stage); besides `seed`, one key at most
    direction_seeds: [...]   every variant's surfaces on these direction pairs
    eval_seeds: [...]        and on these evaluation subsets of the training split

Each combination is a variant: a model of its own, named by how it differs from its base,
`mae.seed=1`, `mae.pretrain.batch_size=64.seed=2`. A combination that differs in nothing is
the base itself, so nothing of the base reruns. A variant measured on other directions or
another evaluation subset shares the checkpoints of its training, `mae.seed=1.directions=2`,
`mae.seed=1.eval=3`. The name depends only on what differs, so studies that ask for the same
training share it. Imports nothing heavy: the workflow reads it while it parses.
"""
import copy
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from vitlandscape import methods, paths, schemaerrors
from vitlandscape.train import recipes

# Keys of a model entry that say what the model is or where its weights come from, not how it trains.
NOT_TRAINING = {"method", "arch", "checkpoint", "trust_checkpoint", "objectives", "accuracy",
                "probe.checkpoint", "finetune.checkpoint"}
# Settings only some methods have: top-level or dotted key -> (those methods, what the key is)
ONLY_FOR = {
    **dict.fromkeys(("ema_momentum", "ema_schedule", "ema_batch_reference", "consistency_weight"),
                    (("rcmae",), "an RC-MAE setting")),
    "downstream_weights": (("rcmae", "mocov3"), "a setting of the methods with two sets of weights (RC-MAE, MoCo v3)"),
    "moco": (("mocov3",), "a MoCo v3 setting"),
    **dict.fromkeys(("norm_pix_loss", "mask_ratio", "arch.decoder_embed_dim", "arch.decoder_depth",
                     "arch.decoder_num_heads"), (("mae", "rcmae"), "a masked-image-modelling setting")),
    **dict.fromkeys(("probe", "finetune"), (methods.SELF_SUPERVISED, "a self-supervised model's downstream stage")),
}
VALUE_TEXT = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]*")


@dataclass(frozen=True)
class Variant:
    """One model of a study: a training (`trained_as` is itself) or a training measured on other
    directions or another evaluation subset (`trained_as` names the training it shares)."""
    name: str
    study: str
    base: str
    trained_as: str
    measured_as: str  # whose Hessian and flatness it has: itself without its direction seed
    setting: str  # the varied value as text (the training seed in a seed-only study)
    training_seed: int
    direction_seed: int
    eval_seed: int
    model: dict  # its config entry

    @property
    def trains(self) -> bool:
        return self.trained_as == self.name


def _text(value) -> str:
    """A value as a variant's name shows it."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return repr(value) if isinstance(value, float) else str(value)


def _get(entry: dict, key: str):
    node = entry
    for part in key.split("."):
        node = node[part]
    return node


def _set(entry: dict, key: str, value) -> dict:
    """A copy of the model entry with the dotted key set (a missing or null level created)."""
    entry = copy.deepcopy(entry)
    *parents, leaf = key.split(".")
    node = entry
    for part in parents:
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
    node[leaf] = value
    return entry


def _effective(entry: dict, key: str):
    """What the model trains with for `key`: a stage's recipe and learning rate as the official
    recipe fills them in (an absent `pretrain.recipe.sam` is the official `none`)."""
    stage, *rest = key.split(".")
    if stage in ("pretrain", "probe", "finetune") and rest and rest[0] in ("recipe", "blr", "weight_decay"):
        return _get(recipes.resolve(entry, stage), ".".join(rest))
    try:
        return _get(entry, key)
    except (KeyError, TypeError):
        return None


def _schema_node(schema: dict, key: str) -> dict | None:
    """The schema of a dotted model key, or None when the model schema has no such key."""
    node = schema["$defs"]["model"]
    for part in key.split("."):
        while "$ref" in node:
            node = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
        branches = [b for b in node.get("oneOf", [node]) if "properties" in b]
        found = [b["properties"][part] for b in branches if part in b["properties"]]
        if not found:
            return None
        node = found[0]
    return node


def _key_problems(where: str, key: str, base: str, entry: dict, schema: dict) -> list[str]:
    """A varied key the models' schema has, that is a training setting, of the base's method."""
    method = entry["method"]
    if _schema_node(schema, key) is None:
        return [f"{where}: {key} is not a setting of a model (config/README.md lists them; dotted, "
                f"e.g. pretrain.batch_size, pretrain.recipe.sam, ema_momentum, seed)"]
    if key in NOT_TRAINING or key.split(".")[0] in ("method", "objectives", "accuracy", "checkpoint"):
        return [f"{where}: {key} is not a training setting (it says what model {base} is or where its "
                f"weights come from)"]
    top = key.split(".")[0]
    for part in (top, key):
        if part in ONLY_FOR and method not in ONLY_FOR[part][0]:
            return [f"{where}: {key} is {ONLY_FOR[part][1]}; models.{base} is method {method}, which has none"]
    if top == "arch" and not isinstance(entry["arch"], dict):
        return [f"{where}: models.{base}.arch is the preset {entry['arch']}; vary arch keys of an arch given key by key"]
    if entry["checkpoint"] or (top in ("probe", "finetune") and entry[top]["checkpoint"]):
        return [f"{where}: models.{base} is given as a checkpoint: there is no training whose {key} could vary"]
    if top in ("probe", "finetune") and top not in methods.objectives(entry):
        return [f"{where}: {key}: the study measures {base}'s objectives {', '.join(methods.objectives(entry))}, "
                f"none of which is trained by {top}"]
    return []


def _value_problems(where: str, key: str, values: list, entry: dict, schema_path) -> list[str]:
    out = []
    for value in values:
        if isinstance(value, (dict, list)):
            out.append(f"{where}: {value!r} is not a single value; expected numbers, strings, booleans or null")
        elif isinstance(value, str) and not VALUE_TEXT.fullmatch(value):
            out.append(f"{where}: {value!r} cannot name a variant; expected letters, digits and _ . + -")
        else:
            found = schemaerrors.model_problems(_set(entry, key, value), schema_path)
            out += [f"{where}: {value!r}: {line}" for line in found]
    return out


def _seeds(study: dict, key: str, default: int) -> list[int]:
    return study.get(key) or [default]


def _split_vary(vary: dict) -> tuple[str | None, list, list | None]:
    """(the setting key or None, its values, the training seeds or None)."""
    settings = [k for k in vary if k != "seed"]
    key = settings[0] if settings else None
    return key, (vary[key] if key else [None]), vary.get("seed")


def study_problems(config: dict, schema_path=paths.SCHEMA) -> list[str]:
    """What is wrong with `studies`, each line naming the key at fault; checked before any job."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    models, out, names = config["models"], [], set()
    for i, study in enumerate(config["studies"]):
        where = f"studies[{i}] ({study['name']})"
        if study["name"] in names:
            out.append(f"{where}.name: another study is called {study['name']}; expected a name of its own")
        names.add(study["name"])
        if not (study["vary"] or study.get("direction_seeds") or study.get("eval_seeds")):
            out.append(f"{where}: varies nothing; give vary, direction_seeds or eval_seeds")
        settings = [k for k in study["vary"] if k != "seed"]
        if len(settings) > 1:
            out.append(f"{where}.vary: {', '.join(settings)}: one setting at most besides seed (a study "
                       f"for each, or their product as models of your own)")
        for base in study["models"]:
            if base not in models:
                out.append(f"{where}.models: {base} is not a model (models: {', '.join(models)})")
                continue
            for key, values in study["vary"].items():
                problems = _key_problems(f"{where}.vary.{key}", key, base, models[base], schema)
                out += problems or _value_problems(f"{where}.vary.{key}", key, values, models[base], schema_path)
    return out


def _variant(config: dict, study: dict, key, base: str, value, seed, direction_seed, eval_seed) -> Variant:
    entry, parts = config["models"][base], [base]
    if key is not None and value != _effective(entry, key):
        entry, parts = _set(entry, key, value), parts + [f"{key}={_text(value)}"]
    if seed is not None and seed != entry["seed"]:
        entry, parts = _set(entry, "seed", seed), parts + [f"seed={seed}"]
    trained_as = ".".join(parts)
    eval_part = [f"eval={eval_seed}"] if eval_seed != config["data"]["seed"] else []
    direction_part = [f"directions={direction_seed}"] if direction_seed != config["landscape"]["direction_seed"] else []
    return Variant(name=".".join(parts + direction_part + eval_part), study=study["name"], base=base,
                   trained_as=trained_as, measured_as=".".join(parts + eval_part),
                   setting=_text(entry["seed"] if key is None else _effective(entry, key)),
                   training_seed=entry["seed"], direction_seed=direction_seed, eval_seed=eval_seed, model=entry)


def _combinations(config: dict, study: dict):
    """(base, setting value, training seed, direction seed, eval seed) of every variant, in order."""
    key, values, seeds = _split_vary(study["vary"])
    directions = _seeds(study, "direction_seeds", config["landscape"]["direction_seed"])
    evals = _seeds(study, "eval_seeds", config["data"]["seed"])
    for base in study["models"]:
        for value, seed, d, e in itertools.product(values, seeds or [None], directions, evals):
            yield key, base, value, seed, d, e


def study_variants(config: dict, study: dict) -> list[Variant]:
    """The study's variants, base by base, then by setting, training seed, direction and eval seed."""
    return [_variant(config, study, *combination) for combination in _combinations(config, study)]


def variants(config: dict) -> dict[str, Variant]:
    """Every model the studies add, by name: each variant, and the training and the measurement
    it shares (its entry at the default direction seed, and at the default eval seed too);
    the base models themselves are not among them."""
    found = {}
    default_d, default_e = config["landscape"]["direction_seed"], config["data"]["seed"]
    for study in config["studies"]:
        for key, base, value, seed, d, e in _combinations(config, study):
            for dd, ee in ((default_d, default_e), (default_d, e), (d, e)):
                v = _variant(config, study, key, base, value, seed, dd, ee)
                if v.name not in config["models"]:
                    found.setdefault(v.name, v)
    return found


def varied_key(study: dict) -> str | None:
    """The setting a study varies besides seeds, None for a seed-only study."""
    return _split_vary(study["vary"])[0]


def seed_index(study: dict, v: Variant) -> int:
    """The position of the variant's training seed in the study's list (0 when seeds do not vary):
    variant k of one model is paired with variant k of another."""
    seeds = study["vary"].get("seed")
    return seeds.index(v.training_seed) if seeds else 0


def training_columns(entry: dict) -> dict:
    """How a variant's pretraining ran where a study varies it: the batch, the peak learning rate
    and whether it follows the batch (the blr rule) and, for RC-MAE, the EMA momentum used."""
    stage = recipes.resolve(entry, "pretrain")
    columns = {"pretrain_batch_size": stage["batch_size"], "pretrain_lr": stage["lr"],
               "lr_follows_batch": entry["pretrain"].get("lr") is None}
    if entry["method"] == "rcmae":
        columns["ema_momentum_used"] = recipes.batch_scaled(entry["ema_momentum"], stage["batch_size"],
                                                            entry["ema_batch_reference"])
    return columns
