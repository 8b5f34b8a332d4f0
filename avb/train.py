"""The one training loop for every method (nanoGPT-style: plain and linear).

Each iteration draws one batch, computes the method's primal and adversary losses from the same forward pass, and
applies both Adam updates at once (the official ``get_train_op``). With ``adversary_steps = k > 1`` the adversary gets
k - 1 further updates on fresh batches after each joint step (the toy notebook's scheme).

Checkpoints (model, both optimisers, data order and every RNG state) are written atomically every
``checkpoint_every`` steps to ``<out>/checkpoint.pt``; a rerun with the same config resumes from it and continues
bit-identically on the CPU. A non-finite loss stops the run with an error naming the step and the loss; the last
good checkpoint is kept.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from tqdm.auto import tqdm

from . import data, io
from .objectives import Method, Step, build

log = logging.getLogger("avb.train")
METRIC_FIELDS = ["step", "loss_primal", "loss_adversary", "elbo", "recon", "kl", "adv_accuracy", "images_per_s"]


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_model(run: dict[str, Any]) -> Method:
    return build(run["method"], run["z_dim"], **run["model"])


def make_optimizers(model: Method, tr: dict[str, Any]) -> tuple[torch.optim.Adam, torch.optim.Adam | None]:
    betas = (tr["adam_beta1"], 0.999)
    primal = torch.optim.Adam(model.primal_parameters(), lr=tr["lr"], betas=betas)
    adv = model.adversary_parameters()
    return primal, (torch.optim.Adam(adv, lr=tr["lr_adversary"], betas=betas) if adv else None)


def _check_finite(step: int, **losses: torch.Tensor | None) -> None:
    for name, value in losses.items():
        if value is not None and not torch.isfinite(value).all():
            raise TrainingDiverged(f"step {step}: {name} = {value.item()} is not finite; training stopped, the last "
                                   f"good checkpoint is kept")


def train_step(model: Method, x: torch.Tensor, opt_p: torch.optim.Optimizer, opt_a: torch.optim.Optimizer | None,
               params_p: list[torch.nn.Parameter], params_a: list[torch.nn.Parameter], adversary_steps: int = 1,
               next_batch: Callable[[], torch.Tensor] | None = None, step: int = 0) -> Step:
    """One training iteration exactly as the loop runs it; returns the ``Step`` of the joint update.

    One forward pass on ``x`` gives both losses; the adversary's gradient (w.r.t. ``params_a`` only) and the primal
    gradient (w.r.t. ``params_p`` only) are taken from it and both Adam steps are applied together (the official
    simultaneous update). With ``adversary_steps = k > 1`` the adversary then gets k - 1 further updates, each on a
    fresh batch from ``next_batch``. A non-finite loss raises ``TrainingDiverged`` naming ``step`` (the 1-based
    number of this iteration) before any parameter changes.
    """
    s = model(x)
    losses = s.primal.detach() if s.adversary is None else torch.stack((s.primal.detach(), s.adversary.detach()))
    if not bool(torch.isfinite(losses).all()):  # one check (one sync) for both losses; the error names the culprit
        _check_finite(step, loss_primal=s.primal, loss_adversary=s.adversary)
    opt_p.zero_grad(set_to_none=True)
    if opt_a is not None:
        opt_a.zero_grad(set_to_none=True)
        s.adversary.backward(inputs=params_a, retain_graph=True)
    s.primal.backward(inputs=params_p)
    opt_p.step()
    if opt_a is not None:
        opt_a.step()
        for _ in range(adversary_steps - 1):
            extra = model(next_batch()).adversary
            opt_a.zero_grad(set_to_none=True)
            extra.backward(inputs=params_a)
            opt_a.step()
    return s


def step_metrics(s: Step) -> dict[str, float]:
    """The per-step metrics the loop logs (losses, batch means of ELBO, recon, KL; adversary accuracy), read from
    the device in one transfer."""
    with torch.no_grad():
        vals = {"loss_primal": s.primal, "loss_adversary": s.adversary, "elbo": s.elbo.mean(),
                "recon": s.recon.mean(), "kl": s.kl.mean(), "adv_accuracy": s.adv_accuracy}
        keys = [k for k, v in vals.items() if v is not None]
        return dict(zip(keys, torch.stack([vals[k].float() for k in keys]).tolist()))


def train(run: dict[str, Any], out_dir: str | os.PathLike, progress: bool = True) -> Path:
    """Train one image-model run described by the resolved run config ``run``; returns the final model file."""
    tr = run["train"]
    device = resolve_device(tr["device"])
    torch.manual_seed(run["seed"])
    data_gen = torch.Generator().manual_seed(run["seed"] + 1)
    splits = data.load(run["dataset"], run.get("data_dir"))
    print(f"[avb] {run['dataset']}: data from {splits.source}", flush=True)
    batches = data.Batches(splits, "train", tr["batch_size"], data_gen, device)
    model = build_model(run).to(device)
    return fit(model, batches, data_gen, run, out_dir, progress)


class BatchSource(Protocol):
    """An endless iterator of training batches whose position can be saved and restored."""

    def __next__(self) -> torch.Tensor: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


def fit(model: Method, batches: BatchSource, data_gen: torch.Generator, run: dict[str, Any],
        out_dir: str | os.PathLike, progress: bool = True) -> Path:
    """The training loop shared by every experiment (MNIST-type runs, the toy, eight schools).

    ``run`` is the JSON-able description of the run (it must hold the ``train`` section); a checkpoint in
    ``out_dir`` is resumed only if it was written for an identical ``run``. ``data_gen`` is the generator that
    ``batches`` draws from; its state is checkpointed with the global torch RNG. Seed the global RNG before
    building ``model``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tr = run["train"]
    device = next(model.parameters()).device
    opt_p, opt_a = make_optimizers(model, tr)

    ckpt_path, metrics_path = out / "checkpoint.pt", out / "train_metrics.csv"
    step, rows = 0, []
    ck = torch.load(ckpt_path, map_location=device, weights_only=False) if ckpt_path.exists() else None
    if ck is not None and ck["run"] != run:
        print(f"[avb] {ckpt_path} belongs to another run config; starting afresh (it is replaced at the first "
              f"checkpoint)", flush=True)
        ck = None
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt_p.load_state_dict(ck["opt_primal"])
        if opt_a is not None:
            opt_a.load_state_dict(ck["opt_adversary"])
        batches.load_state_dict(ck["batches"])
        data_gen.set_state(ck["rng"]["data"])
        torch.set_rng_state(ck["rng"]["torch"])
        if torch.cuda.is_available() and ck["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state_all(ck["rng"]["cuda"])
        step, rows = ck["step"], ck["metrics"]
        print(f"[avb] resuming {out} from step {step}", flush=True)

    def save_checkpoint() -> None:
        io.save_torch({
            "run": run, "step": step, "metrics": rows, "model": model.state_dict(),
            "opt_primal": opt_p.state_dict(), "opt_adversary": opt_a.state_dict() if opt_a else None,
            "batches": batches.state_dict(),
            "rng": {"data": data_gen.get_state(), "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }, ckpt_path)

    params_p, params_a = model.primal_parameters(), model.adversary_parameters()
    n_steps, log_every = tr["steps"], tr["log_every"]
    acc: dict[str, float] = {}
    t_last, n_acc = time.perf_counter(), 0
    bar = tqdm(total=n_steps, initial=step, desc=f"train {model.name}", disable=not progress, mininterval=2.0)
    model.train()
    next_batch = batches.__next__
    while step < n_steps:
        s = train_step(model, next_batch(), opt_p, opt_a, params_p, params_a, tr["adversary_steps"], next_batch,
                       step=step + 1)
        step += 1
        n_acc += 1
        for key, val in step_metrics(s).items():
            acc[key] = acc.get(key, 0.0) + val
        if step % log_every == 0 or step == n_steps:
            now = time.perf_counter()
            row = {"step": step, **{k: v / n_acc for k, v in acc.items()},
                   "images_per_s": n_acc * tr["batch_size"] / (now - t_last)}
            rows.append({k: row.get(k, math.nan) for k in METRIC_FIELDS})
            acc, t_last, n_acc = {}, now, 0
            bar.set_postfix(elbo=f"{row.get('elbo', math.nan):.1f}")
        if step % tr["checkpoint_every"] == 0 or step == n_steps:
            save_checkpoint()
            write_metrics(rows, metrics_path)
        bar.update(1)
    bar.close()
    final = out / "model.pt"
    io.save_torch({"run": run, "step": step, "model": model.state_dict()}, final)
    return final


def write_metrics(rows: list[dict[str, float]], path: Path) -> None:
    with io.atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        w.writeheader()
        w.writerows(rows)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Method, dict[str, Any]]:
    """A trained model (in eval mode) and its run config from a ``model.pt`` or ``checkpoint.pt``."""
    ck = torch.load(path, map_location=device, weights_only=False)
    model = build_model(ck["run"]).to(device)
    model.load_state_dict(ck["model"])
    return model.eval(), ck["run"]


def read_run_config(path: str | os.PathLike) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)
