"""Hamiltonian Monte Carlo: the one kernel of AIS (``avb.ais``) and of the eight-schools gold standard.

* ``value_and_grad`` / ``log_density_and_grad``: a batched function z [n, d] -> [n] and its z-gradient by autograd;
* ``leapfrog_trajectory``: the leapfrog integrator with unit mass (``leapfrog_positions``: the official AIS variant
  with L + 1 position updates, or the textbook one with L);
* ``metropolis_accept``: the Metropolis test of a proposal per row;
* ``transition``: one HMC transition of every row (fresh momentum, leapfrog, Metropolis test, selection), for any
  potential and any per-row state; AIS's annealed transition and ``hmc_step`` (a plain target) are both this one;
* ``DualAveraging``: per-row step-size adaptation towards a target acceptance probability (Hoffman & Gelman 2014);
* ``sample_hmc``: parallel chains with dual-averaging warm-up, then a fixed (optionally jittered) step.

Random numbers come from one ``torch.Generator`` (momenta, then the uniforms of the test, per transition), drawn on
the generator's own device and moved to the state's: a CPU generator gives the same draws whatever the state's
device; a CUDA generator draws on the GPU (no host copies; reproducible per device). ``generator`` may also be an
object with ``normal(shape, dtype, device)`` / ``uniform(shape, dtype, device)`` methods (``avb.ais``'s per-group
streams); None is torch's default CPU stream.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

State = tuple[torch.Tensor, ...]


def value_and_grad(f: Callable[[torch.Tensor], torch.Tensor],
                   z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """f(z) [n] (detached) and d(sum f)/dz [n, d] by autograd, for a batched f and z [n, d] (z is detached first)."""
    with torch.enable_grad():
        zg = z.detach().requires_grad_(True)
        v = f(zg)
        (grad,) = torch.autograd.grad(v, zg, grad_outputs=torch.ones_like(v))  # no sum node
    return v.detach(), grad


def log_density_and_grad(log_density: Callable[[torch.Tensor], torch.Tensor]):
    """Wrap a batched log density z [n, d] -> [n] into z -> (log density, gradient) by autograd."""
    return lambda z: value_and_grad(log_density, z)


def leapfrog_positions(leapfrog_steps: int, leapfrog: str) -> int:
    """Position updates per trajectory: L + 1 for the official AIS leapfrog (``official``), L for ``standard``."""
    return leapfrog_steps + 1 if leapfrog == "official" else leapfrog_steps


def leapfrog_trajectory(z: torch.Tensor, p0: torch.Tensor, step: torch.Tensor, n_pos: int,
                        force: Callable, evaluate: Callable, state):
    """The leapfrog integrator (unit mass) of the HMC kernel.

    Half momentum step, ``n_pos`` position updates with ``n_pos - 1`` full momentum steps between them, final half
    step. ``evaluate(z)`` returns the state at z that ``force(z, state)`` needs (e.g. log density and gradient);
    ``force(z, state)`` is ``step * grad U(z)`` for the potential U = -log density; ``state`` is the one at the start.
    ``step`` is a tensor (a scalar or per row [n, 1]). Returns the end point, its state and the final momentum.
    """
    p = torch.add(p0, force(z, state), alpha=-0.5)
    zn, state_n = z, state
    for i in range(n_pos):
        zn = torch.addcmul(zn, step, p)
        state_n = evaluate(zn)
        if i < n_pos - 1:
            p = p - force(zn, state_n)
    p = torch.add(p, force(zn, state_n), alpha=-0.5)
    return zn, state_n, p


def metropolis_accept(u_old: torch.Tensor, u_new: torch.Tensor, p0: torch.Tensor, p: torch.Tensor,
                      uniform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Metropolis test of an HMC proposal per row: (accept mask, log acceptance ratio); a non-finite ratio rejects."""
    log_accept = (u_old - u_new) + 0.5 * (p0 * p0 - p * p).sum(-1)
    accept = uniform < torch.exp(log_accept)
    accept &= torch.isfinite(log_accept)
    return accept, log_accept


def normal(generator, shape: tuple[int, ...], dtype: torch.dtype | None, device: torch.device) -> torch.Tensor:
    """N(0, 1) draws of ``shape`` from ``generator`` on its own device (the CPU for None), on ``device``."""
    if hasattr(generator, "normal"):
        return generator.normal(shape, dtype, device)
    where = generator.device if generator is not None else "cpu"
    return torch.randn(*shape, generator=generator, dtype=dtype, device=where).to(device)


def uniform(generator, shape: tuple[int, ...], dtype: torch.dtype | None, device: torch.device) -> torch.Tensor:
    """U(0, 1) draws of ``shape``, as ``normal``."""
    if hasattr(generator, "uniform"):
        return generator.uniform(shape, dtype, device)
    where = generator.device if generator is not None else "cpu"
    return torch.rand(*shape, generator=generator, dtype=dtype, device=where).to(device)


def transition(z: torch.Tensor, state: State, *, step: torch.Tensor, n_pos: int, force: Callable,
               evaluate: Callable[[torch.Tensor], State], potential: Callable[[State], torch.Tensor],
               generator: torch.Generator | None = None, complete: Callable[[torch.Tensor, State], State] | None = None,
               dtype: torch.dtype | None = None) -> tuple[torch.Tensor, State, torch.Tensor, torch.Tensor]:
    """One HMC transition (unit mass, fresh momentum p0 ~ N(0, I)) of every row of z [n, d].

    ``state`` is a tuple of per-row tensors at z ([n] or [n, ...]). The leapfrog (``leapfrog_trajectory`` with
    ``force``, ``evaluate`` and ``n_pos``) runs from (z, state); ``complete(zn, s)``, if given, extends the state
    ``evaluate`` returned at the end point to a full state (quantities the leapfrog does not need). ``potential(state)``
    is U per row. Each row keeps the proposal where ``metropolis_accept`` accepts it. Random numbers: p0, then the
    uniforms, from ``generator`` (``normal`` / ``uniform``: on its own device) in ``dtype`` (None: torch's default),
    on z's device. Returns the new z and state, the accept mask and the log acceptance ratio.
    """
    n, d = z.shape
    p0 = normal(generator, (n, d), dtype, z.device)
    zn, state_n, p = leapfrog_trajectory(z, p0, step, n_pos, force, evaluate, state)
    if complete is not None:
        state_n = complete(zn, state_n)
    u = uniform(generator, (n,), dtype, z.device)
    accept, log_accept = metropolis_accept(potential(state), potential(state_n), p0, p, u)

    def keep(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        return torch.where(accept.view(-1, *[1] * (old.dim() - 1)), new, old)

    return keep(zn, z), tuple(keep(s_n, s) for s_n, s in zip(state_n, state)), accept, log_accept


@dataclass
class HMCState:
    z: torch.Tensor       # [n, d] one row per chain
    log_p: torch.Tensor   # [n] log density at z
    grad: torch.Tensor    # [n, d] its gradient


def hmc_step(state: HMCState, evaluate: Callable, step: torch.Tensor, leapfrog_steps: int,
             generator: torch.Generator | None = None,
             leapfrog: str = "standard") -> tuple[HMCState, torch.Tensor, torch.Tensor]:
    """One ``transition`` on a plain target for every row of ``state``: ``evaluate(z)`` returns (log density [n],
    gradient [n, d]) (see ``log_density_and_grad``); ``step`` is a scalar tensor or per row [n, 1]. Random numbers
    are drawn in the state's dtype. Returns the new state, the accept mask and the acceptance probability
    min(1, ratio) per row (0 where the ratio is not finite).
    """
    z, (log_p, grad), accept, log_accept = transition(
        state.z, (state.log_p, state.grad), step=step, n_pos=leapfrog_positions(leapfrog_steps, leapfrog),
        force=lambda z_, s: -step * s[1], evaluate=evaluate, potential=lambda s: -s[0], generator=generator,
        dtype=state.z.dtype)
    prob = torch.where(torch.isfinite(log_accept), log_accept.clamp(max=0.0).exp(), torch.zeros_like(log_accept))
    return HMCState(z, log_p, grad), accept, prob


class DualAveraging:
    """Dual averaging of log step per row (Hoffman & Gelman 2014, NUTS paper section 3.2) towards ``target``
    acceptance probability: shrinkage point ``mu``, gamma, t0, kappa. ``log_eps`` [n, 1] is the start and then the
    current iterate; ``final()`` is the averaged step (the start if no update was made)."""

    def __init__(self, log_eps: torch.Tensor, mu: float, target: float, gamma: float = 0.05, t0: float = 10.0,
                 kappa: float = 0.75):
        self.log_eps, self.log_eps_bar, self.h_bar = log_eps, log_eps.clone(), torch.zeros_like(log_eps)
        self.mu, self.target, self.gamma, self.t0, self.kappa = mu, target, gamma, t0, kappa
        self.m = 0

    def update(self, accept_prob: torch.Tensor) -> None:
        """One adaptation step from the acceptance probabilities [n] of the last transition."""
        self.m += 1
        m = self.m
        eta = 1.0 / (m + self.t0)
        self.h_bar = (1 - eta) * self.h_bar + eta * (self.target - accept_prob.unsqueeze(-1))
        self.log_eps = self.mu - math.sqrt(m) / self.gamma * self.h_bar
        w = m ** -self.kappa
        self.log_eps_bar = w * self.log_eps + (1 - w) * self.log_eps_bar

    def step(self) -> torch.Tensor:
        return torch.exp(self.log_eps)

    def final(self) -> torch.Tensor:
        return torch.exp(self.log_eps_bar if self.m > 0 else self.log_eps)


@dataclass
class HMCResult:
    draws: np.ndarray          # [chains, draws, dim]
    step_size: np.ndarray      # [chains] the fixed step after warm-up
    accept_prob: np.ndarray    # [chains] mean acceptance probability while sampling
    seconds: float


def sample_hmc(evaluate: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], dim: int, *, chains: int,
               warmup: int, draws: int, leapfrog_steps: int = 10, step_size: float = 0.1,
               target_accept: float = 0.8, jitter: float = 0.1, init_scale: float = 2.0, thin: int = 1,
               seed: int = 0, dtype: torch.dtype = torch.float64, progress: bool = False) -> HMCResult:
    """Parallel HMC chains (one row each, ``hmc_step`` with the textbook leapfrog of L = ``leapfrog_steps``) on the
    target ``evaluate(z) -> (log density, gradient)``, from overdispersed starts N(0, init_scale^2 I).

    Warm-up: per-chain ``DualAveraging`` of log step (gamma 0.05, t0 10, kappa 0.75, mu = log(10 step_size)) on the
    acceptance probability; after it each chain's step is fixed at its averaged value (times a uniform jitter in
    [1 - jitter, 1 + jitter] per transition, against periodic trajectories). ``draws`` transitions are kept per
    chain (every ``thin``-th). All random numbers come from one generator seeded with ``seed``.
    """
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    z = init_scale * torch.randn(chains, dim, generator=gen, dtype=dtype)
    state = HMCState(z, *evaluate(z))
    adapt = DualAveraging(torch.full((chains, 1), math.log(step_size), dtype=dtype), math.log(10 * step_size),
                          target_accept)
    for _ in tqdm(range(warmup), desc="HMC warm-up", disable=not progress, mininterval=2.0):
        state, _, prob = hmc_step(state, evaluate, adapt.step(), leapfrog_steps, gen)
        adapt.update(prob)
    eps = adapt.final()
    kept = np.empty((chains, draws, dim))
    probs = torch.zeros(chains, dtype=dtype)
    for i in tqdm(range(draws * thin), desc="HMC", disable=not progress, mininterval=2.0):
        step = eps if jitter <= 0 else eps * (1 + jitter * (2 * torch.rand(chains, 1, generator=gen, dtype=dtype) - 1))
        state, _, prob = hmc_step(state, evaluate, step, leapfrog_steps, gen)
        probs += prob
        if (i + 1) % thin == 0:
            kept[:, i // thin] = state.z.numpy()
    return HMCResult(kept, eps.squeeze(-1).numpy(), (probs / max(1, draws * thin)).numpy(),
                     time.perf_counter() - t0)
