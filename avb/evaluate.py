"""Test-set evaluation of a trained model: AIS log p(x) per image, the ELBO (or, for AVB, its estimate) and the IWAE
bound where the encoder has a density.

The test images are dynamically binarised once with a fixed seed (the same draw for every model of a sweep), so all
methods are scored on identical binary images. What is reported follows the method's traits (``avb.objectives``),
not its name: AVB's ELBO uses the adversary's KL estimate, it is not a bound, and the outputs say so
(``elbo_is_bound``). The IWAE bound with ``iwae_samples`` samples (default 100) uses the proposal AIS starts from
(``Method.proposal``): the VAE encoder's Gaussian, AVB+AC's Gaussian r(z|x); IAF and the auxiliary VAE use their
own q (``Method.iwae``: the flow, the joint q(a, z|x)), AIS starting from the prior for the IAF (its official test;
``eval.iaf_ais_start: base`` for its Gaussian base) and from the auxiliary VAE's q(z|x, a) at one draw of a (as its
official test); plain AVB's implicit encoder has no
density, so its IWAE is NaN and ``iwae_note`` (``Method.proposal_note``) says why. Optional ``ais_memory_mb`` caps
the rows per decoder call of AIS and IWAE by a memory budget (no effect on the numbers; see ``avb.ais``).

Device and speed (issue 15). The device (``eval.device``, ``avb.device.resolve_device``) is logged and recorded in
eval.json (``device_*``: ``avb.device.device_info``'s keys). AIS and BDMC draw their random numbers on that device
(a CUDA generator on a GPU; on the CPU the numbers are those of before). ``ais_call_images`` (null:
``batch_size``) images go through one AIS call, in whole batches of ``batch_size`` that each keep their own step
adaptation and random numbers (``avb.ais``, 'Groups'), so the numbers do not depend on it, and ``ais_memory_mb``
then caps the rows per decoder evaluation: a GPU gets thousands of rows at once. ``eval.precision``
(``log_likelihood``) is the arithmetic of the decoder evaluations of AIS and BDMC (fp32 by default); the ELBO and
IWAE bound stay fp32.

AVB + AC's Gaussian r(z|x) (AIS start, IWAE proposal, ELBO estimate) uses moments of q(z|x) estimated from
``eval.ac_moment_draws`` noise draws (default: the run's training batch size) from the evaluation's own generator,
whatever the number of images in a batch (``avb.objectives.MomentDraws``); training keeps the official in-batch
estimate.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from . import data, io
from .ais import LogLik, estimate_log_likelihood, rows_for_memory
from .bounds import bdmc, iwae_bound, simulate_bernoulli
from .device import describe, device_info, resolve_device, tf32
from .experiments import load_model
from .nets import Decoder
from .objectives import Method, MomentDraws

PRECISIONS = ("fp32", "tf32", "bf16")


def test_images(run: dict[str, Any], n_test: int, seed: int, data_dir: str | Path | None = None) -> torch.Tensor:
    """The first ``n_test`` test images, binarised with ``seed`` (a fixed draw, identical across models). The data
    come from ``data_dir`` (else ``run["data_dir"]``, else ``avb.data``'s search) and must be those the run was
    trained on (``avb.jobs.check_data``)."""
    from .jobs import check_data

    splits = data.load(run["dataset"], data_dir if data_dir is not None else run.get("data_dir"))
    check_data(run, splits)
    if n_test > len(splits.test):
        raise ValueError(f"eval.n_test = {n_test} exceeds the {len(splits.test)} test images of {run['dataset']}")
    return data.binarize(splits.test[:n_test], splits.static, torch.Generator().manual_seed(seed))


def moment_draws(settings: dict[str, Any], run: dict[str, Any], seed_offset: int = 4) -> MomentDraws:
    """The AC moment draws of an evaluation: ``eval.ac_moment_draws`` (null: the run's ``train.batch_size``) per
    call, from a generator of their own seeded with ``eval.seed + seed_offset`` (the AIS and IWAE streams, and every
    number of the VAE and plain AVB, stay as they were)."""
    n = settings.get("ac_moment_draws") or run["train"]["batch_size"]
    return MomentDraws(int(n), torch.Generator().manual_seed(settings["seed"] + seed_offset))


@torch.no_grad()
def elbo_per_image(model: Method, x: torch.Tensor, n_samples: int,
                   moments: MomentDraws | None = None) -> torch.Tensor:
    """Mean over ``n_samples`` posterior draws of -recon - KL per image (KL: analytic or adversary estimate)."""
    return torch.stack([model(x, moments).elbo for _ in range(n_samples)]).mean(0)


def iwae_per_image(model: Method, x: torch.Tensor, init: tuple[torch.Tensor, torch.Tensor] | None, k: int,
                   generator: torch.Generator, max_rows: int | None = None) -> tuple[np.ndarray, str]:
    """IWAE_k per image with the Gaussian ``init`` as proposal (``model.proposal``), and ``model.proposal_note``;
    a method with a density of its own beyond that Gaussian (``Method.iwae``: IAF's flow, the auxiliary VAE's joint
    q(a, z|x)) uses it instead, with the same generator.

    A method without a proposal (init None: plain AVB, whose implicit encoder has no density) gets NaN, never a
    number.
    """
    if k <= 0:
        return np.full(len(x), math.nan), "disabled (iwae_samples = 0)"
    with torch.no_grad():
        own = model.iwae(x, k, generator, max_rows=4096 if max_rows is None else max_rows)
    if own is not None:
        return own.cpu().numpy(), model.proposal_note
    if init is None:
        return np.full(len(x), math.nan), model.proposal_note
    values = iwae_bound(model.decoder.log_likelihood, x, init[0], init[1], k, generator=generator,
                        max_rows=4096 if max_rows is None else max_rows)
    return values.cpu().numpy(), model.proposal_note


def bdmc_on_simulated(model: Method, settings: dict[str, Any], generator: torch.Generator,
                      moments: MomentDraws | None = None, log_lik: LogLik | None = None) -> dict[str, float]:
    """BDMC sandwich on ``settings['bdmc_images']`` images simulated from the model, with the AIS settings.

    z ~ p(z), x ~ p(x|z) makes z an exact posterior draw, so reverse AIS from it gives a stochastic upper bound and
    forward AIS a lower bound on log p(x) of the simulated images; their gap bounds the error of the forward AIS
    estimate on data like the model's own. Not a bound on real test images. ``log_lik``: the decoder's
    log-likelihood as AIS evaluates it (``log_likelihood``; None: the decoder's own).
    """
    n = int(settings["bdmc_images"])
    if n == 0:
        return {"bdmc_images": 0, "bdmc_lower": math.nan, "bdmc_upper": math.nan, "bdmc_width": math.nan,
                "bdmc_width_se": math.nan}
    x, z = simulate_bernoulli(model.decoder, n, model.z_dim, generator)
    with torch.no_grad():
        init = model.proposal(x, moments)
    res = bdmc(log_lik or model.decoder.log_likelihood, x, z, n_steps=settings["ais_steps"],
               n_chains=settings["ais_chains"],
               init=init, schedule=settings["ais_schedule"], leapfrog_steps=settings["leapfrog_steps"],
               generator=generator, eps=settings["ais_eps"], adapt=settings["ais_adapt"],
               leapfrog=settings["ais_leapfrog"], memory_mb=settings["ais_memory_mb"])
    width = res.width.cpu()
    return {"bdmc_images": n, "bdmc_lower": float(res.lower.mean()), "bdmc_upper": float(res.upper.mean()),
            "bdmc_width": float(width.mean()),
            "bdmc_width_se": float(width.std() / math.sqrt(n)) if n > 1 else math.nan}


def log_likelihood(model: Method, device: torch.device, precision: str = "fp32") -> LogLik:
    """The decoder's log p(x|z) as AIS evaluates it at ``eval.precision``: ``fp32`` the decoder's own (the numbers
    of before); ``tf32`` the same with TF32 matmuls and convolutions on CUDA (on the CPU: fp32); ``bf16`` the
    decoder's network under bfloat16 autocast but its output layer (the last layer with weights: the logits), which
    runs in fp32 with the Bernoulli log-likelihood summed in fp32, and TF32 for the fp32 parts on CUDA. (Logits
    rounded to bf16 bias log p(x|z) and the AIS estimate: on the VAE of tests/test_evaluate.py the mean AIS
    log p(x) moved 0.09 nat with bf16 logits, 0.04 with the fp32 output layer.) A decoder other than
    ``avb.nets.Decoder`` over an ``nn.Sequential`` gets its whole ``log_likelihood`` under autocast."""
    if precision not in PRECISIONS:
        raise ValueError(f"eval.precision = {precision!r}; expected one of {', '.join(PRECISIONS)}")
    dec = model.decoder
    if precision == "fp32":
        return dec.log_likelihood
    if precision == "tf32":
        def f_tf32(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            with tf32(True, device):
                return dec.log_likelihood(x, z)
        return f_tf32
    net = getattr(dec, "net", None)
    plain = (type(dec).log_likelihood is Decoder.log_likelihood and type(dec).forward is Decoder.forward
             and isinstance(net, torch.nn.Sequential))
    weighted = [i for i, m in enumerate(net) if any(True for _ in m.parameters())] if plain else []

    def f_bf16(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        with tf32(True, device):
            if not weighted:
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                    return dec.log_likelihood(x, z).float()
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                h = net[:weighted[-1]](z)
            logits = net[weighted[-1]:](h.float())
            return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    return f_bf16


def call_images(settings: dict[str, Any]) -> int:
    """Images per AIS call: ``ais_call_images`` rounded up to whole batches of ``batch_size`` (null: one batch)."""
    bs = int(settings["batch_size"])
    n = settings.get("ais_call_images") or bs
    return -(-int(n) // bs) * bs


def configure(model: Method, settings: dict[str, Any]) -> Method:
    """The evaluation-time choices of a method, from the ``eval`` settings: VAE + IAF's AIS start
    (``iaf_ais_start``, the prior where the settings have none)."""
    if hasattr(model, "set_ais_start"):
        model.set_ais_start(settings.get("iaf_ais_start", "prior"))
    return model


def evaluate(model_path: str | Path, settings: dict[str, Any], out_csv: str | Path, out_json: str | Path,
             progress: bool = True, data_dir: str | Path | None = None) -> dict[str, Any]:
    """Run AIS, the ELBO and the IWAE bound on the test subset; writes per-image CSV and a summary JSON atomically."""
    device = resolve_device(settings["device"], why=f"evaluation of {model_path}")
    info = device_info(device)
    print(f"[avb] evaluating on {describe(info)}", flush=True)
    model, run = load_model(model_path, device)
    configure(model, settings)
    torch.manual_seed(settings["seed"])
    x_all = test_images(run, settings["n_test"], settings["seed"], data_dir).to(device)
    gen = torch.Generator(device=device).manual_seed(settings["seed"] + 1)  # AIS: on the device (CPU: as before)
    iwae_gen = torch.Generator().manual_seed(settings["seed"] + 2)  # its own stream: AIS numbers stay as they were
    moments = moment_draws(settings, run)  # AC's r(z|x) from a fixed number of draws, not the batch's images
    iwae_k = int(settings["iwae_samples"])
    memory_mb = settings["ais_memory_mb"]
    precision = settings.get("precision", "fp32")
    ais_ll = log_likelihood(model, device, precision)
    bs, per_call = settings["batch_size"], call_images(settings)
    frames, t0 = [], time.perf_counter()
    for call_start in range(0, len(x_all), per_call):
        # per batch, in the order of one batch per call: proposal, IWAE, ELBO (their streams as before) ...
        batches = []
        for start in range(call_start, min(len(x_all), call_start + per_call), bs):
            x = x_all[start:start + bs]
            with torch.no_grad():
                init = model.proposal(x, moments)
            iwae_rows = None if memory_mb is None else rows_for_memory(model.decoder.log_likelihood, x, model.z_dim,
                                                                       memory_mb)
            iwae, iwae_note = iwae_per_image(model, x, init, iwae_k, iwae_gen, iwae_rows)
            elbo = elbo_per_image(model, x, settings["elbo_samples"], moments).cpu().numpy()
            batches.append((start, x, init, iwae, elbo))
        # ... then AIS for all of them at once, each batch as if by its own call (avb.ais, 'Groups')
        x = torch.cat([b[1] for b in batches])
        init = None if batches[0][2] is None else tuple(torch.cat([b[2][i] for b in batches]) for i in (0, 1))
        res = estimate_log_likelihood(
            ais_ll, x, model.z_dim, n_steps=settings["ais_steps"],
            n_chains=settings["ais_chains"], init=init, schedule=settings["ais_schedule"],
            leapfrog_steps=settings["leapfrog_steps"], generator=gen, eps=settings["ais_eps"],
            adapt=settings["ais_adapt"], leapfrog=settings["ais_leapfrog"], memory_mb=memory_mb,
            adapt_group=bs if len(batches) > 1 else None, progress=progress)
        log_px, ess = res.log_px.cpu().numpy(), res.ess.cpu().numpy()
        for start, xb, _, iwae, elbo in batches:
            rows = slice(start - call_start, start - call_start + len(xb))
            accept = float(res.last_accept[rows].mean()) if res.last_accept is not None else math.nan
            frames.append(pd.DataFrame({
                "image": np.arange(start, start + len(xb)),
                "log_px_ais": log_px[rows],
                "ess": ess[rows],
                "elbo": elbo,
                "iwae": iwae,
                "iwae_samples": iwae_k,
                "final_accept_rate": accept,
            }))
    per_image = pd.concat(frames, ignore_index=True)
    n = len(per_image)
    summary = {
        "method": run["method"], "dataset": run["dataset"], "z_dim": run["z_dim"], "seed": run["seed"],
        "arch": run["model"]["arch"], "train_steps": run["train"]["steps"],
        "binarization": "static" if run["dataset"] == "static_mnist" else "dynamic",
        "log_px_ais": float(per_image.log_px_ais.mean()),
        "log_px_ais_se": float(per_image.log_px_ais.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
        "elbo": float(per_image.elbo.mean()),
        "elbo_se": float(per_image.elbo.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
        "elbo_is_bound": model.elbo_is_bound,
        "iwae": float(per_image.iwae.mean(skipna=False)),
        "iwae_se": float(per_image.iwae.std(ddof=1, skipna=False) / math.sqrt(n)) if n > 1 else math.nan,
        "iwae_samples": iwae_k, "iwae_note": iwae_note,
        "n_test": n, "ais_steps": settings["ais_steps"], "ais_chains": settings["ais_chains"],
        "ais_schedule": settings["ais_schedule"], "ais_adapt": settings["ais_adapt"],
        "ais_init": "encoder gaussian" if model.has_proposal else "prior",
        "ac_moment_draws": moments.n if model.ac else None,
        "mean_ess": float(per_image.ess.mean()), "eval_seconds": time.perf_counter() - t0,
        "precision": precision, "ais_call_images": per_call,
        **{f"device_{k}": v for k, v in info.items()},  # flat: device_type, device_name, device_torch_cuda, ...
    }
    summary["gap"] = summary["log_px_ais"] - summary["elbo"]
    summary.update(bdmc_on_simulated(model, settings,
                                     torch.Generator(device=device).manual_seed(settings["seed"] + 3),
                                     moment_draws(settings, run, seed_offset=5), ais_ll))
    summary["eval_seconds"] = time.perf_counter() - t0
    # never write a NaN / inf log p(x) or ELBO: an error naming the model instead (issue 13)
    io.require_finite({"log_px_ais": per_image.log_px_ais, "elbo": per_image.elbo}, f"evaluation of {model_path}")
    io.write_csv(per_image, out_csv)
    io.write_json(summary, out_json)
    return summary


def ais_convergence(model_path: str | Path, settings: dict[str, Any], steps: list[int], n_images: int,
                    out_csv: str | Path, progress: bool = True,
                    data_dir: str | Path | None = None) -> pd.DataFrame:
    """AIS estimates against the number of annealing steps, and the BDMC sandwich at each budget.

    For each budget: forward AIS on the first ``n_images`` test images (the number the tables report, at a smaller
    budget), and forward / reverse AIS on ``n_images`` images simulated from the model (the sandwich). Tidy CSV:
    one row per (n_steps, estimate) with the mean over images and its standard error.
    """
    device = resolve_device(settings["device"], why=f"AIS convergence of {model_path}")
    print(f"[avb] AIS convergence on {describe(device_info(device))}", flush=True)
    model, run = load_model(model_path, device)
    configure(model, settings)
    ais_ll = log_likelihood(model, device, settings.get("precision", "fp32"))
    x_test = test_images(run, n_images, settings["seed"], data_dir).to(device)
    x_sim, z_sim = simulate_bernoulli(model.decoder, n_images, model.z_dim,
                                      torch.Generator(device=device).manual_seed(settings["seed"] + 3))
    common = dict(n_chains=settings["ais_chains"], schedule=settings["ais_schedule"],
                  leapfrog_steps=settings["leapfrog_steps"], eps=settings["ais_eps"], adapt=settings["ais_adapt"],
                  leapfrog=settings["ais_leapfrog"], memory_mb=settings["ais_memory_mb"])
    moments = moment_draws(settings, run)
    with torch.no_grad():  # one r(z|x) for every budget, from a fixed number of draws (not n_images)
        init_test, init_sim = model.proposal(x_test, moments), model.proposal(x_sim, moments)
    rows = []

    def add(n_steps: int, estimate: str, values: torch.Tensor) -> None:
        v = values.detach().cpu().double()
        rows.append({"method": run["method"], "dataset": run["dataset"], "z_dim": run["z_dim"], "seed": run["seed"],
                     "n_steps": n_steps, "estimate": estimate, "mean": float(v.mean()),
                     "se": float(v.std() / math.sqrt(len(v))) if len(v) > 1 else math.nan, "n_images": len(v)})

    for n_steps in steps:
        gen = torch.Generator(device=device).manual_seed(settings["seed"] + 1)
        fwd = estimate_log_likelihood(ais_ll, x_test, model.z_dim, n_steps=n_steps,
                                      init=init_test, generator=gen, progress=progress, **common)
        add(n_steps, "ais_test", fwd.log_px)
        res = bdmc(ais_ll, x_sim, z_sim, n_steps=n_steps, init=init_sim, generator=gen,
                   **common)
        add(n_steps, "bdmc_lower", res.lower)
        add(n_steps, "bdmc_upper", res.upper)
    df = pd.DataFrame(rows)
    io.write_csv(df, out_csv)
    return df
