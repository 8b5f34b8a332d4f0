"""Validation bounds during training (config ``monitor``): the ELBO and, where the encoder has a density, the IWAE
bound on the first ``val_images`` images of the validation split, and the best-validation checkpoint.

The numbers are those of ``avb.evaluate`` (``elbo_per_image``, ``iwae_per_image``) on validation instead of test
images: the ELBO (for AVB an estimate with the adversary's KL, not a bound), IWAE_k with the VAE's Gaussian encoder
or AVB + AC's Gaussian r(z|x) as proposal (plain AVB: NaN, its implicit encoder has no density). The images are
binarised once with ``monitor.seed`` (a fixed draw, the same at every pass).

A pass never touches the training's random streams: the global torch RNG (the CPU's, and the model's GPU's) is
forked and reseeded with ``monitor.seed`` for the pass and restored after it, the IWAE and AC-moment draws come from
generators of their own, and the model is evaluated in eval mode (batch norm: running statistics, none updated) and
put back in the mode it was in. So a run with validation trains bit-identically to one without, and two passes on
the same weights give the same numbers (a resumed run recomputes them exactly).

``model.best.pt`` (beside ``model.pt``) holds the weights of the pass with the highest validation ELBO, with ``run``,
``step`` and ``val`` (the pass's numbers): written atomically, read with ``weights_only=True`` like every model file
(``avb.experiments.load_model`` loads it). While the run trains, the best so far is ``checkpoint.best.pt``
(``Validator``). A resumed run keeps it; on the CPU the passes after the checkpoint are recomputed bit for bit, so
the result is the uninterrupted run's; on a GPU, where a resumed run may differ in the last bits, it is still the
best (weights, ELBO) pair this run config produced.
"""
from __future__ import annotations

import math
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from . import data, io
from .evaluate import elbo_per_image, iwae_per_image
from .objectives import Method, MomentDraws

VAL_FIELDS = ["step", "elbo", "elbo_se", "iwae", "iwae_se", "seconds"]
BEST = "model.best.pt"                # published at the end of the run (a pipeline output)
RUNNING_BEST = "checkpoint.best.pt"   # the best so far, while the run trains (no output: survives a rerun)


def validation_images(run: dict[str, Any], n: int, seed: int,
                      data_dir: str | os.PathLike | None = None) -> torch.Tensor:
    """The first ``n`` validation images of the run's dataset, binarised once with ``seed`` (CPU, [n, 784]); the data
    are checked against the run config's checksum (``avb.jobs.check_data``)."""
    from .jobs import check_data

    splits = data.load(run["dataset"], data_dir if data_dir is not None else run.get("data_dir"))
    check_data(run, splits)
    if n > len(splits.val):
        raise ValueError(f"monitor.val_images = {n} exceeds the {len(splits.val)} validation images of "
                         f"{run['dataset']}")
    return data.binarize(splits.val[:n], splits.static, torch.Generator().manual_seed(seed))


@contextmanager
def own_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block with the global torch RNG (CPU, and ``device`` where it is a GPU) seeded with ``seed``, and
    restore the states it had before on exit: the block consumes none of the caller's random numbers."""
    gpus = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=gpus):
        torch.default_generator.manual_seed(seed)
        for index in gpus:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


def _mean_se(values: torch.Tensor) -> tuple[float, float]:
    v = values.double()
    n = len(v)
    return float(v.mean()), (float(v.std() / math.sqrt(n)) if n > 1 else math.nan)


@torch.no_grad()
def bounds(model: Method, x: torch.Tensor, settings: dict[str, Any], moment_draws: int) -> dict[str, float]:
    """Mean and standard error of the ELBO (``elbo_samples`` draws per image) and of IWAE_k (``iwae_samples``;
    NaN without a proposal density or with k = 0) over the images ``x``, in batches of ``val_batch_size``.

    Random numbers: the global RNG forked and seeded with ``settings['seed']`` (``own_rng``), the IWAE draws from a
    generator seeded with ``seed + 1``, AVB + AC's moment draws (``moment_draws`` per call, as at evaluation) from
    one seeded with ``seed + 2``."""
    device = next(model.parameters()).device
    seed, k, size = settings["seed"], settings["iwae_samples"], settings["val_batch_size"]
    was_training = model.training
    t0 = time.perf_counter()
    elbos, iwaes = [], []
    with own_rng(seed, device):
        model.eval()
        try:
            iwae_gen = torch.Generator().manual_seed(seed + 1)
            moments = MomentDraws(moment_draws, torch.Generator().manual_seed(seed + 2)) if model.ac else None
            for start in range(0, len(x), size):
                xb = x[start:start + size].to(device)
                elbos.append(elbo_per_image(model, xb, settings["elbo_samples"], moments).cpu())
                init = model.proposal(xb, moments) if k > 0 else None
                iwaes.append(torch.as_tensor(iwae_per_image(model, xb, init, k, iwae_gen)[0]))
        finally:
            model.train(was_training)
    elbo, elbo_se = _mean_se(torch.cat(elbos))
    iwae, iwae_se = _mean_se(torch.cat(iwaes))
    return {"elbo": elbo, "elbo_se": elbo_se, "iwae": iwae, "iwae_se": iwae_se,
            "seconds": time.perf_counter() - t0}


class Validator:
    """The validation passes of one run and its best-validation weights.

    The best so far is kept in ``checkpoint.best.pt`` (``RUNNING_BEST``), which, like checkpoint.pt, is no pipeline
    output, so that Snakemake, which deletes a killed job's outputs before its rerun, cannot take the best of the
    steps before the checkpoint with it; ``publish`` copies it to ``model.best.pt`` (``BEST``) at the end of the run.
    """

    def __init__(self, run: dict[str, Any], settings: dict[str, Any], out: str | os.PathLike,
                 data_dir: str | os.PathLike | None = None):
        self.run, self.settings = run, settings
        self.running_path, self.best_path = Path(out) / RUNNING_BEST, Path(out) / BEST
        self.x = validation_images(run, settings["val_images"], settings["seed"], data_dir)
        self.best: float | None = None  # the validation ELBO of checkpoint.best.pt

    def due(self, step: int, n_steps: int) -> bool:
        """Whether a pass runs after ``step``: every ``val_every`` steps and at the last."""
        return step % self.settings["val_every"] == 0 or step == n_steps

    def resume(self, step: int) -> None:
        """At the start of ``fit`` (at ``step``): a run from step 0 removes the best-validation files of an earlier
        run; a resumed run keeps checkpoint.best.pt where it was written for this run config (its ELBO is the one to
        beat), else removes it. model.best.pt is written again at the end (``publish``)."""
        from .checkpoint import config_change

        self.best = None
        if step > 0 and self.running_path.exists():
            try:
                ck = io.load_torch(self.running_path, "cpu", ("run", "step", "model", "val"))
                if config_change(ck["run"], self.run) is None and math.isfinite(ck["val"]["elbo"]):
                    self.best = float(ck["val"]["elbo"])
                    return
            except (io.CorruptFile, KeyError, TypeError):
                pass
        for path in (self.running_path, self.best_path):
            if path.exists():
                print(f"[avb] removing {path}: it is not of this run", flush=True)
                path.unlink()

    def __call__(self, model: Method, step: int, final: bool = False) -> dict[str, float]:
        """One pass at ``step``; writes checkpoint.best.pt where its ELBO beats the best so far (and at the
        ``final`` step where there is none yet). Returns the row for val_metrics.csv."""
        batch = self.run["train"]["batch_size"]
        row = {"step": step, **bounds(model, self.x, self.settings, batch)}
        better = math.isfinite(row["elbo"]) and (self.best is None or row["elbo"] > self.best)
        if better or (final and not self.running_path.exists()):
            io.save_torch({"run": self.run, "step": step, "model": model.state_dict(),
                           "val": {k: row[k] for k in ("elbo", "elbo_se", "iwae", "iwae_se")}}, self.running_path)
            if better:
                self.best = row["elbo"]
        return row

    def publish(self) -> None:
        """model.best.pt: an atomic copy of checkpoint.best.pt (at the end of the run)."""
        with io.atomic_path(self.best_path) as tmp:
            shutil.copyfile(self.running_path, tmp)
