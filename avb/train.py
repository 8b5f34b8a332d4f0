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
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch
from tqdm.auto import tqdm

from . import io, speed
from .device import describe, device_info, resolve_device  # noqa: F401 (resolve_device: importable from here)
from .experiments import batches as make_batches, build
from .monitor import CsvLog, Monitor, write_rows
from .objectives import Method, Step

log = logging.getLogger("avb.train")
METRIC_FIELDS = ["step", "loss_primal", "loss_adversary", "elbo", "recon", "kl", "adv_accuracy", "images_per_s"]
CHECKPOINT_KEYS = ("run", "step", "metrics", "model", "opt_primal", "opt_adversary", "batches", "rng")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# The run-config keys that may change between a checkpoint and its resumption (raising it continues the run).
CONTINUABLE_KEYS = ("train.steps",)
# Run-config sections that never change the training (monitoring: avb.monitor): they too may change on resumption.
UNTRAINED_SECTIONS = ("monitor.",)


class TrainingDiverged(RuntimeError):
    """A loss or a parameter became NaN or infinite."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM / SIGUSR1 arrived; a checkpoint at the current step was written, a rerun resumes from it."""


def make_optimizers(model: Method, tr: dict[str, Any]) -> tuple[torch.optim.Adam, torch.optim.Adam | None]:
    """The primal and adversary Adam (None without an adversary); ``train.adam`` picks the implementation
    (``avb.speed.adam_kwargs``: torch's default on the CPU unless set)."""
    betas = (tr["adam_beta1"], 0.999)
    params = list(model.parameters())
    kw = speed.adam_kwargs(speed.options(tr), params[0].device if params else torch.device("cpu"))
    primal = torch.optim.Adam(model.primal_parameters(), lr=tr["lr"], betas=betas, **kw)
    adv = model.adversary_parameters()
    return primal, (torch.optim.Adam(adv, lr=tr["lr_adversary"], betas=betas, **kw) if adv else None)


def _check_finite(step: int, **losses: torch.Tensor | None) -> None:
    for name, value in losses.items():
        if value is not None and not torch.isfinite(value).all():
            raise TrainingDiverged(f"step {step}: {name} = {value.item()} is not finite; training stopped, the last "
                                   f"good checkpoint is kept")


def train_step(model: Method, x: torch.Tensor, opt_p: torch.optim.Optimizer, opt_a: torch.optim.Optimizer | None,
               params_p: list[torch.nn.Parameter], params_a: list[torch.nn.Parameter], adversary_steps: int = 1,
               next_batch: Callable[[], torch.Tensor] | None = None, step: int = 0, check: bool = True,
               record: Callable[[Step], None] | None = None,
               forward_context: Callable[[], Any] = nullcontext) -> Step:
    """One training iteration exactly as the loop runs it; returns the ``Step`` of the joint update.

    One forward pass on ``x`` gives both losses; the adversary's gradient (w.r.t. ``params_a`` only) and the primal
    gradient (w.r.t. ``params_p`` only) are taken from it and both Adam steps are applied together (the official
    simultaneous update). With ``adversary_steps = k > 1`` the adversary then gets k - 1 further updates, each on a
    fresh batch from ``next_batch``. With ``check`` a non-finite loss raises ``TrainingDiverged`` naming ``step``
    (the 1-based number of this iteration) before any parameter changes: one host read per step. The loop passes
    ``check=False`` and checks on the device instead (``StepMeter``), reading once per ``log_every``.
    ``record(step)``, if given, sees the joint step's outputs right after its forward pass (before any later forward
    pass may reuse their memory: CUDA graphs). Each forward pass runs inside ``forward_context()`` (bf16 autocast:
    ``avb.speed.autocast``); the backward passes and updates run outside it.
    """
    with forward_context():
        s = model(x)
    if record is not None:
        record(s)
    if check:
        losses = s.primal.detach() if s.adversary is None else torch.stack((s.primal.detach(), s.adversary.detach()))
        if not bool(torch.isfinite(losses).all()):  # one check (one sync) for both losses; the error names it
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
            with forward_context():
                extra = model(next_batch()).adversary
            opt_a.zero_grad(set_to_none=True)
            extra.backward(inputs=params_a)
            opt_a.step()
    return s


def metric_tensor(s: Step) -> tuple[list[str], torch.Tensor]:
    """The per-step metrics the loop logs (losses first, then the batch means of ELBO, recon, KL; adversary
    accuracy; those a method lacks left out) as their names and one float64 tensor on the step's device."""
    with torch.no_grad():
        vals = {"loss_primal": s.primal, "loss_adversary": s.adversary, "elbo": s.elbo.mean(),
                "recon": s.recon.mean(), "kl": s.kl.mean(), "adv_accuracy": s.adv_accuracy}
        keys = [k for k, v in vals.items() if v is not None]
        return keys, torch.stack([vals[k].detach().double() for k in keys])


def parameter_sums(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """The sum of each parameter (their dtype): all finite, and so is their total, when the parameters are (the
    total overflows only for parameters near 1e38: diverged too)."""
    with torch.no_grad():
        return torch.stack([p.detach().sum() for p in params])


def step_metrics(s: Step, params: Sequence[torch.Tensor] = ()) -> dict[str, float]:
    """``metric_tensor`` read from the device in one transfer. With ``params``, also ``param_sum``: the sum of
    every parameter (``parameter_sums``), in the same transfer."""
    keys, vec = metric_tensor(s)
    if params:
        keys = [*keys, "param_sum"]
        vec = torch.cat([vec, parameter_sums(params).sum().double().view(1)])
    return dict(zip(keys, vec.tolist()))


class StepMeter:
    """The loop's metrics and divergence check on the device, read in one transfer when the loop asks (``read``).

    ``add`` after each iteration: the step's ``metric_tensor`` is added to float64 running sums (the order and
    precision of the Python sums it replaces: rows are bit-identical), and the first step whose losses, or whose
    parameters after the update (``parameter_sums``), are not all finite is recorded with those losses and sums
    (``torch.where`` on a step counter kept on the device: no host read). ``read`` returns the sums since the last
    ``reset`` and raises nothing; ``divergence`` turns what it read into the error's text.
    """

    def __init__(self, step: int, device: torch.device, sums: dict[str, float] | None = None):
        self.device, self.resumed = device, dict(sums or {})
        self.step = torch.full((), float(step), dtype=torch.float64, device=device)
        self.keys: list[str] | None = None
        self.sums: torch.Tensor | None = None
        self.bad_step = torch.zeros((), dtype=torch.float64, device=device)
        self.bad: torch.Tensor | None = None  # the first bad step's losses, then its parameter sums
        self.n_losses = 0

    def record(self, s: Step) -> None:
        """The joint step's metrics (``train_step``'s ``record``): kept until ``add``."""
        self.keys, self._vec = metric_tensor(s)
        self.n_losses = 1 if s.adversary is None else 2

    def add(self, params: Sequence[torch.Tensor]) -> None:
        vec, ps = self._vec, parameter_sums(params)
        self.step += 1
        if self.sums is None:  # 0.0 + the first value, as the Python sums did (-0.0 becomes 0.0)
            self.sums = (torch.tensor([self.resumed[k] for k in self.keys], dtype=torch.float64, device=self.device)
                         if self.resumed else torch.zeros(len(self.keys), dtype=torch.float64, device=self.device))
            self.resumed = {}
        self.sums = self.sums + vec
        losses = vec[:self.n_losses]
        bad_now = ~(torch.isfinite(losses).all() & torch.isfinite(ps.sum()))
        first = bad_now & (self.bad_step == 0)
        self.bad_step = torch.where(first, self.step, self.bad_step)
        new = torch.cat([losses, ps.double()])
        self.bad = torch.where(first, new, new.new_zeros(()) if self.bad is None else self.bad)

    def reset(self) -> None:
        """Start new sums (after a row)."""
        self.sums = None

    def read(self) -> tuple[dict[str, float], int, list[float]]:
        """(the sums since the last reset by name, the first non-finite step or 0, that step's losses and parameter
        sums): one device-to-host transfer."""
        if self.bad is None:  # nothing added yet
            return dict(self.resumed), 0, []
        sums = self.sums if self.sums is not None else self.bad.new_zeros(0)
        n = len(sums)
        vals = torch.cat([sums, self.bad_step.view(1), self.bad]).tolist()
        return dict(zip(self.keys if n else [], vals[:n])), int(vals[n]), vals[n + 1:]

    def divergence(self, bad_step: int, bad: list[float], names: Sequence[str]) -> str:
        """What went wrong at ``bad_step`` (``read``), with ``names`` the parameters' names in ``add``'s order."""
        for name, value in zip(("loss_primal", "loss_adversary")[:self.n_losses], bad[:self.n_losses]):
            if not math.isfinite(value):
                return f"step {bad_step}: {name} = {value} is not finite"
        nonfinite = [n for n, v in zip(names, bad[self.n_losses:]) if not math.isfinite(v)]
        if nonfinite:
            return (f"step {bad_step}: parameters not finite after the update ({', '.join(nonfinite[:3])}"
                    f"{' ...' if len(nonfinite) > 3 else ''}; the losses were finite)")
        return (f"step {bad_step}: parameters diverged after the update (no NaN or inf, but their sum overflows: "
                f"values near 1e38; the losses were finite)")


def nonfinite_parameters(model: torch.nn.Module) -> list[str]:
    """Names of the parameters of ``model`` holding a NaN or an infinity."""
    with torch.no_grad():
        return [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]


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


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_change(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """Why a checkpoint written for run config ``old`` cannot be continued under ``new``, or None where it can:
    the two may differ in ``CONTINUABLE_KEYS`` (``train.steps``) and ``UNTRAINED_SECTIONS`` (``monitor``) only."""
    a, b = _flat(old), _flat(new)
    changed = [k for k in sorted(a.keys() | b.keys()) if k not in CONTINUABLE_KEYS and not
               k.startswith(UNTRAINED_SECTIONS) and a.get(k, "<unset>") != b.get(k, "<unset>")]
    if not changed:
        return None
    shown = ", ".join(f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in changed[:5])
    return shown + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")


def load_checkpoint(out: Path) -> dict[str, Any] | None:
    """The newest readable checkpoint of run folder ``out`` (on the CPU), or None where there is none.

    A corrupt ``checkpoint.pt`` is moved to ``checkpoint.corrupt.pt`` (kept for inspection) and ``checkpoint.prev.pt``
    is used instead, both logged; with no readable checkpoint left, ``io.CorruptFile`` names them. A file holding
    more than tensors and plain values is never loaded and never skipped over: ``io.UnsafeFile``.
    """
    current, prev = out / "checkpoint.pt", out / "checkpoint.prev.pt"
    errors = []
    for path in (current, prev):
        if not path.exists():
            continue
        try:
            ck = io.load_torch(path, "cpu", CHECKPOINT_KEYS)
        except io.UnsafeFile:
            raise
        except io.CorruptFile as err:
            errors.append(str(err))
            if path == current:
                os.replace(current, out / "checkpoint.corrupt.pt")
                print(f"[avb] {err}; moved it to {out / 'checkpoint.corrupt.pt'}", flush=True)
            continue
        if path == prev:
            print(f"[avb] using the previous checkpoint {prev} (step {ck['step']})", flush=True)
        return ck
    if errors:
        raise io.CorruptFile(f"no readable checkpoint in {out}: {'; '.join(errors)}. Delete the checkpoint files "
                             f"to train {out} from the start")
    return None


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
