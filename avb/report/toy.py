"""The toy report (``avb toy report``): the summary table of the evaluations (``avb.toy_eval.evaluate``), its Markdown
with the estimators explained, the latent-space figure and, optionally, the Table 1 replica (``avb.report.table1``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .. import io
from ..toy import LABELS, METHODS, N_IMAGES, OPTIMUM


COLUMNS = ["method", "iterations", "log_px_exact", "optimum", "gap_to_optimum", "recon_error", "recon_error_paper",
           "elbo", "elbo_is_bound", "elbo_estimator", "kl_q_posterior", "kl_q_posterior_estimator",
           "kl_q_posterior_kde", "elbo_from_kl", "kl_aggregate_prior", "kl_aggregate_prior_estimator",
           "kl_aggregate_prior_kde", "kl_aggregate_prior_knn", "knn_k", "log_px_x0", "log_px_x1", "log_px_x2",
           "log_px_x3", "mass_on_data", "mass_all_images", "quad_error_est", "prior_tail_mass", "grid_limit",
           "grid_size", "n_samples", "kde_samples", "kde_bandwidth_mean", "kde_bandwidth_aggregate", "adv_prior_term",
           "batch_size", "lr", "lr_adversary", "adv_hidden", "adv_blocks", "seed", "eval_seconds"]


def table(eval_jsons: list[str | os.PathLike]):
    import pandas as pd
    rows = [json.loads(Path(p).read_text()) for p in eval_jsons]
    order = {m: i for i, m in enumerate(METHODS)}
    rows.sort(key=lambda r: order[r["method"]])
    return pd.DataFrame(rows, columns=COLUMNS)


def markdown(df) -> str:
    lines = [
        "# Four-image toy experiment (paper section 5.1)", "",
        f"Optimum: mean over the 4 images of log p(x) = -log 4 = {OPTIMUM:.4f}. log p(x) is exact up to quadrature "
        "(midpoint rule; the Richardson error estimate is in the last column).", "",
        "| method | iterations | log p(x) (exact) | recon. error | ELBO | KL(q(z\\|x), p(z\\|x)) | KL(q(z), p(z)) "
        "| quadrature error |",
        "|---|---|---|---|---|---|---|---|"]
    for r in df.itertuples():
        elbo = f"{r.elbo:.4f}" + ("" if r.elbo_is_bound else " (≈, adversary KL)")
        mark = "" if r.method == "vae" else " (KDE)"
        lines.append(f"| {LABELS[r.method]} | {r.iterations} | {r.log_px_exact:.4f} | {r.recon_error:.4f} | {elbo} "
                     f"| {r.kl_q_posterior:.4f}{mark} | {r.kl_aggregate_prior:.4f}{mark} | {r.quad_error_est:.1e} |")
    vae = df[df.method == "vae"]
    lines += [
        "",
        "* log p(x): $\\log \\int p(x \\mid z)\\, \\mathcal{N}(z; 0, I)\\, dz$ per image by the midpoint rule on a "
        f"${int(df.grid_size.iloc[0])}^2$ grid over $[-{df.grid_limit.iloc[0]:g}, {df.grid_limit.iloc[0]:g}]^2$, "
        "averaged over the 4 images (= the expected log-likelihood under the uniform data). Truncated prior mass: "
        f"{df.prior_tail_mass.iloc[0]:.1e}. The mean can never exceed -log 4.",
        "* Reconstruction error: E_x E_q(z|x)[-log p(x|z)] (nats), Monte Carlo.",
        "* ELBO: VAE: analytic KL and MC reconstruction (a lower bound). AVB / AVB + AC: the adversary's KL estimate "
        "T(x, z) (+ log r - log p with AC), so it is an estimate, not a bound.",
        "* KL(q(z|x), p(z|x)) = E_q[log q(z|x) - log p(z|x)], averaged over the 4 images, with the exact log p(z|x) "
        "(decoder and quadrature log p(x)) at the encoder samples. VAE: exact log q (Gaussian), so only MC noise. "
        "AVB, AVB + AC: q is implicit, so log q is a Gaussian KDE fitted on separate samples (bandwidth by held-out "
        "likelihood). Its expectation is KL(q||p) - KL(q||q_hat): biased **downwards** by KL(q||q_hat) >= 0.",
        "* KL(q(z), p(z)): aggregated posterior q(z) = 1/4 sum_i q(z|x_i) against the prior; same estimators (VAE: "
        "exact mixture density; AVB: held-out KDE, biased downwards). The paper's estimator is not stated (its code "
        "lists the ITE toolbox); `kl_aggregate_prior_knn` in summary.csv is ITE's kNN estimator against prior draws "
        "(see table1.md).",
    ]
    if len(vae):
        v = vae.iloc[0]
        lines.append(f"* KDE bias check on the VAE (exact vs KDE): KL(q(z|x), p(z|x)) {v.kl_q_posterior:.4f} vs "
                     f"{v.kl_q_posterior_kde:.4f}; KL(q(z), p(z)) {v.kl_aggregate_prior:.4f} vs "
                     f"{v.kl_aggregate_prior_kde:.4f}. Consistency: log p(x) - KL(q||p(z|x)) = "
                     f"{v.elbo_from_kl:.4f} vs ELBO {v.elbo:.4f}.")
    terms = ", ".join(sorted(set(df.adv_prior_term.dropna()))) or "n/a"
    for r in df.itertuples():
        adv = "" if r.method == "vae" else (f", adversary lr {r.lr_adversary:g}, {int(r.adv_hidden)} wide x "
                                             f"{int(r.adv_blocks)} residual blocks")
        nb = "100k, 512, 2e-5" + ("" if r.method == "vae" else ", 1e-4, 256 x 5")
        lines.append(f"* {LABELS[r.method]} settings: {r.iterations} iterations, batch {r.batch_size}, "
                     f"lr {r.lr:g}{adv} (notebook: {nb}).")
    if (df.method == "avb_ac").any():
        lines.append("* AVB + AC is an extra row (no toy notebook): noise-basis encoder z = z0(x) + sum_i a_i(x) "
                     "v_i(eps_i) (the official AC form, toy-sized); r(z|x) Gaussian with the batch moments of q, as "
                     "coded.")
    lines += [
        f"* Adversary prior term: {terms} (`sum_sq` = the notebook's `+ sum(z^2)`; `half_sum_sq` = the paper's "
        "`-log p(z)` = $\\tfrac12 \\lVert z \\rVert^2$. Same optimum T* = log q - log p; with `sum_sq` the network "
        "must also cancel a surplus $\\tfrac12 \\lVert z \\rVert^2$).",
        "* The paper's Table 1 beside these numbers, like with like: table1.md (reconstruction error per pixel; "
        "KL(q(z), p(z)) also by the kNN estimator).", ""]
    return "\n".join(lines)


def figure(npzs: list[str | os.PathLike], evals: list[dict], out_png: str | os.PathLike,
           out_pdf: str | os.PathLike, extent: float = 3.5) -> None:
    """One row per method: encoder samples coloured by image (the paper's figure) | exact posteriors p(z|x_i)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.patches import Patch

    sns.set_theme(style="white", context="paper")
    colours = np.array(sns.color_palette("colorblind", N_IMAGES))
    fig, axes = plt.subplots(len(npzs), 2, figsize=(6.4, 3.2 * len(npzs)), squeeze=False)
    for row, (path, ev) in zip(axes, zip(npzs, evals)):
        with np.load(path, allow_pickle=False) as d:
            axis, post, scatter = d["axis"], d["posterior"], d["scatter"]
        ax = row[0]
        for i in range(N_IMAGES):
            ax.scatter(scatter[i, :, 0], scatter[i, :, 1], s=3, color=colours[i], alpha=0.5, edgecolors="none",
                       rasterized=True)
        ax.set_title(f"{ev['label']}: z ~ q(z|x)\nlog p(x) = {ev['log_px_exact']:.3f}", fontsize=9)
        # exact posteriors blended subtractively: white background, each image's colour where its posterior lives
        dens = post / post.reshape(N_IMAGES, -1).max(1)[:, None, None]
        img = np.ones(post.shape[1:] + (3,))
        for i in range(N_IMAGES):
            img -= dens[i][..., None] * (1.0 - colours[i])[None, None]
        img = np.clip(img, 0.0, 1.0)
        lim = float(axis[-1] + (axis[1] - axis[0]) / 2)
        row[1].imshow(img, origin="lower", extent=(-lim, lim, -lim, lim), interpolation="bilinear")
        row[1].set_title(f"{ev['label']}: exact p(z|x) of the decoder", fontsize=9)
        for a in row:
            a.set_xlim(-extent, extent)
            a.set_ylim(-extent, extent)
            a.set_aspect("equal")
            a.set_xticks([-3, 0, 3])
            a.set_yticks([-3, 0, 3])
    handles = [Patch(color=colours[i], label=f"image {i} (pixel {i} on)") for i in range(N_IMAGES)]
    fig.legend(handles=handles, loc="lower center", ncol=N_IMAGES, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    with io.atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    with io.atomic_path(out_pdf) as tmp:
        fig.savefig(tmp, format="pdf")
    plt.close(fig)


def report(eval_jsons: list[str], npzs: list[str], out_csv: str, out_md: str, out_png: str, out_pdf: str,
           out_table1: tuple[str, str, str] | None = None):
    """summary.csv / .md and the latent-space figure; with ``out_table1`` (CSV, MD, TEX), the Table 1 replica
    (``avb.report.table1``)."""
    df = table(eval_jsons)
    order = {m: i for i, m in enumerate(METHODS)}
    pairs = sorted(zip(eval_jsons, npzs), key=lambda p: order[json.loads(Path(p[0]).read_text())["method"]])
    io.write_csv(df, out_csv)
    md = markdown(df)
    io.write_text(md, out_md)
    figure([p[1] for p in pairs], [json.loads(Path(p[0]).read_text()) for p in pairs], out_png, out_pdf)
    if out_table1 is not None:
        from . import table1
        md += "\n" + table1.write(df, *out_table1)
    return md
