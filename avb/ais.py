"""Annealed importance sampling (Neal 2001) for log p(x) of a latent-variable model with prior N(0, I).

Every image x chain pair is one row of a single batched tensor (processed in chunks of ``chunk_size`` rows).
The path is geometric between the normalised initial density q0 (prior, or a Gaussian (mean, std) per image) and
the unnormalised posterior p(x|z) p(z), so log Z0 = 0. As in the official code (``avb/validate/ais.py``):

* log w += (beta_{t+1} - beta_t) * [log p(x,z) - log q0(z)], then one HMC transition at beta_{t+1} (none after the
  last step);
* HMC with unit mass, momentum resampled each transition, per-dimension step ``eps * std(q0)``;
* the official leapfrog: half momentum step, L + 1 position updates with L full momentum steps between them, final
  half step (``leapfrog="official"``), or the textbook one with L position updates (``leapfrog="standard"``);
* step adaptation ``official``: after each transition, eps /= 1.1 if the mean acceptance is < 0.6, eps *= 1.1 if
  > 0.7; ``wu``: per-row eps, x1.02 / x0.98 towards an acceptance EMA (0.9) target of 0.65, clipped to [1e-4, 0.5];
  ``none``: fixed eps.

One difference from the official code: it runs the chains one after another over a batch, so its adaptive step
sees a batch-mean over images only; here the mean is over the images x chains of a chunk.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

LOG_2PI = math.log(2 * math.pi)
LogLik = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class AISResult:
    log_px: torch.Tensor          # [B] logmeanexp over chains
    log_weights: torch.Tensor     # [B, K]
    ess: torch.Tensor             # [B] effective sample size of the normalised weights
    accept_trace: list[float] = field(default_factory=list)  # mean acceptance per transition (first chunk)
    eps_trace: list[float] = field(default_factory=list)


def schedule_betas(n_steps: int, schedule: str = "linear", rad: float = 4.0) -> np.ndarray:
    """n_steps + 1 inverse temperatures from 0 to 1: ``linear`` (official) or Wu et al.'s ``sigmoid``."""
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if schedule == "linear":
        return np.linspace(0.0, 1.0, n_steps + 1)
    if schedule == "sigmoid":
        if n_steps == 1:
            return np.array([0.0, 1.0])
        s = 1.0 / (1.0 + np.exp(-np.linspace(-rad, rad, n_steps + 1)))
        return (s - s[0]) / (s[-1] - s[0])
    raise ValueError(f"unknown AIS schedule {schedule!r}; expected linear or sigmoid")


def _log_normal(z, mean, std):
    zn = (z - mean) / std
    return -0.5 * (zn * zn + LOG_2PI).sum(-1) - torch.log(std).sum(-1)


class _Target:
    """log p(x, z) = log p(x|z) + log N(z; 0, I) and its gradient in z, for a fixed chunk of rows."""

    def __init__(self, log_likelihood: LogLik, x: torch.Tensor):
        self.f, self.x = log_likelihood, x

    def __call__(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            val = self.f(self.x, z) - 0.5 * (z * z).sum(-1) - 0.5 * z.shape[-1] * LOG_2PI
            (grad,) = torch.autograd.grad(val.sum(), z)
        return val.detach(), grad


def _chunk_ais(target: _Target, mean, std, betas, *, leapfrog_steps, leapfrog, eps0, adapt, generator, progress):
    n, d = mean.shape
    dev = mean.device

    def randn(*shape):
        return torch.randn(*shape, generator=generator, device="cpu").to(dev)

    z = mean + std * randn(n, d)
    g, grad_g = target(z)
    logw = torch.zeros(n, device=dev)
    eps = torch.full((n, 1), float(eps0), device=dev) if adapt == "wu" else float(eps0)
    ema = torch.full((n,), 0.65, device=dev)
    n_pos = leapfrog_steps + 1 if leapfrog == "official" else leapfrog_steps
    acc_trace, eps_trace = [], []

    def log_q0(z):
        return _log_normal(z, mean, std)

    def grad_u(z, grad_g, beta):  # U_beta = -(1-beta) log q0 - beta log p(x,z)
        return (1 - beta) * (z - mean) / std ** 2 - beta * grad_g

    for t in tqdm(range(len(betas) - 1), desc="AIS", disable=not progress, leave=False):
        b0, b1 = float(betas[t]), float(betas[t + 1])
        logw += (b1 - b0) * (g - log_q0(z))
        if t == len(betas) - 2:
            break
        step = eps * std
        p0 = randn(n, d)
        u_old = -(1 - b1) * log_q0(z) - b1 * g
        zn, gn, grad_n = z, g, grad_g
        p = p0 - 0.5 * step * grad_u(zn, grad_n, b1)
        for i in range(n_pos):
            zn = zn + step * p
            gn, grad_n = target(zn)
            if i < n_pos - 1:
                p = p - step * grad_u(zn, grad_n, b1)
        p = p - 0.5 * step * grad_u(zn, grad_n, b1)
        u_new = -(1 - b1) * log_q0(zn) - b1 * gn
        log_accept = (u_old + 0.5 * (p0 * p0).sum(-1)) - (u_new + 0.5 * (p * p).sum(-1))
        accept = torch.rand(n, generator=generator).to(dev) < torch.exp(log_accept)
        accept &= torch.isfinite(log_accept)
        a = accept.unsqueeze(-1)
        z, g, grad_g = torch.where(a, zn, z), torch.where(accept, gn, g), torch.where(a, grad_n, grad_g)
        rate = accept.float().mean().item()
        acc_trace.append(rate)
        if adapt == "official":
            eps = eps / 1.1 if rate < 0.6 else eps * 1.1 if rate > 0.7 else eps
            eps_trace.append(eps)
        elif adapt == "wu":
            ema = 0.9 * ema + 0.1 * accept.float()
            eps = torch.where((ema > 0.65).unsqueeze(-1), eps * 1.02, eps * 0.98).clamp(1e-4, 0.5)
            eps_trace.append(eps.mean().item())
        else:
            eps_trace.append(eps)
    return logw, acc_trace, eps_trace


@torch.no_grad()
def estimate_log_likelihood(log_likelihood: LogLik, x: torch.Tensor, z_dim: int, *, n_steps: int, n_chains: int,
                            init: tuple[torch.Tensor, torch.Tensor] | None = None, schedule: str = "linear",
                            leapfrog_steps: int = 10, generator: torch.Generator | None = None,
                            eps: float = 0.01, adapt: str = "official", leapfrog: str = "official",
                            chunk_size: int | None = None, progress: bool = False) -> AISResult:
    """AIS estimate of log p(x) for each row of ``x`` ([B, ...]); see the module docstring.

    ``log_likelihood(x_rep, z)`` returns log p(x|z) per row for x repeated per chain and z of shape [B*K, z_dim].
    Rows are ordered image-major: row b*K + k is chain k of image b.
    """
    if adapt not in ("official", "wu", "none"):
        raise ValueError(f"unknown AIS step adaptation {adapt!r}; expected official, wu or none")
    if leapfrog not in ("official", "standard"):
        raise ValueError(f"unknown leapfrog {leapfrog!r}; expected official or standard")
    if n_chains < 1:
        raise ValueError(f"n_chains must be >= 1, got {n_chains}")
    betas = schedule_betas(n_steps, schedule)
    b, k = x.shape[0], n_chains
    if init is None:
        mean = torch.zeros(b, z_dim, device=x.device)
        std = torch.ones(b, z_dim, device=x.device)
    else:
        mean, std = init
        if mean.shape != (b, z_dim) or std.shape != (b, z_dim):
            raise ValueError(f"init must be (mean, std) of shape {(b, z_dim)}, got {tuple(mean.shape)}, "
                             f"{tuple(std.shape)}")
    x_rep = x.repeat_interleave(k, dim=0)
    mean, std = mean.repeat_interleave(k, dim=0), std.repeat_interleave(k, dim=0)
    rows = b * k
    chunk = rows if chunk_size is None else max(1, int(chunk_size))
    logw = torch.empty(rows, device=x.device)
    result = AISResult(log_px=torch.empty(0), log_weights=torch.empty(0), ess=torch.empty(0))
    for start in range(0, rows, chunk):
        sl = slice(start, min(rows, start + chunk))
        lw, acc, eps_t = _chunk_ais(_Target(log_likelihood, x_rep[sl]), mean[sl], std[sl], betas,
                                    leapfrog_steps=leapfrog_steps, leapfrog=leapfrog, eps0=eps, adapt=adapt,
                                    generator=generator, progress=progress)
        logw[sl] = lw
        if start == 0:
            result.accept_trace, result.eps_trace = acc, eps_t
    lw = logw.view(b, k)
    result.log_weights = lw
    result.log_px = torch.logsumexp(lw, dim=1) - math.log(k)
    wn = torch.softmax(lw, dim=1)
    result.ess = 1.0 / (wn * wn).sum(1)
    return result
