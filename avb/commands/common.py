"""What the jobs' subcommands share: their common options (``job``), the run-config settings given on the command
line (``run_config``), the JSON settings files the pipeline's local rules write (``settings``), threads and GPU slot.
"""
from __future__ import annotations

import argparse
import json
import os

import torch

DATA_DIR_HELP = ("folder holding the datasets (the config's data_dir); unset or '': AVB_DATA_DIR, ../shared/data, "
                 "then a download")
# The sections of a run config that the command line may change, and their definitions in the schema.
RUN_SECTIONS = {"model": "model", "train": "train"}
TOY_SECTIONS = {"model": "toy.model", "train": "toy.train"}
SCHOOLS_CONFIG_HELP = "JSON file of (part of) the config's schools section; unset keys take the schema defaults"
SETTINGS_HELP = ("settings of the run config to change, e.g. train.steps=100 model.arch=conv0 (values read as YAML; "
                 "each key and value checked against the schema; raising train.steps alone continues the run)")
REQUIRE_GPU_HELP = ("fail (avb.device.NoCudaDevice) instead of falling back to the CPU where no CUDA device is "
                    "found, as with AVB_REQUIRE_GPU=1 (the workflow sets it for jobs whose resources ask for a GPU)")
DEVICE_HELP = "training device (auto, cpu, cuda, cuda:N): the same as train.device=DEVICE"


def threads(n: int | None) -> None:
    """``--threads``: torch's intra-op threads (unset: torch's default)."""
    if n:
        torch.set_num_threads(n)


def gpu_slot(device: str) -> None:
    """With ``AVB_GPUS`` set, this job's own GPU (``avb.gpus.claim``: a device slot held until the process exits,
    ``CUDA_VISIBLE_DEVICES`` set to it); taken before anything touches CUDA. Without it, nothing happens."""
    from ..gpus import claim
    claim(device)


def settings(path: str | None) -> dict:
    """The JSON settings file ``path`` (as the pipeline's local rules write them), or {} where none is given."""
    if path is None:
        return {}
    from ..config import read_settings
    return read_settings(path)


def run_config(path: str, changes: list[str], device: str | None, sections: dict[str, str]) -> dict:
    """The run config in JSON file ``path`` with the command line's ``SECTION.KEY=VALUE`` settings and ``--device``
    applied (``avb.config.assign``: unknown keys and bad values are errors naming the key)."""
    from ..config import assign, read_settings
    extra = [*changes, *([f"train.device={json.dumps(device)}"] if device is not None else [])]
    return assign(read_settings(path), extra, sections, f"run config {path} with {' '.join(extra)}") if extra \
        else read_settings(path)


def add_run_settings(job: argparse.ArgumentParser) -> None:
    """A training subcommand's run config, its changes and ``--device``."""
    job.add_argument("run_config")
    job.add_argument("settings", nargs="*", metavar="SECTION.KEY=VALUE", help=SETTINGS_HELP)
    job.add_argument("--device", help=DEVICE_HELP)


def data_dir(value: str) -> str | None:
    """``--data-dir``: '' (the pipeline's form of an unset data_dir) is unset."""
    return value or None


def job(sub, name: str, help: str, *, model: bool = False, config: str | None = None,
        data: bool = False) -> argparse.ArgumentParser:
    """A job's subcommand with the options jobs share: the model.pt it reads (``model``), its JSON settings file
    (``config``: the help text), ``--data-dir`` (``data``), ``--threads`` and ``--require-gpu``."""
    p = sub.add_parser(name, help=help)
    if model:
        p.add_argument("model")
    if config:
        p.add_argument("--config", help=config)
    if data:
        p.add_argument("--data-dir", type=data_dir, help=DATA_DIR_HELP)
    p.add_argument("--threads", type=int)
    p.add_argument("--require-gpu", action="store_true", help=REQUIRE_GPU_HELP)
    return p


def runs_curves(metrics: list[str], out: list[str] | None, title: str) -> None:
    """``--metrics`` / ``--out-curves`` of ``toy report`` and ``schools report``: one row per run, labelled by its
    method (the name of the folder holding its train_metrics.csv)."""
    if not out:
        return
    if not metrics:
        raise ValueError("--out-curves needs --metrics")
    from ..methods import LABELS
    from ..report.curves import runs_curves as draw
    method = lambda path: os.path.basename(os.path.dirname(os.path.abspath(path)))  # noqa: E731
    draw([(LABELS.get(method(m), method(m)), m) for m in metrics], *out, title=title)
