"""The paper's four-image toy experiment (section 5.1), with exact answers.

Data: the 4 one-hot vectors of length 4 (2x2 binary images with one pixel on), drawn uniformly. Latent z in R^2 with
prior N(0, I); Bernoulli decoder with 4 logits. Networks and settings follow ``notebooks/AVB_toy_example.ipynb`` and
``VAE_toy_example.ipynb`` of the official repository (HEAD):

* AVB encoder: concat(x, eps), eps ~ N(0, I_64) -> 3 x FC64 ELU -> linear 2 (x is the raw one-hot vector);
* VAE encoder: x -> 3 x FC64 ELU -> mean and log-std heads (linear 2 each);
* decoder: z -> 3 x FC64 ELU -> 4 logits;
* adversary: concat(x, z) -> FC256 ELU -> 5 residual blocks -> FC1, then ``+ sum(z^2)``. A residual block is
  ``h <- ELU(h + FC256_zero_init(ReLU(FC256(h))))``: the notebook's first layer of a block is a plain
  ``slim.fully_connected``, whose default activation is ReLU; the second is linear with zero-initialised weights.
* Linear layers: Xavier-uniform weights, zero biases (slim's defaults) via ``avb.nets.init_``.
* batch 512; Adam with TF's default betas (0.9, 0.999); lr 2e-5 (encoder + decoder), 1e-4 (adversary); two adversary
  updates per primal update; 100,000 iterations.

**The prior term of the adversary.** The notebook adds ``sum(z^2)``, not the ``0.5 * sum(z^2) = -log N(z; 0, I) + c``
of the paper's log-prior trick and of the official MNIST adversary. Both parametrise the same function class (the
network output absorbs any difference), so the optimum T*(x, z) = log q(z|x) - log p(z) is unchanged; what changes
is what the network must learn: with ``half_sum_sq`` the network output itself is log q(z|x) up to a constant (the
trick's intent), with ``sum_sq`` (as coded, the default here) it must learn log q(z|x) - 0.5 |z|^2, i.e. also cancel
the surplus 0.5 |z|^2. ``model.adv_prior_term`` selects ``sum_sq`` (notebook) or ``half_sum_sq``.

**AVB + AC on the toy** (no toy notebook exists for it): the noise-basis encoder of the official ``*_ac`` models,
sized for the toy: h(x) = 3 x FC64 ELU on the one-hot x; z = z0(x) + sum_{i=1..m} a_i(x) * v_i(eps_i) with
a_i(x) = ELU(Linear_i(h) - 5) + 1 > 0, z0 a linear head initialised with std 1e-5, and each v_i its own MLP
eps_i (in R^k) -> 3 x FC64 ELU -> linear 2. Defaults m = 8 bases x k = 8 noise dims, i.e. 64 noise dimensions as
the AVB encoder. Moments E[z|x], Var[z|x] come from the batch moments of v_i as coded (``avb.objectives.AVB``); the
adversary sees (x, z_bar), z_bar = (z - E[z|x]) / std[z|x], and its prior term acts on z_bar.

The methods are ``avb.objectives.VAE`` / ``AVB`` over these networks (``avb.experiments.build``: the shared blocks
of ``avb.nets``), with ``loss_scale = 1`` (the notebooks use plain means of the per-example losses), trained by
``avb.train.train``.

**Exact evaluation.** Because z is 2-D, log p(x) = log \\int p(x|z) N(z; 0, I) dz is computed by the tensor-product
midpoint rule on the box [-L, L]^2 with n x n cells of side h = 2L/n (``avb.quadrature``, which states the rule's
error bound for g * N(.; 0, I) with 0 <= g <= 1, here g = p(x|z): a box term in h^2 and the truncated prior mass,
3.9e-9 for L = 6; the tests check the rule against it). For a trained decoder the second derivatives are not
available, so ``evaluate`` reports a Richardson estimate |M_h - M_{2h}| / 3 (exact for an O(h^2) error, an
overestimate when the rule converges faster) beside the result, and the total p(x) over all 16 binary images (1 up
to the truncated mass). The bounds are on p(x); the error of log p(x) is the error of p(x) divided by p(x).

**Differences from the notebooks** (beyond PyTorch for TF and its random streams):

* update order: ``avb.train.fit`` applies the primal and the first adversary update together, from one forward
  pass on one batch (the official MNIST ``get_train_op``), then ``adversary_steps - 1`` = 1 further adversary update
  on a fresh batch. The notebook runs the primal update, then two adversary updates, each on a fresh batch. Both do
  2 adversary updates per primal update;
* VAE KL: the project's ``VAE`` uses the analytic KL(N(mu, sigma^2) || N(0, I)); the notebook uses the one-sample
  estimate sum(0.5 z^2 - log sigma - 0.5), which has the same expectation and the same expected gradient;
* the figure draws fresh noise per image; the notebook feeds the same 512 noise vectors to all 4 images;
* AVB + AC is not in the notebooks (encoder above); the notebooks have no evaluation (all of it is ours).
"""
from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from . import io, knn
from .config import defaults, section
from .jobs import toy_run_config
from .experiments import load_model
from .kde import kl_estimate
from .methods import LABELS  # noqa: F401 (re-exported: the toy report labels its rows by it)
from .objectives import Method, log_normal
from .quadrature import log_integral, midpoint_grid, prior_tail_mass

X_DIM = 4
Z_DIM = 2
N_IMAGES = 4
OPTIMUM = -math.log(4.0)  # max over models of the mean over the 4 images of log p(x)
METHODS = ("vae", "avb", "avb_ac")
PRIOR_TERMS = {"sum_sq": 1.0, "half_sum_sq": 0.5}

# Defaults (the notebooks') are those of workflow/schemas/config.schema.yaml, section toy: avb.config.defaults("toy.model").


# ----------------------------------------------------------------------------------------------------- data
def images() -> torch.Tensor:
    """The four 2x2 images as one-hot rows [4, 4] (row i has pixel i on)."""
    return torch.eye(N_IMAGES)


class ToyBatches:
    """Endless batches of one-hot images drawn uniformly (``tf.one_hot(randint(0, 4))``) from ``gen``.

    It holds no state of its own: its position is the state of ``gen``, which ``avb.train.fit`` checkpoints.
    """

    def __init__(self, batch_size: int, gen: torch.Generator, device: torch.device | str = "cpu"):
        self.batch_size, self.gen, self.device = batch_size, gen, torch.device(device)

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        labels = torch.randint(0, N_IMAGES, (self.batch_size,), generator=self.gen)
        return F.one_hot(labels, N_IMAGES).float().to(self.device)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


# ------------------------------------------------------------------------------------------------- networks
# The notebooks' networks (module docstring) are the shared blocks of ``avb.nets``, put together by
# ``avb.experiments.build``; training is ``avb.train.train`` and a trained model is ``avb.experiments.load_model``.

# The toy.model keys each method's networks use; a run config holds only these, so a changed adversary setting
# does not retrain the VAE. workflow/rules/toy.smk repeats this (it must not import torch); a test compares them.
run_config = toy_run_config  # torch-free, in avb.jobs, so that the Snakefile can use it without torch


# -------------------------------------------------------------------------------------------- exact answers
def all_binary_images() -> torch.Tensor:
    """The 16 binary 2x2 images as rows [16, 4]; rows 1, 2, 4, 8 are the data (pixel 0, 1, 2, 3 on)."""
    k = torch.arange(16)
    return ((k[:, None] >> torch.arange(4)) & 1).float()


@torch.no_grad()
def log_joint_on_grid(decoder: nn.Module, x: torch.Tensor, points: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """log p(x|z) + log N(z; 0, I) for every image x [k, 4] and grid point [G, 2] -> [k, G] (float64)."""
    dev = next(decoder.parameters()).device
    x = x.to(torch.float64)
    out = []
    for zc in points.split(chunk):
        logits = decoder(zc.to(device=dev, dtype=torch.float32)).to(torch.float64).cpu()
        lp = F.logsigmoid(logits) @ x.T + F.logsigmoid(-logits) @ (1.0 - x).T   # [g, k]
        out.append(lp.T + log_normal(zc.cpu())[None])
    return torch.cat(out, 1)


def exact_log_px(decoder: nn.Module, x: torch.Tensor, limit: float = 6.0, n: int = 600) -> torch.Tensor:
    """log p(x) = log \\int p(x|z) N(z; 0, I) dz per image x [k, 4], by the midpoint rule (float64)."""
    _, points, h = midpoint_grid(limit, n)
    return log_integral(log_joint_on_grid(decoder, x, points), h)


def exact_posterior(decoder: nn.Module, x: torch.Tensor, limit: float = 6.0, n: int = 600):
    """(axis [n], density p(z|x) on the grid [k, n, n] indexed [z2, z1], log p(x) [k]); sum(density) h^2 = 1."""
    axis, points, h = midpoint_grid(limit, n)
    lj = log_joint_on_grid(decoder, x, points)
    log_px = log_integral(lj, h)
    return axis, torch.exp(lj - log_px[:, None]).view(-1, n, n), log_px


# ----------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def encoder_samples(model: Method, x: torch.Tensor, n: int) -> torch.Tensor:
    """n samples z ~ q(z|x) for one image x [4] (AC moments come from this batch, as in training)."""
    return model.sample(x.expand(n, -1))


@torch.no_grad()
def evaluate(model_path: str | os.PathLike, settings: dict[str, Any] | None = None) -> tuple[dict, dict]:
    """Exact and estimated quantities of one trained toy model: (summary dict, arrays for the figure)."""
    from .device import describe, device_info, resolve_device
    s = section("toy.eval", settings or {}, "toy eval settings")  # unset keys: the schema's defaults
    t0 = time.perf_counter()
    device = resolve_device(s["device"], why=f"toy evaluation of {model_path}")
    print(f"[avb] toy evaluation on {describe(device_info(device))}", flush=True)
    model, run = load_model(model_path, device)
    torch.manual_seed(s["seed"])
    L, n = float(s["grid_limit"]), int(s["grid_size"])
    x = images()
    xd = x.to(device)

    # exact log p(x) and posterior, with a Richardson error estimate from the half-resolution grid
    axis, post, log_px = exact_posterior(model.decoder, x, L, n)
    log_px_coarse = exact_log_px(model.decoder, x, L, max(n // 2, 2))
    quad_err = float((log_px - log_px_coarse).abs().max() / 3.0)
    log_p_all = exact_log_px(model.decoder, all_binary_images(), L, n)
    mass_all = float(log_p_all.exp().sum())

    # independent encoder samples per image: n_samples to evaluate (recon, ELBO, KL), kde_samples to fit the KDE
    # q_hat and kde_samples / 5 to choose its bandwidth
    n_eval, n_kde = int(s["n_samples"]), int(s["kde_samples"])
    n_sel = max(n_kde // 5, 10)
    recon, elbo, kl_post, kl_post_kde, bws = [], [], [], [], []
    z_eval_all, z_fit_all, z_sel_all, zs_scatter = [], [], [], []
    for i in range(N_IMAGES):
        xi = xd[i]
        z_eval, z_fit, z_sel = (encoder_samples(model, xi, k).cpu() for k in (n_eval, n_kde, n_sel))
        zs_scatter.append(encoder_samples(model, xi, int(s["scatter_samples"])).cpu())
        z_eval_all.append(z_eval)
        z_fit_all.append(z_fit)
        z_sel_all.append(z_sel)
        step = model(xi.expand(n_eval, -1))             # recon and the method's own KL on fresh samples
        recon.append(float(step.recon.mean()))
        elbo.append(float(step.elbo.mean()))
        ll = model.decoder.log_likelihood(xi.expand(n_eval, -1), z_eval.to(device)).to(torch.float64).cpu()
        log_post = ll + log_normal(z_eval.to(torch.float64)) - log_px[i]   # exact log p(z|x) at the samples
        est, bw = kl_estimate(z_fit, z_sel, z_eval, log_post)
        kl_post_kde.append(est)
        bws.append(bw)
        if model.proposal_is_q:  # q is Gaussian: exact log q, so only Monte-Carlo error
            mean, log_std = (t.cpu().double() for t in model.encoder(xi[None]))
            kl_post.append(float((log_normal(z_eval.double(), mean, log_std.exp()) - log_post).mean()))
        else:
            kl_post.append(est)

    # aggregated posterior q(z) = 1/4 sum_i q(z|x_i) against the prior (equal numbers of samples per image)
    z_eval = torch.cat(z_eval_all)
    log_prior = log_normal(z_eval.to(torch.float64))
    kl_agg_kde, bw_agg = kl_estimate(torch.cat(z_fit_all), torch.cat(z_sel_all), z_eval, log_prior)
    if model.proposal_is_q:
        mean, log_std = (t.cpu().double() for t in model.encoder(xd))
        comps = torch.stack([log_normal(z_eval.double(), mean[i], log_std[i].exp()) for i in range(N_IMAGES)], -1)
        kl_agg = float((torch.logsumexp(comps, -1) - math.log(N_IMAGES) - log_prior).mean())
    else:
        kl_agg = kl_agg_kde
    # the same against as many prior draws by the kNN estimator (the ITE toolbox's; see avb.report.table1)
    prior_draws = np.random.default_rng(int(s["seed"])).standard_normal(tuple(z_eval.shape))
    kl_agg_knn = knn.kl_divergence(z_eval.double().numpy(), prior_draws, int(s["kl_k"]))

    exact_q = model.elbo_is_bound
    summary = {
        "method": run["method"], "label": model.label, "iterations": run["steps_done"], "seed": run["seed"],
        "log_px_exact": float(log_px.mean()), "optimum": OPTIMUM, "gap_to_optimum": OPTIMUM - float(log_px.mean()),
        **{f"log_px_x{i}": float(log_px[i]) for i in range(N_IMAGES)},
        "mass_on_data": float(log_px.exp().sum()), "mass_all_images": mass_all,
        "quad_error_est": quad_err, "prior_tail_mass": prior_tail_mass(L),
        "recon_error": float(np.mean(recon)), "recon_error_paper": float(np.mean(recon)) / X_DIM,
        "elbo": float(np.mean(elbo)), "elbo_is_bound": exact_q,
        "elbo_estimator": "analytic KL, MC recon" if exact_q else "adversary KL estimate (not a bound)",
        "kl_q_posterior": float(np.mean(kl_post)), "kl_q_posterior_kde": float(np.mean(kl_post_kde)),
        "kl_q_posterior_estimator": "exact log q (MC)" if exact_q else "held-out Gaussian KDE (biased down)",
        "elbo_from_kl": float(log_px.mean()) - float(np.mean(kl_post)),
        "kl_aggregate_prior": kl_agg, "kl_aggregate_prior_kde": kl_agg_kde, "kl_aggregate_prior_knn": kl_agg_knn,
        "knn_k": int(s["kl_k"]),
        "kl_aggregate_prior_estimator": "exact log q (MC)" if exact_q else "held-out Gaussian KDE (biased down)",
        "kde_bandwidth_mean": float(np.mean(bws)), "kde_bandwidth_aggregate": bw_agg,
        "grid_limit": L, "grid_size": n, "n_samples": n_eval, "kde_samples": n_kde,
        "adv_prior_term": {**defaults("toy.model"), **run["model"]}["adv_prior_term"] if run["method"] != "vae"
        else None,
        "batch_size": run["train"]["batch_size"], "lr": run["train"]["lr"],
        "lr_adversary": run["train"]["lr_adversary"],
        "adv_hidden": run["model"].get("adv_hidden"), "adv_blocks": run["model"].get("adv_blocks"),
        "eval_seconds": time.perf_counter() - t0,
    }
    arrays = {"axis": axis.numpy(), "posterior": post.to(torch.float32).numpy(),
              "scatter": torch.stack(zs_scatter).numpy(), "log_px": log_px.numpy()}
    return summary, arrays


def write_eval(summary: dict, arrays: dict, out_json: str | os.PathLike, out_npz: str | os.PathLike) -> None:
    with io.atomic_path(out_npz) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    io.write_json(summary, out_json)
