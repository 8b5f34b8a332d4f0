"""Preset configs: reading, validation against ``workflow/schemas/config.schema.yaml``, and resolution of the sweep.

* ``read_yaml`` / ``load``: a key written twice in one mapping of a preset file is an error naming the key and the
  file (PyYAML and Snakemake silently keep the last one).
* Overriding (config/README.md): ``merge`` (deep, as a second ``--configfile``), ``cli_config`` (Snakemake's
  ``--config`` entries with their values read as YAML), ``load_merged`` (``avb check-config PRESET MORE.yaml
  --config ...``) and ``assign`` (``avb train CONFIG train.steps=100``: dotted keys, each checked by the schema).
* ``validate``: fills the schema's defaults and raises ``ConfigError`` naming every offending key path
  (``overrides[1].eval.ais_stepz``) and value; non-finite numbers (``.nan``, ``.inf``) are rejected anywhere.
* ``overrides``: a list of ``{match: {method?, z_dim?, dataset?}, model?, train?, eval?}`` applied in order to every
  run of the sweep whose wildcards equal all the given match keys. An override matching no run is an error.
* Resolution: ``sweep`` (the runs), ``run_config`` and ``rows`` (the fully resolved ``model``, ``train`` and ``eval``
  sections of a run); what each job of a run reads is ``avb.jobs``.
* The schema is the only place defaults are written: ``section`` checks a job's settings file against the schema's
  definition of its section (``eval``, ``toy.eval``, ``schools``, ...) and fills its defaults; ``defaults`` gives
  them for code that completes a partial dict; ``choices`` the allowed values of a list setting (the workflow's
  wildcard constraints).

This module imports no torch (the Snakefile imports it).
"""
from __future__ import annotations

import copy
import functools
import itertools
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"
SECTIONS = ("model", "train", "eval")   # the sections an override may set
MATCH_KEYS = ("dataset", "method", "z_dim")


class ConfigError(ValueError):
    """A config key is unknown, written twice, or has a bad value."""


# ------------------------------------------------------------------------------------------------------- reading
def _duplicate_keys(node: yaml.Node, parts: list[str | int]) -> list[str]:
    """'key (lines a and b)' for each key written twice in one mapping of the composed YAML tree under ``node``."""
    found = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key != "<<":
                if key in seen:
                    found.append(f"{key_path([*parts, key])} (lines {seen[key]} and {key_node.start_mark.line + 1})")
                else:
                    seen[key] = key_node.start_mark.line + 1
            found += _duplicate_keys(value_node, [*parts, key if key is not None else "?"])
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found += _duplicate_keys(item, [*parts, i])
    return found


def parse_yaml(text: str, source: str, parts: Sequence[str | int] = ()) -> Any:
    """``text`` parsed as YAML, safely; a key written twice in one mapping is a ``ConfigError`` naming ``source``
    (and the key path, below ``parts``)."""
    try:
        dupes = _duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader), list(parts))
    except yaml.YAMLError as err:
        raise ConfigError(f"{source} is not valid YAML: {err}") from None
    if dupes:
        raise ConfigError(f"{source}: key written twice (only one value can hold): " + "; ".join(dupes))
    return yaml.safe_load(text)


def read_yaml(path: str | Path) -> Any:
    """The YAML file ``path``, parsed safely; a key written twice in one mapping is a ``ConfigError``."""
    return parse_yaml(Path(path).read_text(), f"config file {path}")


# ---------------------------------------------------------------------------------------------------- overriding
def merge(base: Any, over: Any) -> Any:
    """``over`` deep-merged onto ``base`` (a fresh copy): mappings key by key, recursively; any other value
    (a number, a string, a list such as ``seeds`` or ``overrides``) replaces the one before. How a second
    ``--configfile`` and ``--config`` apply to a preset."""
    if not (isinstance(base, dict) and isinstance(over, dict)):
        return copy.deepcopy(over)
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if key in out else copy.deepcopy(value)
    return out


def split_assignment(entry: str, what: str) -> tuple[str, str]:
    """``key=value`` -> (key, value); ``ConfigError`` naming ``what`` (the option) where there is no ``=``."""
    key, sep, value = entry.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{what} {entry!r}: expected KEY=VALUE")
    return key.strip(), value


def cli_config(entries: Sequence[str] | None) -> dict[str, Any]:
    """Snakemake's ``--config KEY=VALUE ...`` entries with their values read as YAML, as a preset file's are
    (``train={steps: 100}`` -> ``{"train": {"steps": 100}}``; an empty value is null). Snakemake's own parser
    reads nested values as strings only; its key syntax (a name, no dots) is checked by Snakemake before."""
    out: dict[str, Any] = {}
    for entry in entries or ():
        key, text = split_assignment(entry, "--config")
        value = parse_yaml(text, f"--config {key}", [key]) if text.strip() else None
        out = merge(out, {key: value})
    return out


def assign(cfg: dict[str, Any], entries: Sequence[str], sections: dict[str, str], source: str) -> dict[str, Any]:
    """``cfg`` (a copy) with each ``SECTION.KEY=VALUE`` of ``entries`` set, the value read as YAML
    (``train.steps=100``, ``model.arch=conv0``). ``sections`` maps each section one may set to its schema
    definition (``{"train": "train"}``; the toy's ``{"train": "toy.train"}``); a key the schema does not declare
    there, or a value it does not allow, is a ``ConfigError`` naming the key. Nothing else is filled in."""
    out = copy.deepcopy(cfg)
    for entry in entries:
        key, text = split_assignment(entry, "setting")
        sec, dot, name = key.partition(".")
        if not dot or sec not in sections or not name or "." in name:
            raise ConfigError(f"{source}: {key}: unknown key (give SECTION.KEY=VALUE with SECTION one of "
                              f"{', '.join(sections)}, e.g. train.steps=100)")
        known = _subschema(sections[sec]).get("properties", {})
        if name not in known:
            raise ConfigError(f"{source}: {key}: unknown key (allowed in {sec}: {', '.join(sorted(known))})")
        value = parse_yaml(text, f"{source}: {key}", [sec, name]) if text.strip() else None
        section(sections[sec], {name: value}, source)  # the value checked as the schema's; its defaults unused
        out.setdefault(sec, {})[name] = value
    return out


def read_settings(path: str | Path) -> dict[str, Any]:
    """A job's JSON settings file (as the pipeline's local rules write them); ``ConfigError`` naming the file if it
    cannot be read or holds no mapping. The caller validates the values (``validate``)."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"settings file {path}: {err}") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"settings file {path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def load(path: str | Path) -> dict[str, Any]:
    """Read and validate the preset file ``path`` (defaults filled in)."""
    return validate(read_yaml(path) or {}, source=f"config file {path}")


def load_merged(paths: Sequence[str | Path], cli: Sequence[str] = ()) -> dict[str, Any]:
    """What the Snakefile validates for ``snakemake --configfile PATHS... --config CLI...``: the files deep-merged
    in order (``merge``), then the ``--config`` entries (``cli_config``); validated, defaults filled in."""
    cfg: dict[str, Any] = {}
    for path in paths:
        cfg = merge(cfg, read_yaml(path) or {})
    given = " + ".join([*map(str, paths), *(["--config " + " ".join(cli)] if cli else [])])
    return validate(merge(cfg, cli_config(cli)), source=f"config {given}" if len(paths) > 1 or cli
                    else f"config file {paths[0]}")


# ---------------------------------------------------------------------------------------------------- validation
def key_path(parts: Iterable[str | int]) -> str:
    """``["overrides", 1, "eval", "ais_steps"]`` -> ``overrides[1].eval.ais_steps``."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<top level>"


@functools.lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _with_defaults(validator_cls):
    import jsonschema

    validate_props = validator_cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_props(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_cls, {"properties": set_defaults})


def _non_finite(obj: Any, parts: list[str | int]) -> list[str]:
    if isinstance(obj, float) and not math.isfinite(obj):
        return [f"  {key_path(parts)}: {obj} is not a finite number"]
    if isinstance(obj, dict):
        return [line for k, v in obj.items() for line in _non_finite(v, [*parts, k])]
    if isinstance(obj, (list, tuple)):
        return [line for i, v in enumerate(obj) for line in _non_finite(v, [*parts, i])]
    return []


def _error_lines(error) -> list[str]:
    """One line per problem, each starting with the key path; an unknown key is named with its own path."""
    parts = list(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = set(error.schema.get("properties", {}))
        patterns = list(error.schema.get("patternProperties", {}))
        extra = [k for k in error.instance if k not in known and not any(re.search(p, k) for p in patterns)]
        allowed = ", ".join(sorted(known)) or "none"
        return [f"  {key_path([*parts, k])}: unknown key (allowed here: {allowed})" for k in extra]
    if error.validator == "pattern" and "x-pattern-error" in error.schema:
        return [f"  {key_path(parts)}: {error.instance!r}: {error.schema['x-pattern-error']}"]
    return [f"  {key_path(parts)}: {error.message}"]


def _raise_errors(errors, source: str) -> None:
    lines = [line for e in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path]) for line in _error_lines(e)]
    if lines:
        raise ConfigError(f"invalid {source}:\n" + "\n".join(lines))


def _method_overrides_error(value: Any, source: str) -> ConfigError:
    """The error for the retired ``method_overrides`` key, with the ``overrides`` to write instead."""
    items = [{"match": {"method": m}, **(over if isinstance(over, dict) else {})}
             for m, over in (value.items() if isinstance(value, dict) else [])]
    example = yaml.safe_dump({"overrides": items or [{"match": {"method": "vae"}, "train": {"lr": 1.0e-4}}]},
                             default_flow_style=None, sort_keys=False)
    return ConfigError(f"invalid {source}:\n  method_overrides: no longer supported; it is now `overrides`, a list "
                       f"applied in order to the runs each item matches (match: method, z_dim and/or dataset). "
                       f"Write instead:\n{example}")


# Keys renamed so that one setting has one name in every section: the old name is an error naming the new one.
RENAMED = {"toy.eval.knn_k": "toy.eval.kl_k"}


def _renamed_errors(obj: Any, prefix: str) -> list[str]:
    """One line per renamed key in ``obj``, the config section at dotted path ``prefix`` ('' = the whole config)."""
    lines = []
    for old, new in RENAMED.items():
        if prefix and not old.startswith(prefix + "."):
            continue
        node = obj
        for part in old[len(prefix) + 1 if prefix else 0:].split("."):
            node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                break
        else:
            lines.append(f"  {old}: renamed to {new} (write `{new.rsplit('.', 1)[1]}: {node}`)")
    return lines


def validate(config: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Fill defaults and validate; raises ConfigError naming the offending key paths and values."""
    import jsonschema

    if not isinstance(config, dict):
        raise ConfigError(f"invalid {source}: expected a mapping of keys, got {type(config).__name__}")
    if "method_overrides" in config:
        raise _method_overrides_error(config["method_overrides"], source)
    bad = _renamed_errors(config, "") + _non_finite(config, [])
    if bad:
        raise ConfigError(f"invalid {source}:\n" + "\n".join(bad))
    schema = _schema()
    # Pass 1, no defaults: every error, overrides included (their sections are checked against the same $defs as
    # the top-level sections, but an override must not be filled with defaults: it sets only what it names).
    _raise_errors(jsonschema.Draft202012Validator(schema).iter_errors(config), source)
    cfg = copy.deepcopy({k: v for k, v in config.items() if k != "overrides"})
    _raise_errors(_with_defaults(jsonschema.Draft202012Validator)(schema).iter_errors(cfg), source)
    cfg["overrides"] = copy.deepcopy(config.get("overrides", []))
    _check_overrides(cfg, source)
    return cfg


def _check_overrides(cfg: dict[str, Any], source: str) -> None:
    runs = sweep(cfg)
    lines = []
    for i, over in enumerate(cfg["overrides"]):
        if not any(k in over for k in SECTIONS):
            lines.append(f"  overrides[{i}]: sets nothing (give model, train and/or eval)")
        if not any(matches(over["match"], r["dataset"], r["method"], r["z_dim"]) for r in runs):
            lines.append(f"  overrides[{i}]: match {over['match']} matches no run of the sweep (datasets "
                         f"{cfg['datasets']} x methods {cfg['methods']} x z_dims {cfg['z_dims']} x seeds "
                         f"{cfg['seeds']})")
    if lines:
        raise ConfigError(f"invalid {source}:\n" + "\n".join(lines))


# ------------------------------------------------------------------------------------------- sections of the schema
def _subschema(section: str) -> dict[str, Any]:
    """The schema of the dotted ``section`` (``eval``, ``toy.eval``, ``schools``, ...; ``$ref``s followed), with the
    schema's ``$defs`` beside it so that it validates on its own."""
    schema = _schema()
    node: dict[str, Any] = schema
    for part in section.split("."):
        props = node.get("properties", {})
        if part not in props:
            raise KeyError(f"{section}: no section {part!r} in {SCHEMA_PATH.name} (has: {', '.join(props)})")
        node = props[part]
        while "$ref" in node:
            node = {**schema["$defs"][node["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in node.items()
                                                                            if k not in ("$ref", "default")}}
    return {"$defs": schema["$defs"], **{k: v for k, v in node.items() if k != "default"}}


def section(name: str, given: dict[str, Any], source: str) -> dict[str, Any]:
    """``given`` validated against the schema's section ``name`` (dotted: ``eval``, ``toy.eval``, ``schools``) and
    completed with its defaults: how a job checks its settings file. Errors name the key as the preset would
    (``eval.ais_stepz``) and ``source`` (the file). A file the pipeline wrote is complete and passes as it is."""
    import jsonschema

    if not isinstance(given, dict):
        raise ConfigError(f"invalid {source}: expected a mapping of keys, got {type(given).__name__}")
    prefix: list[str | int] = list(name.split("."))
    bad = _renamed_errors(given, name) + _non_finite(given, prefix)
    if bad:
        raise ConfigError(f"invalid {source}:\n" + "\n".join(bad))
    schema = _subschema(name)

    def prefixed(errors):
        for e in errors:
            e.path.extendleft(reversed(prefix))
            yield e

    _raise_errors(prefixed(jsonschema.Draft202012Validator(schema).iter_errors(given)), source)
    out = copy.deepcopy(given)
    _raise_errors(prefixed(_with_defaults(jsonschema.Draft202012Validator)(schema).iter_errors(out)), source)
    return out


@functools.lru_cache(maxsize=None)
def _defaults(name: str) -> str:
    return json.dumps(section(name, {}, f"defaults of {name}"))


def defaults(name: str) -> dict[str, Any]:
    """The schema's defaults of section ``name`` (a fresh copy): the one place defaults are written down."""
    return json.loads(_defaults(name))


def choices(name: str) -> list[str]:
    """The values the schema allows in the list setting ``name`` (``methods``, ``datasets``, ``toy.methods``,
    ``schools.methods``): its items' enum. The workflow's wildcard constraints are built from these."""
    node = _subschema(name)["items"]
    if "$ref" in node:
        node = _schema()["$defs"][node["$ref"].rsplit("/", 1)[1]]
    return list(node["enum"])


# ---------------------------------------------------------------------------------------------------- resolution
def sweep(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """One dict (dataset, method, z_dim, seed) per run of the sweep datasets x methods x z_dims x seeds."""
    grid = itertools.product(cfg["datasets"], cfg["methods"], cfg["z_dims"], cfg["seeds"])
    return [dict(zip(("dataset", "method", "z_dim", "seed"), values)) for values in grid]


def matches(match: dict[str, Any], dataset: str, method: str, z_dim: int) -> bool:
    """Whether an override's ``match`` holds for the run (every key it gives equals the run's)."""
    run = {"dataset": dataset, "method": method, "z_dim": int(z_dim)}
    return all(run[k] == v for k, v in match.items())


def run_config(cfg: dict[str, Any], dataset: str, method: str, z_dim: int, seed: int) -> dict[str, Any]:
    """The run's wildcards and its fully resolved ``model``, ``train`` and ``eval`` sections: the top-level
    sections with every matching override applied in order (each replaces the keys it names)."""
    sections = {s: dict(cfg[s]) for s in SECTIONS}
    for over in cfg["overrides"]:
        if matches(over["match"], dataset, method, z_dim):
            for s in SECTIONS:
                sections[s].update(over.get(s, {}))
    return {"method": method, "dataset": dataset, "z_dim": int(z_dim), "seed": int(seed), **sections}


def rows(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """``run_config`` of every run of the sweep, in sweep order."""
    return [run_config(cfg, **r) for r in sweep(cfg)]
