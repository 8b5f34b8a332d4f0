"""Annealed importance sampling (Neal 2001) for log p(x) of a latent-variable model with prior N(0, I).

Every image x chain pair is one row of a single batched state; all rows advance through the transitions together
(lock-step). The path is geometric between the normalised initial density q0 (prior, or a Gaussian (mean, std) per
image) and the unnormalised posterior p(x|z) p(z), so log Z0 = 0. As in the official code (``avb/validate/ais.py``):

* log w += (beta_{t+1} - beta_t) * [log p(x,z) - log q0(z)], then one HMC transition at beta_{t+1} (none after the
  last step);
* HMC with unit mass, momentum resampled each transition, per-dimension step ``eps * std(q0)``;
* the official leapfrog: half momentum step, L + 1 position updates with L full momentum steps between them, final
  half step (``leapfrog="official"``), or the textbook one with L position updates (``leapfrog="standard"``);
* step adaptation ``official``: after each transition, eps /= 1.1 if the mean acceptance is < 0.6, eps *= 1.1 if
  > 0.7, with one eps per chain index k and the mean taken over the images of that chain -- exactly the official
  code, which runs chain k as one sequential pass over the batch of images; ``wu``: per-row eps, x1.02 / x0.98
  towards an acceptance EMA (0.9) target of 0.65, clipped to [1e-4, 0.5]; ``none``: fixed eps.

Each transition is ``avb.hmc.transition``, the HMC kernel shared with the eight-schools gold standard (``avb.hmc``
``hmc_step`` / ``sample_hmc``), with the annealed potential U_beta = -log f_beta.

Chunking. Only the gradient evaluations are chunked: ``max_rows`` (or its older name ``chunk_size``, or a
``memory_mb`` budget converted to rows, see ``rows_for_memory``) caps the rows of image x chain pairs that go
through the decoder at once. All random numbers are drawn for all rows at once from one stream, and the step
adaptation only sees per-chain / per-row statistics of the whole state, so the result is independent of the
chunking: identical up to float rounding of batched matmuls (tested). The state held for all rows is small
(z, momenta, gradients, weights: O(rows x z_dim)); x is repeated per chain only inside a chunk.

Random numbers are drawn on the generator's device (``avb.hmc.normal``): a CPU generator gives the same numbers on
any device (moved to it), a CUDA generator draws on the GPU without host copies (reproducible on that device).

Groups (``adapt_group = G``). One call may anneal several batches of G images as if each were its own call, one
after the other with the same generator: each group has its own per-chain step adaptation (``official``), and its
random numbers come from a copy of the generator started where the calls for the groups before it would have left
it (``_GroupStreams``: the earlier groups' draws are made and discarded); the generator ends where the last call
would leave it. So the numbers do not depend on how many groups share a call (identical with the same rows per
decoder evaluation, else up to float rounding; tested), and a GPU gets many rows per decoder evaluation.

Reverse AIS (``estimate_log_likelihood_reverse``) runs the same chain with the schedule reversed, from a given exact
posterior sample; on data simulated from the model it gives a stochastic upper bound (BDMC, Grosse et al. 2015).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .hmc import leapfrog_positions, normal, transition, uniform, value_and_grad

LOG_2PI = math.log(2 * math.pi)
LogLik = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class AISResult:
    log_px: torch.Tensor          # [B] logmeanexp over chains (reverse AIS: minus logmeanexp, an upper bound)
    log_weights: torch.Tensor     # [B, K] (reverse AIS: log weights of the reverse chain, estimates of -log p(x))
    ess: torch.Tensor             # [B] effective sample size of the normalised weights
    accept_trace: list[float] = field(default_factory=list)  # mean acceptance over all rows per transition
    eps_trace: list[float] = field(default_factory=list)     # mean step size (before the per-dimension std scale)
    max_rows: int = 0             # rows per gradient evaluation that were used
    last_accept: torch.Tensor | None = None  # [B, K] acceptance of the last transition (None: no transition)


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


class _Target:
    """log p(x|z) and its z-gradient for all rows, ``max_rows`` rows at a time.

    Row r belongs to image r // k. Single chunk: x is repeated once and reused; several chunks: each chunk's x rows
    are gathered when it is evaluated, so memory stays O(max_rows x x_dim).
    """

    def __init__(self, log_likelihood: LogLik, x: torch.Tensor, k: int, max_rows: int | None):
        self.f, self.x, self.k = log_likelihood, x, k
        self.rows = x.shape[0] * k
        self.max_rows = self.rows if max_rows is None else max(1, min(self.rows, int(max_rows)))
        self.x_full = x.repeat_interleave(k, dim=0) if self.max_rows == self.rows else None

    def x_rows(self, start: int, stop: int) -> torch.Tensor:
        if self.x_full is not None:
            return self.x_full[start:stop]
        if self.k == 1:
            return self.x[start:stop]
        return self.x.index_select(0, torch.arange(start, stop, device=self.x.device) // self.k)

    def _eval(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(x|z) and its z-gradient (the prior is added analytically by the caller)."""
        return value_and_grad(lambda zg: self.f(x, zg), z)

    def __call__(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.x_full is not None:
            return self._eval(self.x_full, z)
        vals, grads = [], []
        for start in range(0, self.rows, self.max_rows):
            stop = min(self.rows, start + self.max_rows)
            v, g = self._eval(self.x_rows(start, stop), z[start:stop])
            vals.append(v)
            grads.append(g)
        return torch.cat(vals), torch.cat(grads)


def rows_for_memory(log_likelihood: LogLik, x: torch.Tensor, z_dim: int, memory_mb: float,
                    probe_rows: tuple[int, int] = (4, 20), safety: float = 2.0) -> int:
    """Rows per gradient evaluation that fit ``memory_mb`` MiB of autograd working set.

    The bytes a row costs are measured, not guessed: ``log_likelihood`` runs forward on two probe sizes under
    saved-tensor hooks that add up the tensors autograd keeps for the backward pass; the difference over the
    difference in rows removes what does not grow with the rows (the weights). That is multiplied by ``safety``
    (gradient buffers of the backward pass are about as large as the saved activations) and the row's own x and z
    are added. An estimate: allocator overhead and fragmentation are not counted. Uses no random numbers.
    """
    if memory_mb <= 0:
        raise ValueError(f"memory_mb must be > 0, got {memory_mb}")
    n1, n2 = probe_rows
    nbytes = []
    for n in (n1, n2):
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        idx = torch.arange(n, device=x.device) % x.shape[0]
        z = torch.zeros(n, z_dim, device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float32)
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            zg = z.requires_grad_(True)
            out = log_likelihood(x.index_select(0, idx), zg)
        del out
        nbytes.append(total)
    per_row = max(0.0, (nbytes[1] - nbytes[0]) / (n2 - n1)) * safety
    per_row += x[0].numel() * x.element_size() + 8 * z_dim * 4
    return max(1, int(memory_mb * 2 ** 20 // per_row))


def _transitions(betas) -> int:
    """HMC transitions of a run over ``betas``: one between consecutive temperatures but the last."""
    return max(0, len(betas) - 2)


def _clone(generator: torch.Generator) -> torch.Generator:
    g = torch.Generator(device=generator.device)
    g.set_state(generator.get_state())
    return g


class _GroupStreams:
    """The random numbers of consecutive groups of rows (``rows`` per group), each group from its own copy of
    ``generator`` started where forward AIS calls for the groups before it (a z0 draw, then per transition momenta
    and uniforms: ``d`` latent dimensions, ``transitions`` transitions) would have left it. ``generator`` itself is
    advanced past all groups: it ends where the last of those calls would leave it."""

    def __init__(self, generator: torch.Generator | None, rows: list[int], d: int, transitions: int):
        gen = torch.default_generator if generator is None else generator
        self.rows, self.gens = rows, []
        for r in rows:
            self.gens.append(_clone(gen))
            normal(gen, (r, d), None, gen.device)
            for _ in range(transitions):
                normal(gen, (r, d), None, gen.device)
                uniform(gen, (r,), None, gen.device)

    def _draw(self, fn, shape, dtype, device):
        if shape[0] != sum(self.rows):
            raise ValueError(f"{shape[0]} rows drawn from groups of {self.rows} rows")
        return torch.cat([fn(g, (r, *shape[1:]), dtype, g.device) for g, r in zip(self.gens, self.rows)]).to(device)

    def normal(self, shape, dtype, device):
        return self._draw(normal, shape, dtype, device)

    def uniform(self, shape, dtype, device):
        return self._draw(uniform, shape, dtype, device)


def _chain_rate(acc: torch.Tensor, k: int, groups: list[int] | None) -> torch.Tensor:
    """Mean acceptance per chain index ([k]), or per group and chain index ([groups, k]; groups of equal size but
    perhaps the last), the mean taken over the images of the group as a call of that group alone takes it."""
    a = acc.view(-1, k)
    if groups is None:
        return a.mean(0)
    size, n_full = groups[0], sum(1 for g in groups if g == groups[0])
    rates = [a[:size * n_full].view(n_full, size, k).mean(1)]
    if n_full < len(groups):
        rates.append(a[size * n_full:].view(1, -1, k).mean(1))
    return torch.cat(rates) if len(rates) > 1 else rates[0]


def _anneal(target: _Target, mean, std, betas, z, *, k, leapfrog_steps, leapfrog, eps0, adapt, generator,
            progress, groups: list[int] | None = None):
    """Run AIS over ``betas`` (increasing: forward, decreasing: reverse) from the start state ``z`` (None: a draw
    from q0). Returns log w per row and the traces.

    With ll = log p(x|z), lp = log N(z; 0, I) and lq = log q0(z): log f_beta = (1 - beta) lq + beta (ll + lp), and
    the HMC force grad U_beta(z) = A z - C - B grad ll with A = (1 - beta) / std^2 + beta, C = (1 - beta) mean / std^2,
    B = beta; the leapfrog uses these per-transition coefficients premultiplied by the step (fewer ops per step).
    The HMC state is (ll, grad ll, lq, lp); lq and lp are computed at the end point only (``complete``).
    ``groups``: images per group (``official`` adaptation per group and chain index); ``generator`` is then the
    groups' streams (``_GroupStreams``).
    """
    n, d = mean.shape
    dev = mean.device

    if z is None:
        z = mean + std * normal(generator, (n, d), None, dev)
    inv_var = std.pow(-2)
    m_iv = mean * inv_var
    cq = -torch.log(std).sum(-1) - 0.5 * d * LOG_2PI
    cp = -0.5 * d * LOG_2PI

    def log_q0(z):
        zc = z - mean
        return cq - 0.5 * (zc * zc * inv_var).sum(-1)

    def log_prior(z):
        return cp - 0.5 * (z * z).sum(-1)

    ll, grad = target(z)
    lq, lp = log_q0(z), log_prior(z)
    logw = torch.zeros(n, device=dev)
    if adapt == "wu":
        eps = torch.full((n, 1), float(eps0), device=dev)
        ema = torch.full((n,), 0.65, device=dev)
    elif adapt == "official":
        # one eps per chain index (per group and chain index with groups), as in the official code
        eps_chain = torch.full((k,) if groups is None else (len(groups), k), float(eps0), device=dev)
        counts = None if groups is None else torch.tensor(groups, device=dev)

        def spread(ec):
            return ec.repeat(n // k).unsqueeze(-1) if counts is None else \
                ec.repeat_interleave(counts, dim=0, output_size=n // k).reshape(n, 1)
        eps = spread(eps_chain)
    else:
        eps = torch.tensor(float(eps0), device=dev)
    n_pos = leapfrog_positions(leapfrog_steps, leapfrog)
    acc_trace, eps_trace, last_accept = [], [], None

    for t in tqdm(range(len(betas) - 1), desc="AIS", disable=not progress, leave=False):
        b0, b1 = float(betas[t]), float(betas[t + 1])
        logw += (b1 - b0) * (ll + lp - lq)
        if t == len(betas) - 2:
            break
        step = eps * std
        sa = step * ((1 - b1) * inv_var + b1)
        neg_sc = step * (-(1 - b1) * m_iv)
        sb = step * b1

        def force(z, s):  # step * grad U_b1(z); s = (ll, grad, ...)
            return torch.addcmul(torch.addcmul(neg_sc, sa, z), sb, s[1], value=-1.0)

        def potential(s):  # U_b1 from s = (ll, grad, lq, lp)
            return -(1 - b1) * s[2] - b1 * (s[0] + s[3])

        z, (ll, grad, lq, lp), accept, _ = transition(
            z, (ll, grad, lq, lp), step=step, n_pos=n_pos, force=force, evaluate=target, potential=potential,
            generator=generator, complete=lambda zn, s: (*s, log_q0(zn), log_prior(zn)))
        acc = accept.float()
        last_accept = acc
        acc_trace.append(acc.mean())  # tensors: no device sync inside the loop
        if adapt == "official":
            rate = _chain_rate(acc, k, groups)
            eps_chain = torch.where(rate < 0.6, eps_chain / 1.1, torch.where(rate > 0.7, eps_chain * 1.1, eps_chain))
            eps = spread(eps_chain)
            eps_trace.append(eps_chain.mean())
        elif adapt == "wu":
            ema = 0.9 * ema + 0.1 * acc
            eps = torch.where((ema > 0.65).unsqueeze(-1), eps * 1.02, eps * 0.98).clamp(1e-4, 0.5)
            eps_trace.append(eps.mean())
        else:
            eps_trace.append(eps)
    to_list = (lambda ts: torch.stack(ts).tolist()) if acc_trace else (lambda ts: [])
    return logw, to_list(acc_trace), to_list(eps_trace), last_accept


def _check_options(adapt, leapfrog, n_chains):
    if adapt not in ("official", "wu", "none"):
        raise ValueError(f"unknown AIS step adaptation {adapt!r}; expected official, wu or none")
    if leapfrog not in ("official", "standard"):
        raise ValueError(f"unknown leapfrog {leapfrog!r}; expected official or standard")
    if n_chains < 1:
        raise ValueError(f"n_chains must be >= 1, got {n_chains}")


def _initial(x, z_dim, k, init):
    b = x.shape[0]
    if init is None:
        mean = torch.zeros(b, z_dim, device=x.device)
        std = torch.ones(b, z_dim, device=x.device)
    else:
        mean, std = init
        if mean.shape != (b, z_dim) or std.shape != (b, z_dim):
            raise ValueError(f"init must be (mean, std) of shape {(b, z_dim)}, got {tuple(mean.shape)}, "
                             f"{tuple(std.shape)}")
    return mean.repeat_interleave(k, dim=0), std.repeat_interleave(k, dim=0)


def _max_rows(log_likelihood, x, z_dim, rows, chunk_size, max_rows, memory_mb):
    caps = [int(c) for c in (chunk_size, max_rows) if c is not None]
    if memory_mb is not None:
        caps.append(rows_for_memory(log_likelihood, x, z_dim, memory_mb))
    return max(1, min([rows, *caps]))


def _result(lw: torch.Tensor, sign: float, acc, eps_t, max_rows, last_accept) -> AISResult:
    k = lw.shape[1]
    log_px = sign * (torch.logsumexp(lw, dim=1) - math.log(k))
    wn = torch.softmax(lw, dim=1)
    return AISResult(log_px=log_px, log_weights=lw, ess=1.0 / (wn * wn).sum(1), accept_trace=acc, eps_trace=eps_t,
                     max_rows=max_rows, last_accept=None if last_accept is None else last_accept.view(lw.shape))


@torch.no_grad()
def estimate_log_likelihood(log_likelihood: LogLik, x: torch.Tensor, z_dim: int, *, n_steps: int, n_chains: int,
                            init: tuple[torch.Tensor, torch.Tensor] | None = None, schedule: str = "linear",
                            leapfrog_steps: int = 10, generator: torch.Generator | None = None,
                            eps: float = 0.01, adapt: str = "official", leapfrog: str = "official",
                            chunk_size: int | None = None, max_rows: int | None = None,
                            memory_mb: float | None = None, adapt_group: int | None = None,
                            progress: bool = False) -> AISResult:
    """AIS estimate of log p(x) for each row of ``x`` ([B, ...]); see the module docstring.

    ``log_likelihood(x_rep, z)`` returns log p(x|z) per row for x repeated per chain and z of shape [rows, z_dim].
    Rows are ordered image-major: row b*K + k is chain k of image b. ``max_rows`` / ``chunk_size`` /
    ``memory_mb`` cap the rows per gradient evaluation (the smallest cap wins); the result does not depend on them.
    ``adapt_group = G``: the images in consecutive groups of G (the last perhaps smaller), each annealed as by its
    own call after the ones before it with the same generator (module docstring, 'Groups').
    """
    _check_options(adapt, leapfrog, n_chains)
    betas = schedule_betas(n_steps, schedule)
    k, b = n_chains, x.shape[0]
    mean, std = _initial(x, z_dim, k, init)
    rows = b * k
    cap = _max_rows(log_likelihood, x, z_dim, rows, chunk_size, max_rows, memory_mb)
    groups = None
    if adapt_group is not None and 0 < int(adapt_group) < b:
        g = int(adapt_group)
        groups = [min(g, b - start) for start in range(0, b, g)]
        generator = _GroupStreams(generator, [n * k for n in groups], z_dim, _transitions(betas))
    lw, acc, eps_t, last = _anneal(_Target(log_likelihood, x, k, cap), mean, std, betas, None, k=k,
                                   leapfrog_steps=leapfrog_steps, leapfrog=leapfrog, eps0=eps, adapt=adapt,
                                   generator=generator, progress=progress, groups=groups)
    return _result(lw.view(b, k), 1.0, acc, eps_t, cap, last)


@torch.no_grad()
def estimate_log_likelihood_reverse(log_likelihood: LogLik, x: torch.Tensor, z_posterior: torch.Tensor, *,
                                    n_steps: int, n_chains: int = 1,
                                    init: tuple[torch.Tensor, torch.Tensor] | None = None,
                                    schedule: str = "linear", leapfrog_steps: int = 10,
                                    generator: torch.Generator | None = None, eps: float = 0.01,
                                    adapt: str = "official", leapfrog: str = "official",
                                    chunk_size: int | None = None, max_rows: int | None = None,
                                    memory_mb: float | None = None, progress: bool = False) -> AISResult:
    """Reverse AIS: a stochastic upper bound on log p(x) from exact posterior samples (BDMC's reverse chain).

    The chain starts at ``z_posterior`` ~ p(z|x) ([B, z_dim], shared by the K chains of an image, or
    [B, K, z_dim]) and runs the forward chain's transitions with the schedule reversed (beta from 1 to 0), ending at
    the normalised q0 (prior or ``init``). Each reverse weight is an unbiased estimate of q0's normaliser over
    p(x)'s, i.e. of 1/p(x); Jensen makes -logmeanexp(log w_rev) a stochastic upper bound on log p(x). Exact
    posterior samples are available for data simulated from the model (x ~ p(x|z), z ~ p(z): z is then an exact
    draw from p(z|x)); on real data the bound is not valid (lxuechen/BDMC, Grosse et al. 2015).
    ``log_weights`` are the reverse chain's log weights; ``log_px`` is the upper bound.
    """
    _check_options(adapt, leapfrog, n_chains)
    b, k = x.shape[0], n_chains
    z_dim = z_posterior.shape[-1]
    if z_posterior.dim() == 2 and z_posterior.shape[0] == b:
        z0 = z_posterior.repeat_interleave(k, dim=0)
    elif z_posterior.dim() == 3 and z_posterior.shape[:2] == (b, k):
        z0 = z_posterior.reshape(b * k, z_dim)
    else:
        raise ValueError(f"z_posterior must have shape {(b, 'z_dim')} or {(b, k, 'z_dim')}, "
                         f"got {tuple(z_posterior.shape)}")
    betas = schedule_betas(n_steps, schedule)[::-1].copy()
    mean, std = _initial(x, z_dim, k, init)
    cap = _max_rows(log_likelihood, x, z_dim, b * k, chunk_size, max_rows, memory_mb)
    lw, acc, eps_t, last = _anneal(_Target(log_likelihood, x, k, cap), mean, std, betas, z0.to(mean), k=k,
                                   leapfrog_steps=leapfrog_steps, leapfrog=leapfrog, eps0=eps, adapt=adapt,
                                   generator=generator, progress=progress)
    return _result(lw.view(b, k), -1.0, acc, eps_t, cap, last)
