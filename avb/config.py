"""Preset configs: validation against ``workflow/schemas/config.schema.yaml`` and resolution into per-run configs."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config key is unknown or has a bad value."""


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


def validate(config: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Fill defaults and validate; raises ConfigError naming the offending key path and value."""
    import jsonschema

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    cfg = copy.deepcopy(config)
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for e in errors:
            key = ".".join(str(p) for p in e.absolute_path) or "<top level>"
            lines.append(f"  {key}: {e.message}")
        raise ConfigError(f"invalid {source}:\n" + "\n".join(lines))
    for method, over in cfg["method_overrides"].items():
        for section in ("model", "train"):
            probe = {"preset": "x", section: over.get(section, {})}
            try:
                validate(probe, f"{source} method_overrides.{method}")
            except ConfigError as err:
                raise ConfigError(str(err).replace(f"  {section}.", f"  method_overrides.{method}.{section}."))
    return cfg


def load(path: str | Path) -> dict[str, Any]:
    with open(path) as f:
        return validate(yaml.safe_load(f) or {}, source=f"config file {path}")


def run_config(cfg: dict[str, Any], dataset: str, method: str, z_dim: int, seed: int) -> dict[str, Any]:
    """Everything that determines one training run, with the method's overrides applied."""
    over = cfg["method_overrides"].get(method, {})
    return {
        "method": method, "dataset": dataset, "z_dim": int(z_dim), "seed": int(seed), "data_dir": cfg["data_dir"],
        "model": {**cfg["model"], **over.get("model", {})},
        "train": {**cfg["train"], **over.get("train", {})},
    }


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
