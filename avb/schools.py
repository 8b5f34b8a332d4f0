"""Eight schools: black-box variational inference against a gold standard (notebooks/Stan-example.ipynb).

Model (non-centred, exactly as the notebook's Stan code and data): mu ~ N(0, 1), tau ~ N(0, 1) (a real, NOT
constrained positive), eta_j ~ N(0, 1), theta_j = mu + tau * eta_j, y_j ~ N(theta_j, sigma_j), J = 8, with the
notebook's data (the classic y / 10 and its own sigma). z = (mu, tau, eta_1..eta_8) in R^10 has prior N(0, I_10), so
every method sees a "decoder" log p(y|z) and the standard prior, like the image models.

* Exact reference. Given (mu, tau), y_j ~ N(mu, tau^2 + sigma_j^2) independently, and eta_j | mu, tau, y is Gaussian.
  So log p(y) and the posterior mean and standard deviation of all 10 parameters are 2-D integrals over (mu, tau),
  computed by quadrature on a grid (``exact_posterior``): exact up to grid error (checked < 1e-8).
* Gold standard samples (``gold_standard``): long HMC chains (``avb.hmc.sample_hmc``, the AIS kernel) on the
  analytic gradient ``log_joint_and_grad``: unit mass, textbook leapfrog with L steps, per-chain step size tuned in
  warm-up by dual averaging (Hoffman & Gelman 2014) towards a target acceptance probability, then fixed (optionally
  jittered uniformly by +-``jitter`` per transition to avoid periodic trajectories), overdispersed starts
  N(0, init_scale^2 I). Diagnostics (``avb.diagnostics``): the classic split-R-hat (Gelman et al., BDA3) and, in
  addition, the rank-normalised folded split-R-hat (Vehtari et al. 2021); the effective sample size is the
  multi-chain Geyer initial-monotone-sequence estimate on split chains (Stan's formula, not rank-normalised).
* Baselines: ADVI mean-field and full-rank (``avb.objectives.GaussianVI``): a reparameterised Gaussian q maximising
  the ELBO with Adam; the KL to the N(0, I) prior is analytic, E_q log p(y|z) is a Monte-Carlo average over the batch.
* AVB and AVB + AC (``avb.experiments.build``): the notebook's sampler and residual adversary as an
  ``avb.objectives.AVB`` model, trained by ``avb.train.fit`` on a dummy (empty) x (``avb.schools_fit.fit_method``);
  with AC, r is a Gaussian with the stop-gradient batch moments of z (sigma = std + 1e-6 as the notebook, or
  sqrt(var + floor) as the MNIST code: ``ac_floor_mode``). For AC the notebook's logit also carries + sum log sigma
  (its A estimates log q(z) rather than log q~(z_bar)); that per-batch constant is left out here.
* Metrics (``avb.report.schools.summarize``, with the report's table and figure): absolute errors of the posterior
  means and standard deviations per parameter against the exact reference; the energy distance to gold-standard HMC
  draws (coordinates standardised by the exact posterior standard deviations) with its sampling noise floor, the
  energy distance between two disjoint sets of gold draws of the same size; the ELBO (ADVI: unbiased estimate, a
  bound; AVB: the adversary's estimate, not a bound) beside the exact log p(y); and, from ``avb.schools_kl`` (the
  paper's Figure 3), the kNN estimate of KL(method || HMC) at the last iteration with its noise floor, and ADVI's
  exact KL.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import io
from .config import defaults
from .diagnostics import ess, rank_split_rhat, split_rhat
from .hmc import sample_hmc
from .methods import LABELS  # noqa: F401 (schools.LABELS: the report and avb.schools_kl)
from .objectives import LOG_2PI, Method, log_normal

Y = (2.8, 0.8, -0.3, 0.7, -0.1, 0.1, 1.8, 1.2)
SIGMA = (0.8, 0.5, 0.8, 0.6, 0.5, 0.6, 0.5, 0.4)
J = len(Y)
DIM = J + 2
PARAM_NAMES = ["mu", "tau"] + [f"eta_{j + 1}" for j in range(J)]
METHODS = ("advi_meanfield", "advi_fullrank", "avb", "avb_ac")


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


# ----------------------------------------------------------------------------------------------------- gold standard
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
# The methods are ``avb.objectives.GaussianVI`` and ``AVB``, built with the notebook's networks by
# ``avb.experiments.build`` from a run config of ``run_config``.

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
    schools = {**defaults("schools"), **schools}  # unset top-level keys: the schema's defaults (Figure 3: 5,000)
    snapshots = {"every": schools["kl_every"], "samples": schools["kl_samples"]}
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
    return model.sample(torch.empty(n, 0, device=next(model.parameters()).device)).double().cpu().numpy()


@torch.no_grad()
def elbo_estimate(model: Method, n: int, seed: int) -> tuple[float, float]:
    """Mean and standard error of the per-draw ELBO terms over n draws (ADVI: a bound; AVB: adversary estimate)."""
    torch.manual_seed(seed)
    dev = next(model.parameters()).device
    s = model(torch.empty(n, 0, device=dev))
    e = s.elbo.double().cpu()
    return float(e.mean()), float(e.std() / math.sqrt(n))
