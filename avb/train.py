"""The one training loop for every method and experiment (nanoGPT-style: plain and linear), and the one entry that
seeds, builds and fits any run config (``train``; ``setup`` is its first half).

Each iteration draws one batch, computes the method's primal and adversary losses from the same forward pass, and
applies both Adam updates at once (the official ``get_train_op``). With ``adversary_steps = k > 1`` the adversary gets
k - 1 further updates on fresh batches after each joint step (the toy notebook's scheme).

A run always finishes and never runs a stranger's code:

* Checkpoints (model, both optimisers, data order, every RNG state, the metrics history and the running metric sums)
  are written atomically every ``checkpoint_every`` steps to ``<out>/checkpoint.pt``; the one before is kept as
  ``checkpoint.prev.pt``. They hold tensors and plain values only and are read with ``weights_only=True``.
* A rerun resumes from the checkpoint and continues bit-identically on the CPU, if the run config is the same up to
  ``train.steps``: raising ``train.steps`` continues the run (20 + 20 steps = 40 steps); any other change restarts
  (the log says which keys changed). A checkpoint already at ``train.steps`` (a kill while model.pt was written,
  ``snakemake -F``) rewrites model.pt and train_metrics.csv from it.
* Every ``log_every`` steps a row of metrics (means over those steps) is added to ``train_metrics.csv`` by an
  atomic replacement of the file (``avb.monitor.CsvLog``: a reader never sees part of a row); each checkpoint
  rewrites it with fsync, and each start rewrites it from the checkpoint it resumes (dropping the rows added after
  it). Monitoring (``monitor`` in the run config: TensorBoard, validation with a best-validation
  ``model.best.pt``) changes nothing of the training and never restarts a run.
* A corrupt checkpoint.pt is moved to ``checkpoint.corrupt.pt`` and ``checkpoint.prev.pt`` is used (logged); stale
  temporary files of killed writes are removed at start (logged).
* SIGTERM or SIGUSR1 (SLURM's warning before the time limit) writes a checkpoint at the current step and stops with
  ``TrainingInterrupted`` (the CLI exits non-zero, so a retry resumes).
* A non-finite loss, or non-finite parameters after an update, stop the run with ``TrainingDiverged`` naming the run
  folder and the first non-finite step; no checkpoint is written after it, the last good one is kept.
* No iteration waits for the device (issue 15): the metrics and the finiteness of the losses and parameters
  accumulate on it (``StepMeter``) and are read in one transfer at each row, checkpoint, monitor pass (and each step
  where ``on_step`` is given), before anything is written; a divergence is found there, up to ``log_every`` steps
  after it happened, and still named by its first step. Speed options of ``train`` (precision, compile,
  channels-last, cudnn.benchmark, the Adam kernel): ``avb.speed``.

The iteration itself and its device-side metrics are ``avb.step``; the checkpoint file and when a run config may
continue it, ``avb.checkpoint``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
from tqdm.auto import tqdm

from . import io, speed
from .checkpoint import config_change, load_checkpoint
from .device import describe, device_info, resolve_device  # noqa: F401 (resolve_device: importable from here)
from .experiments import batches as make_batches, build
from .monitor import CsvLog, Monitor, write_rows
from .objectives import Method
from .step import StepMeter, TrainingDiverged, make_optimizers, train_step

log = logging.getLogger("avb.train")
METRIC_FIELDS = ["step", "loss_primal", "loss_adversary", "elbo", "recon", "kl", "adv_accuracy", "images_per_s"]
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class TrainingInterrupted(RuntimeError):
    """SIGTERM / SIGUSR1 arrived; a checkpoint at the current step was written, a rerun resumes from it."""


def setup(run: dict[str, Any], data_dir: str | os.PathLike | None = None
          ) -> tuple[Method, BatchSource, torch.Generator]:
    """The start of every run: the global RNG seeded with ``run['seed']``, the data-order generator (``seed + 1``),
    the training batches and the model (``avb.experiments``), on ``train.device``. Returns (model, batches,
    generator) for ``fit``. ``data_dir`` (else ``run['data_dir']``, where present) is the explicit data folder of an
    image run (see ``avb.data``)."""
    device = resolve_device(run["train"]["device"], why="training")
    print(f"[avb] training on {describe(device_info(device))}", flush=True)
    torch.manual_seed(run["seed"])
    data_gen = torch.Generator().manual_seed(run["seed"] + 1)
    batches = make_batches(run, data_gen, device, data_dir)
    return build(run).to(device), batches, data_gen


def train(run: dict[str, Any], out_dir: str | os.PathLike, progress: bool = True,
          data_dir: str | os.PathLike | None = None) -> Path:
    """Train the run described by the resolved run config ``run`` (any experiment: ``setup``, then ``fit``); returns
    the final model file."""
    model, batches, data_gen = setup(run, data_dir)
    return fit(model, batches, data_gen, run, out_dir, progress, monitor=Monitor.for_run(run, out_dir, data_dir))


class BatchSource(Protocol):
    """An endless iterator of training batches whose position can be saved and restored."""

    def __next__(self) -> torch.Tensor: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@contextmanager
def stop_signals() -> Iterator[list[int]]:
    """Collect SIGTERM / SIGUSR1 into the yielded list instead of dying (main thread only; elsewhere the list
    stays empty and the signals keep their handlers); the previous handlers are restored on exit."""
    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return
    old = {sig: signal.signal(sig, lambda signum, frame: got.append(signum)) for sig in STOP_SIGNALS}
    try:
        yield got
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def fit(model: Method, batches: BatchSource, data_gen: torch.Generator, run: dict[str, Any],
        out_dir: str | os.PathLike, progress: bool = True, on_step: Callable[[int], None] | None = None,
        monitor: Monitor | None = None) -> Path:
    """The training loop shared by every experiment (MNIST-type runs, the toy, eight schools).

    ``run`` is the JSON-able description of the run (it must hold the ``train`` section); a checkpoint in
    ``out_dir`` is resumed if it was written for the same ``run`` up to ``train.steps`` (see the module docstring).
    ``data_gen`` is the generator that ``batches`` draws from; its state is checkpointed with the global torch RNG.
    Seed the global RNG before building ``model``. Writes ``model.pt`` and ``train_metrics.csv``; returns model.pt.
    ``on_step(step)``, if given, is called after each iteration with the number done, before that iteration's
    checkpoint is written (eight schools: posterior snapshots); it must leave the model and the RNG states as it
    found them. Each metrics row is added to train_metrics.csv as it is made (``avb.monitor.CsvLog``); ``monitor``
    (TensorBoard, validation: ``Monitor.for_run``) gets each row and a call after each iteration.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    io.remove_stale_temps(out)
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    with stop_signals() as got_signal, speed.job_flags(speed.options(run["train"]), device, model):
        mon = monitor if monitor is not None else Monitor(run, out)
        try:
            return _fit(model, batches, data_gen, run, out, progress, got_signal, on_step, mon)
        finally:
            mon.close()


def _fit(model: Method, batches: BatchSource, data_gen: torch.Generator, run: dict[str, Any], out: Path,
         progress: bool, got_signal: list[int], on_step: Callable[[int], None] | None, mon: Monitor) -> Path:
    tr = run["train"]
    n_steps, log_every = tr["steps"], tr["log_every"]
    opts = speed.options(tr)
    params_all = list(model.parameters())
    device = params_all[0].device if params_all else torch.device("cpu")
    speed.prepare(model, opts, device)  # channels-last before the optimisers see the parameters
    opt_p, opt_a = make_optimizers(model, tr)
    ckpt_path, metrics_path, final = out / "checkpoint.pt", out / "train_metrics.csv", out / "model.pt"

    # rows: the metric rows at multiples of log_every; acc / n_acc: the sums since the last row; tail: the row of
    # a run that ended off a log_every boundary (dropped when the run is continued, so 20 + 20 steps = 40 steps).
    step, rows, acc, n_acc, tail = 0, [], {}, 0, None
    ck = load_checkpoint(out)
    if ck is not None:
        why = config_change(ck["run"], run)
        why = f"it belongs to another run config ({why})" if why else None
        if why is None and ck["step"] > n_steps:
            why = f"it is at step {ck['step']}, beyond train.steps = {n_steps}"
        if why is not None:
            print(f"[avb] not resuming {ckpt_path}: {why}; starting afresh (it is replaced at the first "
                  f"checkpoint)", flush=True)
            ck = None
    if ck is not None:
        try:
            model.load_state_dict(ck["model"])
            opt_p.load_state_dict(ck["opt_primal"])
            if opt_a is not None:
                opt_a.load_state_dict(ck["opt_adversary"])
            batches.load_state_dict(ck["batches"])
            data_gen.set_state(ck["rng"]["data"])
            torch.set_rng_state(ck["rng"]["torch"])
            if torch.cuda.is_available() and ck["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state_all(ck["rng"]["cuda"])
        except (RuntimeError, KeyError, ValueError, TypeError) as err:
            raise io.CorruptFile(f"{ckpt_path}: does not fit this run's model / optimisers ({type(err).__name__}: "
                                 f"{str(err).splitlines()[0][:200]}); delete it to train from the start") from None
        step, rows = ck["step"], list(ck["metrics"])
        acc, n_acc, tail = dict(ck.get("acc", {})), int(ck.get("n_acc", 0)), ck.get("tail")
        if step == n_steps:
            print(f"[avb] {ckpt_path} is at step {step} = train.steps: writing {final.name} and {metrics_path.name} "
                  f"from it (delete it to retrain)", flush=True)
        else:
            print(f"[avb] resuming {out} from step {step}" + (f" (train.steps raised from {ck['run']['train']['steps']}"
                  f" to {n_steps})" if ck["run"]["train"]["steps"] != n_steps else ""), flush=True)
            tail = None
    good_step = step  # the step of the last good checkpoint on disk (0: none)
    # the metrics file as of the checkpoint (rows a killed run added after it dropped), then one row added at a
    # time (each a whole-file atomic replacement); the monitor's files likewise
    metrics_log = CsvLog(metrics_path, METRIC_FIELDS)
    metrics_log.begin(rows + ([tail] if tail else []), resumed=step > 0)
    mon.begin(step, ck.get("monitor") if ck is not None else None)

    def save_checkpoint() -> None:
        io.save_torch({
            "run": run, "step": step, "metrics": rows, "acc": acc, "n_acc": n_acc, "tail": tail,
            "model": model.state_dict(), "opt_primal": opt_p.state_dict(),
            "opt_adversary": opt_a.state_dict() if opt_a else None, "batches": batches.state_dict(),
            "rng": {"data": data_gen.get_state(), "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            "monitor": mon.state_dict(),
        }, ckpt_path, backup=out / "checkpoint.prev.pt")
        write_metrics(rows + ([tail] if tail else []), metrics_path)
        mon.flush()

    def diverged(msg: str) -> TrainingDiverged:
        kept = f"the last good checkpoint (step {good_step}) is kept" if good_step else "no checkpoint was written"
        return TrainingDiverged(f"{out}: {msg}; training stopped, {kept}")

    params_p, params_a = model.primal_parameters(), model.adversary_parameters()
    names = [name for name, _ in model.named_parameters()]  # in params_all's order
    forward, forward_context = speed.compiled(model, opts), speed.autocast(opts, device)
    meter = StepMeter(step, device, acc)
    t_last, n_timed = time.perf_counter(), 0
    bar = tqdm(total=n_steps, initial=step, desc=f"train {model.name}", disable=not progress, mininterval=2.0)
    model.train()
    next_batch = batches.__next__
    while step < n_steps:
        # no host read in an iteration: the metrics and the finiteness of the losses and parameters accumulate on
        # the device (StepMeter) and are read where a row, a checkpoint, the end, a monitor pass or on_step is due
        train_step(forward, next_batch(), opt_p, opt_a, params_p, params_a, tr.get("adversary_steps", 1),
                   next_batch, step=step + 1, check=False, record=meter.record,
                   forward_context=forward_context)  # a VAE's run config has no adversary settings
        meter.add(params_all)
        step += 1
        n_acc += 1
        n_timed += 1
        row_due = step % log_every == 0 or step == n_steps
        stop = bool(got_signal)  # once per iteration: a signal arriving later is handled after the next one
        checkpoint_due = step % tr["checkpoint_every"] == 0 or step == n_steps or stop
        if row_due or checkpoint_due or on_step is not None or mon.due(step, n_steps):
            acc, bad_step, bad = meter.read()  # the one read: before anything is logged, saved or monitored
            if bad_step:
                raise diverged(meter.divergence(bad_step, bad, names))
        if row_due:
            now = time.perf_counter()
            row = {"step": step, **{k: v / n_acc for k, v in acc.items()},
                   "images_per_s": n_timed * tr["batch_size"] / (now - t_last)}
            row = {k: row.get(k, math.nan) for k in METRIC_FIELDS}
            if step % log_every == 0:
                rows.append(row)
                acc, n_acc, t_last, n_timed = {}, 0, now, 0
                meter.reset()
            else:
                tail = row
            metrics_log.append(row)
            mon.log(row)
            bar.set_postfix(elbo=f"{row['elbo']:.1f}")
        if on_step is not None:
            on_step(step)
        t_last += mon.after_step(model, step, n_steps)  # its seconds: not training time (images_per_s)
        if checkpoint_due:
            save_checkpoint()  # from parameters the read above found finite
            good_step = step
        bar.update(1)
        if stop and step < n_steps:
            bar.close()
            raise TrainingInterrupted(f"{out}: {signal.Signals(got_signal[0]).name} at step {step} of {n_steps}: "
                                      f"checkpoint written to {ckpt_path}; rerun to resume")
    bar.close()
    mon.finish(model, step)
    io.save_torch({"run": run, "step": step, "model": model.state_dict()}, final)
    return final


def write_metrics(rows: list[dict[str, float]], path: Path) -> None:
    """train_metrics.csv with ``rows``, atomically and fsynced (at every checkpoint: the durable copy of the rows)."""
    write_rows(rows, path, METRIC_FIELDS)


def read_run_config(path: str | os.PathLike) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)
