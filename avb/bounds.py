"""Bounds on log p(x) beside AIS: the IWAE bound and bidirectional Monte Carlo (BDMC).

* IWAE_k (Burda et al. 2016): log (1/k) sum_j p(x, z_j) / q(z_j|x) with z_j ~ q. For any proposal density q,
  E[IWAE_k] <= log p(x), non-decreasing in k, and IWAE_1 is the single-sample ELBO. It needs q's density: the VAE's
  Gaussian encoder and, for AVB with adaptive contrast, the Gaussian r(z|x) built from the AC moments of q (a valid
  proposal in its own right; the bound is then about r, not the implicit q). AVB's implicit encoder has no density,
  so no IWAE bound is reported for it (NaN with ``IMPLICIT_NOTE``), never a number made up from another proposal.
* BDMC (Grosse et al. 2015; lxuechen/BDMC): forward AIS is a stochastic lower bound on log p(x), reverse AIS from an
  exact posterior sample a stochastic upper bound; their difference (the sandwich width) bounds the error of either.
  Exact posterior samples exist for data simulated from the model (``simulate_bernoulli``): z ~ p(z), x ~ p(x|z)
  makes z an exact draw from p(z|x). On real data the upper bound is not valid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .ais import LOG_2PI, AISResult, LogLik, estimate_log_likelihood, estimate_log_likelihood_reverse
from .hmc import normal
from .objectives import IMPLICIT_NOTE, log_normal  # noqa: F401 (IMPLICIT_NOTE: each method's ``proposal_note``)


@torch.no_grad()
def iwae_bound(log_likelihood: LogLik, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, k: int, *,
               generator: torch.Generator | None = None, max_rows: int | None = None) -> torch.Tensor:
    """IWAE_k per image for the proposal N(mean, diag std^2) ([B, z_dim] each) and prior N(0, I).

    ``log_likelihood(x_rep, z)`` as for AIS (rows image-major: row b*k + j is sample j of image b). All z are drawn
    at once from one stream (on the generator's device, ``avb.hmc.normal``), so ``max_rows`` (rows per decoder call)
    does not change the result.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    b, d = mean.shape
    if std.shape != mean.shape or x.shape[0] != b:
        raise ValueError(f"x, mean and std must have B={b} rows and mean/std equal shapes, got {tuple(x.shape)}, "
                         f"{tuple(mean.shape)}, {tuple(std.shape)}")
    rows = b * k
    mean_r, std_r = mean.repeat_interleave(k, dim=0), std.repeat_interleave(k, dim=0)
    z = mean_r + std_r * normal(generator, (rows, d), None, mean.device)
    log_w = log_normal(z, mean_r, std_r).neg_()
    log_w += -0.5 * (z * z + LOG_2PI).sum(-1)
    cap = rows if max_rows is None else max(1, int(max_rows))
    for start in range(0, rows, cap):
        stop = min(rows, start + cap)
        idx = torch.arange(start, stop, device=x.device) // k
        log_w[start:stop] += log_likelihood(x.index_select(0, idx), z[start:stop])
    return torch.logsumexp(log_w.view(b, k), dim=1) - math.log(k)


@dataclass
class BDMCResult:
    lower: torch.Tensor           # [B] forward AIS: stochastic lower bound
    upper: torch.Tensor           # [B] reverse AIS: stochastic upper bound (simulated data only)
    forward: AISResult
    reverse: AISResult

    @property
    def width(self) -> torch.Tensor:
        """Sandwich width upper - lower per image (in expectation >= 0; bounds the error of either estimate)."""
        return self.upper - self.lower


def bdmc(log_likelihood: LogLik, x: torch.Tensor, z_posterior: torch.Tensor, *, n_steps: int, n_chains: int,
         init: tuple[torch.Tensor, torch.Tensor] | None = None, generator: torch.Generator | None = None,
         **options) -> BDMCResult:
    """Forward and reverse AIS with the same schedule and transitions; ``options`` as for
    ``estimate_log_likelihood`` (schedule, eps, adapt, leapfrog, leapfrog_steps, max_rows, ...)."""
    z_dim = z_posterior.shape[-1]
    fwd = estimate_log_likelihood(log_likelihood, x, z_dim, n_steps=n_steps, n_chains=n_chains, init=init,
                                  generator=generator, **options)
    rev = estimate_log_likelihood_reverse(log_likelihood, x, z_posterior, n_steps=n_steps, n_chains=n_chains,
                                          init=init, generator=generator, **options)
    return BDMCResult(lower=fwd.log_px, upper=rev.log_px, forward=fwd, reverse=rev)


@torch.no_grad()
def simulate_bernoulli(decoder: torch.nn.Module, n: int, z_dim: int,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, z) from the model: z ~ N(0, I), x ~ Bernoulli(sigmoid(decoder(z))); z is an exact draw from p(z|x).
    Both drawn from ``generator`` on its own device."""
    dev = next(decoder.parameters()).device
    z = normal(generator, (n, z_dim), None, dev)
    probs = torch.sigmoid(decoder(z)).to(generator.device if generator is not None else "cpu")
    return torch.bernoulli(probs, generator=generator).to(dev), z
