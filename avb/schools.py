"""Eight schools: black-box variational inference against a gold standard (notebooks/Stan-example.ipynb).

Model (non-centred, exactly as the notebook's Stan code and data): mu ~ N(0, 1), tau ~ N(0, 1) (a real, NOT
constrained positive), eta_j ~ N(0, 1), theta_j = mu + tau * eta_j, y_j ~ N(theta_j, sigma_j), J = 8, with the
notebook's data (the classic y / 10 and its own sigma). z = (mu, tau, eta_1..eta_8) in R^10 has prior N(0, I_10), so
every method sees a "decoder" log p(y|z) and the standard prior, like the image models.

* Exact reference. Given (mu, tau), y_j ~ N(mu, tau^2 + sigma_j^2) independently, and eta_j | mu, tau, y is Gaussian.
  So log p(y) and the posterior mean and standard deviation of all 10 parameters are 2-D integrals over (mu, tau),
  computed by quadrature on a grid (``exact_posterior``): exact up to grid error (checked < 1e-8).
* Gold standard samples: long HMC chains (``sample_hmc``) with the AIS HMC kernel (``avb.ais.hmc_step``): unit
  mass, textbook leapfrog with L steps, per-chain step size tuned in warm-up by dual averaging (Hoffman & Gelman
  2014) towards a target acceptance probability, then fixed (optionally jittered uniformly by +-``jitter`` per
  transition to avoid periodic trajectories), overdispersed starts N(0, init_scale^2 I). Diagnostics: the classic
  split-R-hat (Gelman et al., BDA3) and, in addition, the rank-normalised folded split-R-hat (Vehtari et al. 2021);
  the effective sample size is the multi-chain Geyer initial-monotone-sequence estimate on split chains (Stan's
  formula, not rank-normalised).
* Baselines: ADVI mean-field and full-rank (``GaussianVI``): a reparameterised Gaussian q maximising the ELBO with
  Adam; the KL to the N(0, I) prior is analytic, E_q log p(y|z) is a Monte-Carlo average over the batch.
* AVB and AVB + AC (``build``): the notebook's sampler and residual adversary as an ``avb.objectives.AVB`` model,
  trained by ``avb.train.fit`` on a dummy (empty) x; with AC, r is a Gaussian with the stop-gradient batch moments
  of z (sigma = std + 1e-6 as the notebook, or sqrt(var + floor) as the MNIST code: ``ac_floor_mode``).
* Metrics (``summarize``): absolute errors of the posterior means and standard deviations per parameter against
  the exact reference; the energy distance to gold-standard HMC draws (coordinates standardised by the exact
  posterior standard deviations) with its sampling noise floor, the energy distance between two disjoint sets of
  gold draws of the same size; the ELBO (ADVI: unbiased estimate, a bound; AVB: the adversary's estimate, not a bound)
  beside the exact log p(y); and, from ``avb.schools_kl`` (the paper's Figure 3), the kNN estimate of KL(method ||
  HMC) at the last iteration with its noise floor, and ADVI's exact KL.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:  # pandas is imported lazily, where the report needs it
    import pandas as pd
import torch.nn.functional as F

from . import io
from .ais import HMCState, hmc_step
from .nets import linear, mlp
from .objectives import AVB, LOG_2PI, Method, Step, log_normal

Y = (2.8, 0.8, -0.3, 0.7, -0.1, 0.1, 1.8, 1.2)
SIGMA = (0.8, 0.5, 0.8, 0.6, 0.5, 0.6, 0.5, 0.4)
J = len(Y)
DIM = J + 2
PARAM_NAMES = ["mu", "tau"] + [f"eta_{j + 1}" for j in range(J)]
METHODS = ("advi_meanfield", "advi_fullrank", "avb", "avb_ac")
LABELS = {"hmc": "HMC (gold)", "advi_meanfield": "ADVI mean-field", "advi_fullrank": "ADVI full-rank",
          "avb": "AVB", "avb_ac": "AVB + AC"}


# ----------------------------------------------------------------------------------------------------------- model
def log_likelihood(z: torch.Tensor, y: torch.Tensor | None = None, sigma: torch.Tensor | None = None) -> torch.Tensor:
    """log p(y | z) per row of z = (mu, tau, eta_1..eta_J), normalised."""
    y = torch.as_tensor(Y if y is None else y, dtype=z.dtype, device=z.device)
    sigma = torch.as_tensor(SIGMA if sigma is None else sigma, dtype=z.dtype, device=z.device)
    theta = z[:, :1] + z[:, 1:2] * z[:, 2:]
    r = (y - theta) / sigma
    return (-0.5 * r * r - torch.log(sigma) - 0.5 * LOG_2PI).sum(-1)


def log_joint(z: torch.Tensor) -> torch.Tensor:
    """log p(y, z) = log p(y|z) + log N(z; 0, I_10), normalised."""
    return log_likelihood(z) + log_normal(z)


def log_joint_and_grad(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(y, z) and its analytic gradient (the HMC target; checked against autograd in the tests)."""
    y = torch.as_tensor(Y, dtype=z.dtype, device=z.device)
    sigma = torch.as_tensor(SIGMA, dtype=z.dtype, device=z.device)
    mu, tau, eta = z[:, :1], z[:, 1:2], z[:, 2:]
    r = (y - mu - tau * eta) / sigma
    lp = (-0.5 * r * r - torch.log(sigma) - 0.5 * LOG_2PI).sum(-1) - 0.5 * (z * z).sum(-1) - 0.5 * DIM * LOG_2PI
    g = r / sigma                                   # d log p(y|z) / d theta_j
    grad = torch.cat([g.sum(-1, keepdim=True), (g * eta).sum(-1, keepdim=True), g * tau], dim=-1) - z
    return lp, grad


class SchoolsLikelihood(nn.Module):
    """The "decoder" of the AVB / ADVI models: log p(y|z); x is a dummy and ignored."""

    def __init__(self):
        super().__init__()
        self.register_buffer("y", torch.tensor(Y))
        self.register_buffer("sigma", torch.tensor(SIGMA))

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return log_likelihood(z, self.y, self.sigma)


def exact_posterior(n_grid: int = 801, half_width: float = 8.0) -> dict[str, Any]:
    """log p(y) and the posterior mean / sd of every parameter by quadrature over (mu, tau).

    y_j | mu, tau ~ N(mu, tau^2 + sigma_j^2); eta_j | mu, tau, y_j ~ N(m_j, v_j) with precision 1 + tau^2/sigma_j^2
    and m_j = v_j tau (y_j - mu) / sigma_j^2. A uniform grid on [-half_width, half_width]^2 (the integrand is smooth
    and decays like a Gaussian, so the Riemann sum converges geometrically). Also returns the marginal densities of
    mu and tau on the grid.
    """
    y, s2 = np.asarray(Y), np.asarray(SIGMA) ** 2
    g = np.linspace(-half_width, half_width, n_grid)
    h = g[1] - g[0]
    mu, tau = np.meshgrid(g, g, indexing="ij")
    var = tau[..., None] ** 2 + s2                                             # [n, n, J]
    log_f = (-0.5 * (y - mu[..., None]) ** 2 / var - 0.5 * np.log(2 * np.pi * var)).sum(-1)
    log_f += -0.5 * (mu ** 2 + tau ** 2) - np.log(2 * np.pi)
    top = log_f.max()
    w = np.exp(log_f - top)
    total = w.sum()
    log_evidence = float(top + np.log(total) + 2 * np.log(h))
    w /= total
    prec = 1.0 + tau[..., None] ** 2 / s2
    m = tau[..., None] * (y - mu[..., None]) / s2 / prec
    e1 = np.concatenate([[(w * mu).sum(), (w * tau).sum()], np.einsum("ab,abj->j", w, m)])
    e2 = np.concatenate([[(w * mu ** 2).sum(), (w * tau ** 2).sum()], np.einsum("ab,abj->j", w, 1.0 / prec + m * m)])
    return {"log_evidence": log_evidence, "mean": e1, "sd": np.sqrt(e2 - e1 ** 2), "grid": g,
            "mu_density": w.sum(1) / h, "tau_density": w.sum(0) / h, "n_grid": n_grid, "half_width": half_width}


# ----------------------------------------------------------------------------------------------------- diagnostics
def _split(draws: np.ndarray) -> np.ndarray:
    """[chains, n, ...] -> [2 chains, n // 2, ...] (the middle draw dropped for odd n)."""
    n = draws.shape[1] // 2
    return np.concatenate([draws[:, :n], draws[:, -n:]], axis=0)


def split_rhat(draws: np.ndarray) -> np.ndarray:
    """Classic split-R-hat (BDA3) per parameter of draws [chains, n, dim] (or [chains, n]); not rank-normalised."""
    x = _split(np.asarray(draws, dtype=np.float64))
    n = x.shape[1]
    w = x.var(axis=1, ddof=1).mean(0)
    b = n * x.mean(axis=1).var(axis=0, ddof=1)
    return np.sqrt(((n - 1) / n * w + b / n) / w)


def _rank_normal(x: np.ndarray) -> np.ndarray:
    from scipy.special import ndtri
    from scipy.stats import rankdata

    r = rankdata(x.reshape(-1, *x.shape[2:]), axis=0).reshape(x.shape)
    return ndtri((r - 0.375) / (x.shape[0] * x.shape[1] + 0.25))


def rank_split_rhat(draws: np.ndarray) -> np.ndarray:
    """Rank-normalised folded split-R-hat (Vehtari et al. 2021): max of the bulk and the tail (folded) R-hat."""
    x = np.asarray(draws, dtype=np.float64)
    folded = np.abs(x - np.median(x.reshape(-1, *x.shape[2:]), axis=0))
    return np.maximum(split_rhat(_rank_normal(x)), split_rhat(_rank_normal(folded)))


def ess(draws: np.ndarray) -> np.ndarray:
    """Effective sample size per parameter of draws [chains, n, dim] (or [chains, n]): Stan's multi-chain estimate
    on split chains with Geyer's initial monotone sequence (autocovariances by FFT); not rank-normalised."""
    x = _split(np.asarray(draws, dtype=np.float64))
    m, n = x.shape[:2]
    xc = x - x.mean(axis=1, keepdims=True)
    size = 2 ** int(np.ceil(np.log2(2 * n)))
    f = np.fft.rfft(xc, n=size, axis=1)
    acov = np.fft.irfft(f * np.conj(f), n=size, axis=1)[:, :n] / n                   # biased, [m, n, ...]
    chain_var = acov[:, 0] * n / (n - 1)
    w = chain_var.mean(0)
    var_plus = w * (n - 1) / n + (x.mean(axis=1).var(axis=0, ddof=1) if m > 1 else 0.0)
    rho = 1.0 - (w - acov.mean(0)) / var_plus                                         # [n, ...]
    rho = rho.reshape(n, -1)
    out = np.empty(rho.shape[1])
    for k in range(rho.shape[1]):
        r = rho[:, k]
        pairs = r[: 2 * (n // 2)].reshape(-1, 2).sum(1)
        stop = np.argmax(pairs < 0) if (pairs < 0).any() else len(pairs)
        p = np.minimum.accumulate(pairs[:stop]) if stop else np.zeros(1)
        tau = max(-1.0 + 2.0 * p.sum(), 1.0 / np.log10(m * n))
        out[k] = m * n / tau
    return out.reshape(x.shape[2:]) if x.ndim > 2 else out[0]


def energy_distance(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, chunk: int = 2048) -> float:
    """Energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| (V-statistic, Euclidean norm), in float64."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)

    def mean_dist(u, v):
        return sum(torch.cdist(u[i:i + chunk], v).sum().item() for i in range(0, len(u), chunk)) / (len(u) * len(v))

    return 2 * mean_dist(a, b) - mean_dist(a, a) - mean_dist(b, b)


# ----------------------------------------------------------------------------------------------------- gold standard
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
    """Parallel HMC chains (one row each) on the target ``evaluate(z) -> (log density, gradient)``.

    Warm-up: per-chain dual averaging of log step (gamma 0.05, t0 10, kappa 0.75, mu = log(10 step_size)) on the
    acceptance probability; after it each chain's step is fixed at its averaged value (times a uniform jitter in
    [1 - jitter, 1 + jitter] per transition). ``draws`` transitions are kept per chain (every ``thin``-th).
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    z = init_scale * torch.randn(chains, dim, generator=gen, dtype=dtype)
    state = HMCState(z, *evaluate(z))
    log_eps = torch.full((chains, 1), math.log(step_size), dtype=dtype)
    mu_da, h_bar, log_eps_bar = math.log(10 * step_size), torch.zeros(chains, 1, dtype=dtype), log_eps.clone()
    for m in tqdm(range(1, warmup + 1), desc="HMC warm-up", disable=not progress, mininterval=2.0):
        state, _, prob = hmc_step(state, evaluate, torch.exp(log_eps), leapfrog_steps, gen)
        eta = 1.0 / (m + 10.0)
        h_bar = (1 - eta) * h_bar + eta * (target_accept - prob.unsqueeze(-1))
        log_eps = mu_da - math.sqrt(m) / 0.05 * h_bar
        w = m ** -0.75
        log_eps_bar = w * log_eps + (1 - w) * log_eps_bar
    eps = torch.exp(log_eps_bar if warmup > 0 else log_eps)
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


def gold_standard(settings: dict[str, Any], out_npz: str | Path, out_json: str | Path,
                  progress: bool = False) -> dict[str, Any]:
    """Run the gold-standard HMC on eight schools; write the draws (npz) and diagnostics (JSON)."""
    g = settings["gold"]
    res = sample_hmc(log_joint_and_grad, DIM, chains=g["chains"], warmup=g["warmup"], draws=g["draws"],
                     leapfrog_steps=g["leapfrog_steps"], step_size=g["step_size"], target_accept=g["target_accept"],
                     jitter=g["jitter"], init_scale=g["init_scale"], thin=g["thin"], seed=settings["seed"],
                     progress=progress)
    rh, rrh, n_eff = split_rhat(res.draws), rank_split_rhat(res.draws), ess(res.draws)
    flat = res.draws.reshape(-1, DIM)
    diag = {"chains": g["chains"], "warmup": g["warmup"], "draws_per_chain": g["draws"], "thin": g["thin"],
            "leapfrog_steps": g["leapfrog_steps"], "step_size": res.step_size.tolist(),
            "accept_prob": res.accept_prob.tolist(), "seconds": res.seconds,
            "split_rhat": dict(zip(PARAM_NAMES, rh.tolist())), "rank_split_rhat": dict(zip(PARAM_NAMES, rrh.tolist())),
            "ess": dict(zip(PARAM_NAMES, n_eff.tolist())), "rhat_max": float(rh.max()),
            "rank_rhat_max": float(rrh.max()), "ess_min": float(n_eff.min()),
            "mean": dict(zip(PARAM_NAMES, flat.mean(0).tolist())), "sd": dict(zip(PARAM_NAMES, flat.std(0).tolist())),
            "mcse_mean": dict(zip(PARAM_NAMES, (flat.std(0) / np.sqrt(n_eff)).tolist())), "settings": settings}
    with io.atomic_path(out_npz) as tmp, open(tmp, "wb") as f:
        np.savez(f, draws=res.draws, step_size=res.step_size, accept_prob=res.accept_prob)
    io.write_json(diag, out_json)
    return diag


# -------------------------------------------------------------------------------------------- variational methods
class GaussianVI(Method):
    """ADVI: q(z) = N(loc, L L^T), L diagonal (mean-field) or lower-triangular with a positive diagonal (full-rank).

    The primal loss is -ELBO = mean over the batch of -log p(y|z_i) plus the analytic KL(q || N(0, I)); x is a dummy
    whose batch size is the number of Monte-Carlo draws per step. The mean starts at U(-init_range, init_range) (as
    Stan's random inits) and the scale at the identity (Stan's omega = 0).
    """

    loss_scale = 1.0

    def __init__(self, z_dim: int, likelihood: nn.Module, full_rank: bool, init_range: float = 2.0):
        super().__init__(z_dim, likelihood)
        self.full_rank = full_rank
        self.name = "advi_fullrank" if full_rank else "advi_meanfield"
        self.loc = nn.Parameter(torch.empty(z_dim).uniform_(-init_range, init_range))
        self.scale_raw = nn.Parameter(torch.zeros(z_dim, z_dim) if full_rank else torch.zeros(z_dim))

    def scale_tril(self) -> torch.Tensor:
        """L: exp of the raw diagonal on the diagonal, the raw strictly lower triangle below it."""
        if not self.full_rank:
            return torch.diag(torch.exp(self.scale_raw))
        return torch.tril(self.scale_raw, -1) + torch.diag(torch.exp(torch.diagonal(self.scale_raw)))

    def sample(self, n: int) -> torch.Tensor:
        eps = torch.randn(n, self.z_dim, device=self.loc.device)
        if not self.full_rank:
            return self.loc + eps * torch.exp(self.scale_raw)
        return self.loc + eps @ self.scale_tril().T

    def kl_to_prior(self) -> torch.Tensor:
        log_diag = torch.diagonal(self.scale_raw) if self.full_rank else self.scale_raw
        fro = (self.scale_tril() ** 2).sum()
        return 0.5 * (fro + (self.loc ** 2).sum() - self.z_dim) - log_diag.sum()

    def forward(self, x: torch.Tensor) -> Step:
        z = self.sample(x.shape[0])
        recon = self.recon(x, z)
        kl = self.kl_to_prior().expand_as(recon)
        return Step(primal=(recon + kl).mean() * self.loss_scale, adversary=None, recon=recon, kl=kl)


class Sampler(nn.Module):
    """The notebook's implicit q: eps ~ N(0, I_noise) -> 2 x FC ``hidden`` ELU -> linear z_dim; x only sets n."""

    def __init__(self, z_dim: int, noise_dim: int, hidden: int = 128, layers: int = 2):
        super().__init__()
        self.noise_dim = noise_dim
        self.net = mlp([noise_dim, *[hidden] * layers, z_dim], nn.ELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.randn(x.shape[0], self.noise_dim, device=x.device))


def _zero_linear(n_in: int, n_out: int) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class ResidualAdversary(nn.Module):
    """The notebook's adversary A(z): FC ``hidden`` lrelu(0.2), ``blocks`` residual blocks (FC lrelu -> FC with
    zero-initialised weights, add, lrelu), FC 1 with zero-initialised weights. x is ignored.

    The logit is T(z) = A(z) - log N(z; 0, I), as the notebook's ``adversary(.) - log r(.)`` with r = N(0, I) (the
    contrast of plain AVB, and of AC after normalisation). For AC the notebook's logit also carries + sum log sigma
    (its A estimates log q(z) rather than log q~(z_bar)); that per-batch constant is left out here (see
    ``SchoolsAVB``).
    """

    def __init__(self, z_dim: int, hidden: int = 256, blocks: int = 5):
        super().__init__()
        self.z_dim = z_dim
        self.inp = linear(z_dim, hidden)
        self.r0 = nn.ModuleList([linear(hidden, hidden) for _ in range(blocks)])
        self.r1 = nn.ModuleList([_zero_linear(hidden, hidden) for _ in range(blocks)])
        self.out = _zero_linear(hidden, 1)

    def net(self, z: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.inp(z), 0.2)
        for r0, r1 in zip(self.r0, self.r1):
            h = F.leaky_relu(h + r1(F.leaky_relu(r0(h), 0.2)), 0.2)
        return self.out(h).squeeze(-1)

    def forward(self, x: torch.Tensor, *zs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        z = torch.cat(zs) if len(zs) > 1 else zs[0]
        t = self.net(z) + 0.5 * (z * z).sum(-1) + 0.5 * self.z_dim * LOG_2PI
        out = t.split([len(u) for u in zs])
        return out[0] if len(out) == 1 else tuple(out)


class SchoolsAVB(AVB):
    """AVB for a fixed target: the sampler ignores x, and AC's r uses the batch moments of z (stop-gradient).

    ``ac_floor_mode = "std"``: sigma = std + ac_floor (the notebook, ac_floor 1e-6); ``"var"``: sigma =
    sqrt(var + ac_floor) (the MNIST code, ac_floor 1e-4). Variances are biased (``tf.nn.moments``).
    """

    loss_scale = 1.0

    def __init__(self, z_dim: int, likelihood: nn.Module, sampler: nn.Module, adversary: nn.Module,
                 adaptive_contrast: bool, ac_floor: float = 1e-6, ac_floor_mode: str = "std"):
        if ac_floor_mode not in ("std", "var"):
            raise ValueError(f"unknown ac_floor_mode {ac_floor_mode!r}; expected std or var")
        super().__init__(z_dim, likelihood, sampler, adversary, adaptive_contrast)
        self.ac_floor, self.ac_floor_mode = ac_floor, ac_floor_mode

    def encode(self, x: torch.Tensor, moments: Any = None):
        """z and, with AC, the stop-gradient batch moments; ``moments`` (``avb.objectives.MomentDraws``, moments from
        separate draws) is refused: here they always come from the batch, as in the notebook."""
        if moments is not None:
            raise ValueError("SchoolsAVB: the AC moments are the batch's own (as the notebook); separate moment draws "
                             "(MomentDraws) are not supported")
        z = self.encoder(x)
        if not self.ac:
            return z, None, None
        zd = z.detach()
        mean, var = zd.mean(0, keepdim=True), zd.var(0, unbiased=False, keepdim=True)
        sigma = var.sqrt() + self.ac_floor if self.ac_floor_mode == "std" else torch.sqrt(var + self.ac_floor)
        return z, mean, sigma

    def sample(self, n: int) -> torch.Tensor:
        return self.encoder(torch.empty(n, 0, device=next(self.parameters()).device))


def build(run: dict[str, Any], likelihood: nn.Module | None = None) -> Method:
    """The model of a resolved schools run config (``run_config``): ADVI or AVB on ``likelihood`` (default: eight
    schools)."""
    method, m = run["method"], run["model"]
    likelihood = SchoolsLikelihood() if likelihood is None else likelihood
    z_dim = run.get("z_dim", DIM)
    if method in ("advi_meanfield", "advi_fullrank"):
        return GaussianVI(z_dim, likelihood, method == "advi_fullrank", m["init_range"])
    if method in ("avb", "avb_ac"):
        return SchoolsAVB(z_dim, likelihood, Sampler(z_dim, m["noise_dim"] or z_dim, m["hidden"]),
                          ResidualAdversary(z_dim, m["adv_hidden"], m["adv_blocks"]), method == "avb_ac",
                          m["ac_floor"], m["ac_floor_mode"])
    raise ValueError(f"unknown schools method {method!r}; expected one of {', '.join(METHODS)}")


# Defaults of schools.kl_every / kl_samples (the schema's; Figure 3 has a point every 5,000 iterations).
KL_EVERY, KL_SAMPLES = 5000, 25000


def run_config(schools: dict[str, Any], method: str) -> dict[str, Any]:
    """Everything that determines one method's run, from the validated ``schools`` config section (``snapshots``:
    the KL-curve snapshots of ``avb.schools_kl``, every ``kl_every`` iterations, ``kl_samples`` draws each)."""
    fam = "advi" if method.startswith("advi") else "avb"
    sec = schools[fam]
    model = {k: sec[k] for k in (("init_range",) if fam == "advi" else
                                 ("hidden", "noise_dim", "adv_hidden", "adv_blocks", "ac_floor", "ac_floor_mode"))}
    train = {k: sec[k] for k in ("steps", "batch_size", "lr", "adam_beta1", "checkpoint_every", "log_every")}
    train.update(lr_adversary=sec.get("lr_adversary", sec["lr"]), adversary_steps=sec.get("adversary_steps", 1),
                 device=schools["device"])
    snapshots = {"every": schools.get("kl_every", KL_EVERY), "samples": schools.get("kl_samples", KL_SAMPLES)}
    return {"experiment": "schools", "method": method, "seed": schools["seed"], "z_dim": DIM, "model": model,
            "train": train, "n_samples": schools["n_samples"], "snapshots": snapshots}


class DummyBatches:
    """Endless empty x batches [batch_size, 0]: the target is fixed, only the batch size matters."""

    def __init__(self, batch_size: int, device: torch.device):
        self.x = torch.empty(batch_size, 0, device=device)

    def __next__(self) -> torch.Tensor:
        return self.x

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@torch.no_grad()
def draw(model: Method, n: int, seed: int) -> np.ndarray:
    """n posterior draws of a trained ADVI / AVB model (float64 numpy), from the seeded global RNG."""
    torch.manual_seed(seed)
    model.eval()
    return model.sample(n).double().cpu().numpy()


@torch.no_grad()
def elbo_estimate(model: Method, n: int, seed: int) -> tuple[float, float]:
    """Mean and standard error of the per-draw ELBO terms over n draws (ADVI: a bound; AVB: adversary estimate)."""
    torch.manual_seed(seed)
    dev = next(model.parameters()).device
    s = model(torch.empty(n, 0, device=dev))
    e = s.elbo.double().cpu()
    return float(e.mean()), float(e.std() / math.sqrt(n))


def fit_method(run: dict[str, Any], out_dir: str | Path, progress: bool = False) -> dict[str, Any]:
    """Train one method with ``avb.train.fit`` (checkpoints, resume, NaN guard, metrics CSV); write ``samples.npz``
    (``run['n_samples']`` draws), ``snapshots.npz`` (draws during training for the KL curve, ``avb.schools_kl``) and
    ``fit.json`` into ``out_dir``."""
    from .schools_kl import SNAPSHOT_FILE, Snapshots
    from .train import fit, resolve_device

    out = Path(out_dir)
    device = resolve_device(run["train"]["device"])
    torch.manual_seed(run["seed"])
    model = build(run).to(device)
    data_gen = torch.Generator().manual_seed(run["seed"] + 1)
    out.mkdir(parents=True, exist_ok=True)
    snapshots = Snapshots(model, run, out / SNAPSHOT_FILE)
    t0 = time.perf_counter()
    if 0 not in snapshots.samples:
        snapshots.take(0)               # the model as built (a resumed fit's model is this one until it loads)
    fit(model, DummyBatches(run["train"]["batch_size"], device), data_gen, run, out, progress, on_step=snapshots)
    seconds = time.perf_counter() - t0
    if snapshots.missing():             # e.g. resumed from a finished checkpoint after snapshots.npz was deleted
        print(f"[avb] {out / SNAPSHOT_FILE}: no snapshot at iterations {snapshots.missing()} (delete checkpoint.pt "
              f"to retrain them)", flush=True)
    samples = draw(model, run["n_samples"], run["seed"] + 2)
    elbo, elbo_se = elbo_estimate(model, min(run["n_samples"], 10000), run["seed"] + 3)
    with io.atomic_path(out / "samples.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, samples=samples)
    info = {"method": run["method"], "steps": run["train"]["steps"], "train_seconds": seconds, "elbo": elbo,
            "elbo_se": elbo_se, "elbo_is_bound": run["method"].startswith("advi"),
            "snapshot_iterations": sorted(snapshots.samples), "run": run}
    io.write_json(info, out / "fit.json")
    return info


# ---------------------------------------------------------------------------------------------------------- report
SUMMARY_COLUMNS = ["method", "label", "steps", "n_samples", "mean_abs_err_mean", "max_abs_err_mean",
                   "mean_abs_err_sd", "max_abs_err_sd", "err_mean_mu", "err_mean_tau", "err_sd_mu", "err_sd_tau",
                   "p_tau_positive", "divergence", "divergence_se", "divergence_noise_floor",
                   "divergence_noise_floor_se", "kl_hmc", "kl_hmc_se", "kl_hmc_noise_floor", "kl_hmc_noise_floor_se",
                   "kl_gaussian", "kl_gaussian_se", "elbo", "elbo_se", "elbo_is_bound", "log_evidence", "rhat_max",
                   "rank_rhat_max", "ess_min", "seconds"]


def _divergences(samples: np.ndarray, gold: np.ndarray, scale: np.ndarray, n: int, repeats: int,
                 rng: np.random.Generator) -> list[float]:
    out = []
    for _ in range(repeats):
        a = samples[rng.choice(len(samples), n, replace=False)] / scale
        b = gold[rng.choice(len(gold), n, replace=False)] / scale
        out.append(energy_distance(a, b))
    return out


def summarize(gold_npz: str | Path, gold_json: str | Path, fits: list[str | Path], settings: dict[str, Any],
              kl_curve: str | Path | None = None) -> tuple["pd.DataFrame", "pd.DataFrame", dict[str, Any]]:
    """The summary table (one row per method, HMC first), the per-parameter table and the exact reference.

    ``fits``: run folders holding samples.npz and fit.json. Errors are against the exact (quadrature) posterior
    moments. Divergence: energy distance between ``n`` draws of the method and ``n`` gold draws, both standardised by
    the exact posterior sds, mean and standard error over ``repeats`` fresh subsets; the noise floor is the same
    statistic between two disjoint sets of ``n`` gold draws (for the HMC row, the divergence itself is that floor).
    ``kl_curve`` (the CSV of ``avb.schools_kl``): its last iteration per method gives ``kl_hmc`` (kNN KL to the HMC
    draws), ``kl_gaussian`` (ADVI's exact KL) and the KL noise floor, which is also the HMC row's ``kl_hmc``; without
    it these columns are NaN.
    """
    import pandas as pd

    from .schools_kl import final

    met = settings["metrics"]
    ref = exact_posterior(met["quad_grid"])
    gold_draws = np.load(gold_npz, allow_pickle=False)["draws"]
    gold = gold_draws.reshape(-1, DIM)
    gdiag = json.loads(Path(gold_json).read_text())
    n = min(met["divergence_samples"], len(gold) // 2)
    rng = np.random.default_rng(settings["seed"])
    floor = []
    for _ in range(met["divergence_repeats"]):
        idx = rng.permutation(len(gold))[: 2 * n]
        floor.append(energy_distance(gold[idx[:n]] / ref["sd"], gold[idx[n:]] / ref["sd"]))
    floor_mean, floor_se = float(np.mean(floor)), float(np.std(floor, ddof=1) / np.sqrt(len(floor))) \
        if len(floor) > 1 else math.nan

    entries = [("hmc", gold, {"steps": gdiag["draws_per_chain"] * gdiag["thin"] + gdiag["warmup"],
                              "seconds": gdiag["seconds"]})]
    for d in fits:
        info = json.loads((Path(d) / "fit.json").read_text())
        entries.append((info["method"], np.load(Path(d) / "samples.npz", allow_pickle=False)["samples"], info))
    entries.sort(key=lambda e: ("hmc", *METHODS).index(e[0]))
    curve = pd.read_csv(kl_curve) if kl_curve is not None else None
    last = final(curve) if curve is not None else {}
    nan = math.nan
    kl_floor = (float(curve.kl_noise_floor.iloc[0]), float(curve.kl_noise_floor_se.iloc[0])) \
        if curve is not None and len(curve) else (nan, nan)

    rows, per_param = [], []
    for method, s, info in entries:
        mean, sd = s.mean(0), s.std(0)
        em, es = np.abs(mean - ref["mean"]), np.abs(sd - ref["sd"])
        if method == "hmc":
            div, div_se = floor_mean, floor_se
        else:
            dv = _divergences(s, gold, ref["sd"], min(n, len(s)), met["divergence_repeats"], rng)
            div, div_se = float(np.mean(dv)), float(np.std(dv, ddof=1) / np.sqrt(len(dv))) if len(dv) > 1 else math.nan
        rows.append({
            "method": method, "label": LABELS[method], "steps": info["steps"], "n_samples": len(s),
            "mean_abs_err_mean": em.mean(), "max_abs_err_mean": em.max(), "mean_abs_err_sd": es.mean(),
            "max_abs_err_sd": es.max(), "err_mean_mu": mean[0] - ref["mean"][0],
            "err_mean_tau": mean[1] - ref["mean"][1],
            "err_sd_mu": sd[0] - ref["sd"][0], "err_sd_tau": sd[1] - ref["sd"][1],
            "p_tau_positive": float((s[:, 1] > 0).mean()), "divergence": div, "divergence_se": div_se,
            "divergence_noise_floor": floor_mean, "divergence_noise_floor_se": floor_se,
            "kl_hmc": kl_floor[0] if method == "hmc" else last.get(method, {}).get("kl", nan),
            "kl_hmc_se": kl_floor[1] if method == "hmc" else last.get(method, {}).get("kl_se", nan),
            "kl_hmc_noise_floor": kl_floor[0], "kl_hmc_noise_floor_se": kl_floor[1],
            "kl_gaussian": last.get(method, {}).get("kl_gaussian", nan),
            "kl_gaussian_se": last.get(method, {}).get("kl_gaussian_se", nan),
            "elbo": info.get("elbo", math.nan), "elbo_se": info.get("elbo_se", math.nan),
            "elbo_is_bound": info.get("elbo_is_bound", math.nan), "log_evidence": ref["log_evidence"],
            "rhat_max": gdiag["rhat_max"] if method == "hmc" else math.nan,
            "rank_rhat_max": gdiag["rank_rhat_max"] if method == "hmc" else math.nan,
            "ess_min": gdiag["ess_min"] if method == "hmc" else math.nan,
            "seconds": info.get("train_seconds", info.get("seconds", math.nan)),
        })
        for k, name in enumerate(PARAM_NAMES):
            per_param.append({"method": method, "parameter": name, "mean": mean[k], "sd": sd[k],
                              "exact_mean": ref["mean"][k], "exact_sd": ref["sd"][k],
                              "err_mean": mean[k] - ref["mean"][k], "err_sd": sd[k] - ref["sd"][k],
                              "gold_mcse_mean": gdiag["mcse_mean"][name] if method == "hmc" else math.nan,
                              "gold_rhat": gdiag["split_rhat"][name] if method == "hmc" else math.nan,
                              "gold_ess": gdiag["ess"][name] if method == "hmc" else math.nan})
    df = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    kl_info = {"n": int(curve.n.iloc[0]), "k": int(curve.k.iloc[0]), "repeats": int(curve.repeats.iloc[0])} \
        if curve is not None and len(curve) else None
    return df, pd.DataFrame(per_param), {**ref, "divergence_n": n, "gold": gdiag, "entries": entries, "kl": kl_info}


def markdown(df: "pd.DataFrame", ref: dict[str, Any], settings: dict[str, Any]) -> str:
    g = ref["gold"]
    lines = ["# Eight schools: posterior approximations against the gold standard", "",
             f"Reference moments: exact quadrature over (mu, tau) ({ref['n_grid']}^2 grid); log p(y) = "
             f"{ref['log_evidence']:.4f}. Gold standard: HMC, {g['chains']} chains x {g['draws_per_chain']} draws "
             f"(thin {g['thin']}) after {g['warmup']} warm-up transitions, L = {g['leapfrog_steps']}; max split-R-hat "
             f"{g['rhat_max']:.4f} (classic, not rank-normalised; rank-normalised folded: {g['rank_rhat_max']:.4f}), "
             f"min ESS {g['ess_min']:.0f}.", "",
             "Steps: HMC transitions per chain (warm-up included); ADVI / AVB training iterations.", "",
             "| method | steps | mean abs err of means | mean abs err of sds | err sd(tau) | P(tau > 0) | "
             "energy distance (noise floor) | KL to HMC, kNN (noise floor) | KL, exact (Gaussian q) | ELBO | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in df.itertuples():
        elbo = "" if pd_isnan(r.elbo) else f"{r.elbo:.3f} ± {r.elbo_se:.3f}" + ("" if r.elbo_is_bound else " (≈)")
        lines.append(f"| {r.label} | {r.steps} | {r.mean_abs_err_mean:.4f} (max {r.max_abs_err_mean:.4f}) | "
                     f"{r.mean_abs_err_sd:.4f} (max {r.max_abs_err_sd:.4f}) | {r.err_sd_tau:+.4f} | "
                     f"{r.p_tau_positive:.3f} | {r.divergence:.4f} ± {r.divergence_se:.4f} "
                     f"({r.divergence_noise_floor:.4f}) | {_pm(r.kl_hmc, r.kl_hmc_se)} "
                     f"({_pm(r.kl_hmc_noise_floor)}) | {_pm(r.kl_gaussian, r.kl_gaussian_se)} | {elbo} | "
                     f"{r.seconds:.1f} |")
    lines += ["", f"Errors: |method - exact| over the 10 parameters (mu, tau, eta_1..8). Energy distance: V-statistic "
              f"between {ref['divergence_n']} draws of the method and {ref['divergence_n']} HMC draws, coordinates "
              f"divided by the exact posterior sds, ± standard error over {settings['metrics']['divergence_repeats']} "
              f"random subsets; noise floor: the same statistic between two disjoint sets of HMC draws (the HMC row "
              f"shows the floor itself). ELBO: ADVI an unbiased estimate (a lower bound on log p(y)); AVB (≈) "
              f"uses the adversary's KL estimate and is not a bound. The posterior is symmetric under (tau, eta) -> "
              f"(-tau, -eta), so the exact P(tau > 0) is 0.5 and the exact mean of tau and eta is 0."]
    kl = ref.get("kl")
    if kl is not None:
        lines += ["", f"KL to HMC (the paper's Figure 3 quantity, at the last iteration): kNN estimate of KL(method "
                  f"|| HMC posterior) (Wang, Kulkarni & Verdú 2009; k = {kl['k']}, ITE's default) between n = "
                  f"{kl['n']} draws of the method and n HMC draws, coordinates divided by the exact posterior sds, "
                  f"mean ± standard error over {kl['repeats']} disjoint sets; noise floor: the same between two "
                  "disjoint sets of HMC draws (true value 0; the HMC row shows it). In 10 dimensions this estimator is "
                  "biased at such n, by up to several tenths of a nat and of either sign (tests/test_knn.py). KL, exact: "
                  "for ADVI, whose q is Gaussian, KL(q || p) = -H(q) - E_q log p(z|y) with the exact log p(z|y) "
                  "(Gaussian fitted to the same draws; exact up to Monte-Carlo error; it equals log p(y) - ELBO up to "
                  "that error, a check), a measure of the kNN estimator's bias here. Curve over iterations: "
                  "kl_curve.csv and kl_iterations.png."]
    return "\n".join(lines) + "\n"


def _pm(v: float, se: float = math.nan) -> str:
    if pd_isnan(v):
        return ""
    return f"{v:.3f}" if pd_isnan(se) else f"{v:.3f} ± {se:.3f}"


def pd_isnan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def figure(entries: list[tuple[str, np.ndarray, dict]], ref: dict[str, Any], out_prefix: str | Path,
           n_points: int = 2000, seed: int = 0) -> list[Path]:
    """(mu, tau) per method as in the notebook: a scatter row and a KDE row (filled), each over the gold standard's
    KDE contours, bbox = gold mean +- 4 sd; and the tau marginals against the exact one. PNG and PDF."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    sns.set_theme(style="white", context="paper")
    rng = np.random.default_rng(seed)
    gold = entries[0][1]
    m, s = gold[:, :2].mean(0), gold[:, :2].std(0)
    box = (m[0] - 4 * s[0], m[0] + 4 * s[0], m[1] - 4 * s[1], m[1] + 4 * s[1])
    sub = lambda a: a[rng.choice(len(a), min(n_points, len(a)), replace=False)]  # noqa: E731
    gsub = sub(gold)
    k = len(entries)
    fig, axes = plt.subplots(2, k + 1, figsize=(2.9 * (k + 1), 5.6), squeeze=False)
    for col, (method, smp, _) in enumerate(entries):
        pts = sub(smp)
        for row in range(2):
            ax = axes[row, col]
            if row == 0:
                ax.scatter(pts[:, 0], pts[:, 1], s=3, alpha=0.4, edgecolor="none", color="C0")
            else:
                sns.kdeplot(x=pts[:, 0], y=pts[:, 1], fill=True, cmap="Blues", levels=8, thresh=0.05, ax=ax,
                            clip=((box[0], box[1]), (box[2], box[3])))
            if method != "hmc":
                sns.kdeplot(x=gsub[:, 0], y=gsub[:, 1], color="0.3", levels=5, linewidths=0.6, ax=ax)
            ax.set(xlim=box[:2], ylim=box[2:], xlabel=r"$\mu$", ylabel=r"$\tau$" if col == 0 else "")
            if row == 0:
                ax.set_title(LABELS[method])
    ax = axes[0, k]
    frames = [pd.DataFrame({"tau": sub(smp)[:, 1], "method": LABELS[mth]}) for mth, smp, _ in entries]
    sns.kdeplot(data=pd.concat(frames, ignore_index=True), x="tau", hue="method", common_norm=False, ax=ax,
                linewidth=1)
    ax.plot(ref["grid"], ref["tau_density"], color="k", linestyle="--", linewidth=1, label="exact")
    ax.set(xlim=box[2:], title=r"marginal of $\tau$ (dashed: exact)")
    sns.move_legend(ax, "upper right", fontsize=6, title=None, frameon=False)
    ax = axes[1, k]
    frames = [pd.DataFrame({"mu": sub(smp)[:, 0], "method": LABELS[mth]}) for mth, smp, _ in entries]
    sns.kdeplot(data=pd.concat(frames, ignore_index=True), x="mu", hue="method", common_norm=False, ax=ax,
                linewidth=1, legend=False)
    ax.plot(ref["grid"], ref["mu_density"], color="k", linestyle="--", linewidth=1)
    ax.set(xlim=box[:2], title=r"marginal of $\mu$ (dashed: exact)")
    fig.suptitle("Eight schools: (mu, tau) per method; grey contours: HMC gold standard")
    fig.tight_layout()
    out_prefix = Path(out_prefix)
    paths = []
    for ext in ("png", "pdf"):
        path = out_prefix.with_suffix(f".{ext}")
        with io.atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=130)
        paths.append(path)
    plt.close(fig)
    return paths


def report(gold_npz: str | Path, gold_json: str | Path, fits: list[str | Path], settings: dict[str, Any],
           out_csv: str | Path, out_md: str | Path, out_fig: str | Path, out_params: str | Path | None = None,
           kl_curve: str | Path | None = None) -> str:
    """summary.csv, summary.md, the per-parameter CSV and the (mu, tau) figure (PNG + PDF, ``out_fig`` any suffix);
    with ``kl_curve`` (``avb schools kl``), the final KL to the HMC posterior joins the summary."""
    df, per_param, ref = summarize(gold_npz, gold_json, fits, settings, kl_curve)
    io.write_csv(df, out_csv)
    if out_params is not None:
        io.write_csv(per_param, out_params)
    md = markdown(df, ref, settings)
    io.write_text(md, out_md)
    figure(ref["entries"], ref, out_fig, seed=settings["seed"])
    return md
