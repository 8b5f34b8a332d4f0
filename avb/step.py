"""One training iteration as the loop runs it, and its metrics kept on the device (issue 15 item 2).

``train_step`` is the body of ``avb.train.fit``'s loop: one forward pass gives the primal and adversary losses, both
gradients are taken from it and both Adam updates (``make_optimizers``) are applied together; ``StepMeter`` adds each
step's metrics (``metric_tensor``) and the finiteness of its losses and parameters (``parameter_sums``) to float64
sums on the device, so no iteration waits for it; the loop reads them once per row. ``step_metrics`` is the one-step
read (benchmarks, tests).
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any, Callable, Sequence

import torch

from . import speed
from .objectives import Method, Step


class TrainingDiverged(RuntimeError):
    """A loss or a parameter became NaN or infinite."""


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
