"""Preset configs: reading, validation against ``workflow/schemas/config.schema.yaml``, and resolution of the sweep.

* ``read_yaml`` / ``load``: a key written twice in one mapping of a preset file is an error naming the key and the
  file (PyYAML and Snakemake silently keep the last one).
* ``validate``: fills the schema's defaults and raises ``ConfigError`` naming every offending key path
  (``overrides[1].eval.ais_stepz``) and value; non-finite numbers (``.nan``, ``.inf``) are rejected anywhere.
* ``overrides``: a list of ``{match: {method?, z_dim?, dataset?}, model?, train?, eval?}`` applied in order to every
  run of the sweep whose wildcards equal all the given match keys. An override matching no run is an error.
* Resolution: ``run_config`` (the fully resolved ``model``, ``train`` and ``eval`` sections of one run) and what each
  job of that run reads, which is all that job tracks: ``train_config`` (training; ``config.json``),
  ``eval_config`` (AIS evaluation) and ``convergence_config`` (the AIS-budget study). Data are identified by their
  content checksum (``DATASET_SHA256``), never by the folder holding them.

This module imports no torch (the Snakefile imports it).
"""
from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable

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


def read_yaml(path: str | Path) -> Any:
    """The YAML file ``path``, parsed safely; a key written twice in one mapping is a ``ConfigError``."""
    text = Path(path).read_text()
    try:
        dupes = _duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader), [])
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if dupes:
        raise ConfigError(f"config file {path}: key written twice (only one value can hold): " + "; ".join(dupes))
    return yaml.safe_load(text)


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


def validate(config: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Fill defaults and validate; raises ConfigError naming the offending key paths and values."""
    import jsonschema

    if not isinstance(config, dict):
        raise ConfigError(f"invalid {source}: expected a mapping of keys, got {type(config).__name__}")
    if "method_overrides" in config:
        raise _method_overrides_error(config["method_overrides"], source)
    bad = _non_finite(config, [])
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


# Keys a job does not read are left out of what it tracks, so that changing them reruns nothing of it. Only keys
# known to be unread are dropped: a key added to the schema later is kept (it reruns too much, never too little).
ADVERSARY_TRAIN_KEYS = ("lr_adversary", "adversary_steps")


def unread_model_keys(method: str, model: dict[str, Any]) -> set[str]:
    """The ``model`` keys that ``avb.objectives.build`` does not read for ``method`` with these networks."""
    unread = set()
    if method == "vae":   # no adversary, no encoder noise
        unread |= {k for k in model if k.startswith("adv_")} | {"eps_dim", "eps_nbasis"}
    elif method == "avb":  # no noise basis
        unread.add("eps_nbasis")
    arch, adv_arch = model.get("arch", "mlp"), model.get("adv_arch", "conv0")  # unset: build()'s defaults
    if method != "vae" and adv_arch != "conv0":  # the conv1 adversary has fixed sizes
        unread |= {"adv_hidden", "adv_embed", "adv_layers"}
    if arch != "mlp":
        unread.add("hidden")
    if arch != "conv0":
        unread.add("conv0_decoder_act")
    return unread


# Content checksums of the verified splits as ``avb.data.load`` returns them (``data_sha256``): a run's config.json
# records its dataset's, and training and evaluation check the data they load against it. The folder the data come
# from is no part of any run's settings, so moving the data reruns nothing.
DATASET_SHA256 = {
    "mnist": "dccb843ebcbb95cdc9c9f03efab1ca6fe9e45015459f5e720d43107166c6cc1f",
    "fashion_mnist": "fc3ccbdf096b2f4e70d7768ba4154a8a5c541b0b462e324aec218e927ba0428e",
    "static_mnist": "027caf6f7dabedc892a2543c31c3883b11508c33ca5c10f576552c1783ebbecf",
}


def data_sha256(splits: Any) -> str:
    """SHA-256 over the train, validation and test images (dtype, shape and bytes) of an ``avb.data.Splits``."""
    h = hashlib.sha256()
    for a in (splits.train, splits.val, splits.test):
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def check_data(run: dict[str, Any], splits: Any) -> None:
    """Raise ``ConfigError`` if ``splits`` are not the data the run config records (runs without a record pass)."""
    expected = run.get("data_sha256")
    if expected is None:
        return
    got = data_sha256(splits)
    if got != expected:
        raise ConfigError(f"dataset {run['dataset']} from {splits.source} has content sha256 {got}, but the run "
                          f"config records {expected}: these are other data than the run was set up for")


def train_config(cfg: dict[str, Any], dataset: str, method: str, z_dim: int, seed: int) -> dict[str, Any]:
    """What training reads (written to the run's ``config.json``; ``avb.train.fit`` keys its checkpoint on it):
    the wildcards, the dataset's content checksum, and the ``model`` / ``train`` keys the method reads."""
    run = run_config(cfg, dataset, method, z_dim, seed)
    unread = unread_model_keys(method, run["model"])
    train = {k: v for k, v in run["train"].items() if method != "vae" or k not in ADVERSARY_TRAIN_KEYS}
    return {"method": method, "dataset": dataset, "z_dim": int(z_dim), "seed": int(seed),
            "data_sha256": DATASET_SHA256[dataset],
            "model": {k: v for k, v in run["model"].items() if k not in unread}, "train": train}


def eval_config(cfg: dict[str, Any], dataset: str, method: str, z_dim: int, seed: int) -> dict[str, Any]:
    """The run's resolved ``eval`` section, as ``avb evaluate --config`` reads it (``ac_moment_draws`` only for
    AVB + AC, the one method with moments to estimate)."""
    ev = run_config(cfg, dataset, method, z_dim, seed)["eval"]
    return {k: v for k, v in ev.items() if k != "ac_moment_draws" or method == "avb_ac"}


# eval keys the AIS-budget study does not read: it runs its own budgets on its own images (config `convergence`).
CONVERGENCE_UNREAD_EVAL_KEYS = ("n_test", "batch_size", "ais_steps", "elbo_samples", "iwae_samples", "bdmc_images")


def convergence_config(cfg: dict[str, Any], dataset: str, method: str, z_dim: int, seed: int) -> dict[str, Any]:
    """What ``avb convergence --config`` reads: the budgets and image count of ``convergence``, and the run's AIS
    settings (``eval`` less the keys of the main evaluation only)."""
    ev = eval_config(cfg, dataset, method, z_dim, seed)
    return {"eval": {k: v for k, v in ev.items() if k not in CONVERGENCE_UNREAD_EVAL_KEYS},
            "steps": list(cfg["convergence"]["steps"]), "n_images": int(cfg["convergence"]["n_images"])}


def rows(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """``run_config`` of every run of the sweep, in sweep order."""
    return [run_config(cfg, **r) for r in sweep(cfg)]


# The model keys each toy method uses: a run config holds only these, so e.g. an adversary setting never reruns the VAE.
TOY_RUN_MODEL_KEYS = {
    "vae": ["hidden"],
    "avb": ["hidden", "eps_dim", "adv_hidden", "adv_blocks", "adv_prior_term"],
    "avb_ac": ["hidden", "ac_nbasis", "ac_eps_dim", "adv_hidden", "adv_blocks", "adv_prior_term"],
}


def toy_run_config(toy: dict[str, Any], method: str) -> dict[str, Any]:
    """Everything that determines one toy training run (JSON-able; ``avb.train.fit`` keys its checkpoint on it).

    ``toy`` is the validated ``toy`` section of a config. The VAE has no adversary, so its adversary settings are
    None (``fit`` reads them only for a model with an adversary).
    """
    train = dict(toy["train"])
    if method == "vae":
        train.update(lr_adversary=None, adversary_steps=None)
    return {"experiment": "toy", "method": method, "seed": int(toy["seed"]),
            "model": {k: toy["model"][k] for k in TOY_RUN_MODEL_KEYS[method]}, "train": train}
