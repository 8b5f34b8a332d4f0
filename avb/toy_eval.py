"""Exact evaluation of one trained toy model (``avb toy evaluate``): log p(x) by quadrature with its error estimate,
the exact posterior on a grid, reconstruction error, ELBO, and KL estimates of q(z|x) against the exact posterior and
of the aggregated q(z) against the prior (the method and its error bounds: ``avb.toy``'s docstring, *Exact
evaluation*). ``write_eval`` writes the summary JSON and the figure's arrays.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np
import torch

from . import io, knn
from .config import defaults, section
from .experiments import load_model
from .kde import kl_estimate
from .objectives import Method, log_normal
from .quadrature import prior_tail_mass
from .toy import N_IMAGES, OPTIMUM, X_DIM, all_binary_images, exact_log_px, exact_posterior, images


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
