"""The config's JSON-schema validation, defaults filled, with one readable line per error.

Each line names the key path (`models.mae.arch.embed_dim`, `landscape.tile[0]`), the value
found and what is expected, in place of jsonschema's dump of the schema.
"""
import copy
import difflib
import json
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator, validators

_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object",
               type(None): "null"}
_TYPE_WORDS = {"object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer",
               "number": "a number", "boolean": "true or false", "null": "null"}
_BOUNDS = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}


def _properties_with_defaults(validator, properties, instance, schema):
    """jsonschema's `properties`, after setting each missing key that has a default (a copy,
    so that no two places of the config share one object)."""
    if validator.is_type(instance, "object"):
        for name, sub in properties.items():
            if "default" in sub:
                instance.setdefault(name, copy.deepcopy(sub["default"]))
    yield from Draft202012Validator.VALIDATORS["properties"](validator, properties, instance, schema)


_Validator = validators.extend(Draft202012Validator, {"properties": _properties_with_defaults})


def problems(config: dict, schema_path) -> list[str]:
    """Validate `config` against the schema, filling in its defaults as snakemake.utils.validate
    does; one line per error, none when it is valid."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    lines = [line for error in _Validator(schema).iter_errors(config) for line in _lines(error)]
    return list(dict.fromkeys(lines))


def _join(path: str, key) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _show(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_type(value) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _types(types) -> str:
    return " or ".join(_TYPE_WORDS.get(t, f"a {t}") for t in ([types] if isinstance(types, str) else types))


def _hint(value, choices) -> str:
    close = difflib.get_close_matches(value, [str(c) for c in choices], n=1) if isinstance(value, str) else []
    return f" (did you mean {close[0]}?)" if close else ""


def _range(schema: dict) -> str:
    """E.g. 'a number > 0 and < 1'."""
    limits = " and ".join(f"{op} {schema[k]}" for k, op in _BOUNDS.items() if k in schema)
    return f"{'an integer' if schema.get('type') == 'integer' else 'a number'} {limits}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word[:-1] + 'ies' if word.endswith('y') else word + 's'}"


def _count(schema: dict) -> str:
    low, high = schema.get("minItems"), schema.get("maxItems")
    text = (f"exactly {_plural(low, 'item')}" if low == high else f"at least {_plural(low, 'item')}" if high is None
            else f"at most {_plural(high, 'item')}" if low is None else f"{low} to {high} items")
    return text + (f": {schema['description']}" if "description" in schema else "")


def _describe(schema: dict) -> str:
    """What a oneOf branch accepts, in words."""
    if "enum" in schema:
        return f"one of {', '.join(map(str, schema['enum']))}"
    if schema.get("type") == "object" and "properties" in schema:
        return f"a mapping of {', '.join(schema['properties'])}"
    return _types(schema.get("type", []))


def _fits(schema: dict, value) -> bool:
    """Whether the value is of the kind a oneOf branch takes, so that the branch's own errors say more."""
    if "enum" in schema:
        return _json_type(value) in {_json_type(v) for v in schema["enum"]}
    if "type" in schema:
        return any(Draft202012Validator.TYPE_CHECKER.is_type(value, t)
                   for t in ([schema["type"]] if isinstance(schema["type"], str) else schema["type"]))
    return True


def _lines(error) -> list[str]:
    path, kind, rule, schema, value = "", error.validator, error.validator_value, error.schema, error.instance
    for key in error.absolute_path:
        path = _join(path, key)
    where = path or "config"
    if kind == "additionalProperties":
        allowed = list(schema.get("properties", {}))
        return [f"{_join(path, key)}: unknown key{_hint(key, allowed)}; expected one of {', '.join(allowed)}"
                for key in sorted(set(value) - set(allowed), key=str)]
    if kind == "required":
        return [f"{_join(path, key)}: missing; this key is required" for key in rule if key not in value]
    if kind == "pattern" and list(error.schema_path)[-2:-1] == ["propertyNames"]:
        return [f"{_join(path, value)}: {_show(value)} is not allowed as a name; expected a name matching {rule}"]
    if kind in ("oneOf", "anyOf"):
        fitting = {i for i, branch in enumerate(rule) if _fits(branch, value)}
        inner = [line for e in error.context if e.relative_schema_path[0] in fitting for line in _lines(e)]
        return inner or [f"{where}: {_show(value)} is not allowed; expected "
                         + " or ".join(_describe(branch) for branch in rule)]
    shown = _show(value)
    if kind == "type":
        found = "empty (null)" if value is None else f"{shown} is {_types(_json_type(value))}"
        message = f"{found}; expected {_types(rule)}"
    elif kind == "enum":
        message = f"{shown} is not allowed{_hint(value, rule)}; expected one of {', '.join(map(str, rule))}"
    elif kind in _BOUNDS:
        message = f"{shown} is out of range; expected {_range(schema)}"
    elif kind == "multipleOf":
        message = f"{shown} is not allowed; expected a multiple of {rule}"
    elif kind in ("minItems", "maxItems"):
        message = f"{shown} has {_plural(len(value), 'item')}; expected {_count(schema)}"
    elif kind == "minProperties":
        message = f"{shown} is empty; expected at least {_plural(rule, 'entry')}"
    elif kind == "uniqueItems":
        message = f"{shown} repeats an item; expected each item at most once"
    elif kind == "pattern":
        message = f"{shown} is not allowed; expected a string matching {rule}"
    else:
        message = error.message
    return [f"{where}: {message}"]


def model_problems(entry: dict, schema_path) -> list[str]:
    """Validate one model entry against the schema's model definition (a study's variant);
    one line per error, its path relative to the entry."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    model = {"$defs": schema["$defs"], "$ref": "#/$defs/model"}
    lines = [line for error in _Validator(model).iter_errors(copy.deepcopy(entry)) for line in _lines(error)]
    return list(dict.fromkeys(lines))
