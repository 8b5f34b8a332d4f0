"""Training curves (PNG + PDF). Per MNIST-type run (``training_curves``): the training and validation curves from
train_metrics.csv and, with validation (``monitor.val_every``), val_metrics.csv. The toy and eight-schools runs
(``runs_curves``): one figure per experiment, one row per run.

``training_curves`` draws four panels against the training step: (a) the ELBO, training (the mean over each
``log_every`` steps, for AVB an estimate with the adversary's KL) beside the validation ELBO and IWAE bound, the
best validation ELBO marked (the step of model.best.pt); (b) the reconstruction term and the KL term; (c) the primal
and adversary losses; (d) the adversary's accuracy (0.5: it cannot tell q from the prior) or, without an adversary,
the training throughput.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .figures import save  # noqa: E402


def _limits(values: np.ndarray, cut: str = "low") -> tuple[float, float] | None:
    """y limits that cut the first steps' transient: from the 5th percentile up (``cut="low"``: the ELBO starts
    low) or up to the 95th (``"high"``: the reconstruction term starts high); None without finite values."""
    v = values[np.isfinite(values)]
    if not len(v):
        return None
    low, high = (float(np.percentile(v, 5)), float(v.max())) if cut == "low" else \
        (float(v.min()), float(np.percentile(v, 95)))
    pad = 0.08 * (high - low) if high > low else max(0.05 * abs(high), 0.5)
    return low - pad, high + pad


def training_curves(metrics_csv: str | Path, out_png: str | Path, out_pdf: str | Path | None = None,
                    val_csv: str | Path | None = None, title: str = "") -> None:
    """Draw the run's curves (see the module docstring); ``val_csv`` None: training curves only."""
    sns.set_theme(style="whitegrid", context="paper")
    m = pd.read_csv(metrics_csv)
    val = pd.read_csv(val_csv) if val_csv is not None else None
    fig, axes = plt.subplots(2, 2, figsize=(9, 6), sharex=True)
    (elbo_ax, terms_ax), (loss_ax, adv_ax) = axes

    elbo_ax.plot(m.step, m.elbo, lw=1, label="training ELBO")
    series = [m.elbo.to_numpy(float)]
    if val is not None and len(val):
        elbo_ax.plot(val.step, val.elbo, "o-", ms=3, lw=1, label="validation ELBO")
        series.append(val.elbo.to_numpy(float))
        if val.iwae.notna().any():
            elbo_ax.plot(val.step, val.iwae, "s--", ms=3, lw=1, label="validation IWAE")
            series.append(val.iwae.to_numpy(float))
        best = val.elbo.idxmax() if val.elbo.notna().any() else None
        if best is not None:
            elbo_ax.axvline(val.step[best], color="0.5", lw=0.8, ls=":")
            right = val.step[best] > (m.step.min() + m.step.max()) / 2 if len(m) else False
            elbo_ax.annotate(f"best {val.elbo[best]:.1f}\n(step {val.step[best]})", (val.step[best], val.elbo[best]),
                             xytext=(-4 if right else 4, -22), textcoords="offset points", fontsize=7,
                             ha="right" if right else "left")
    limits = _limits(np.concatenate(series))
    if limits:
        elbo_ax.set_ylim(*limits)
    elbo_ax.set_title("(a) ELBO (nats)")
    elbo_ax.legend(fontsize=7)

    terms_ax.plot(m.step, m.recon, lw=1, label="reconstruction -log p(x|z)")
    terms_ax.plot(m.step, m.kl, lw=1, label="KL")
    limits = _limits(np.concatenate([m.recon.to_numpy(float), m.kl.to_numpy(float)]), cut="high")
    if limits:
        terms_ax.set_ylim(*limits)
    terms_ax.set_title("(b) reconstruction and KL terms (nats)")
    terms_ax.legend(fontsize=7)

    loss_ax.plot(m.step, m.loss_primal, lw=1, label="primal")
    if m.loss_adversary.notna().any():
        loss_ax.plot(m.step, m.loss_adversary, lw=1, label="adversary")
    loss_ax.set_title("(c) losses")
    loss_ax.legend(fontsize=7)
    loss_ax.set_xlabel("training step")

    if m.adv_accuracy.notna().any():
        adv_ax.plot(m.step, m.adv_accuracy, lw=1)
        adv_ax.axhline(0.5, color="0.5", lw=0.8, ls=":")
        adv_ax.set_ylim(0.0, 1.02)
        adv_ax.set_title("(d) adversary accuracy")
    else:
        adv_ax.plot(m.step, m.images_per_s, lw=1)
        adv_ax.set_title("(d) training throughput (images/s)")
    adv_ax.set_xlabel("training step")
    last = m.elbo.iloc[-1] if len(m) else math.nan
    fig.suptitle(f"{title}{': ' if title else ''}last training ELBO {last:.1f}"
                 + (f", last validation ELBO {val.elbo.iloc[-1]:.1f}" if val is not None and len(val) else ""),
                 fontsize=10)
    fig.tight_layout()
    save(fig, out_png, out_pdf)


def runs_curves(runs: list[tuple[str, str | Path]], out_png: str | Path, out_pdf: str | Path | None = None,
                title: str = "") -> None:
    """The toy and eight-schools runs: one row per run (``runs``: its label and train_metrics.csv), its ELBO (for
    AVB an estimate with the adversary's KL), its losses and, where it has an adversary, the adversary's accuracy,
    against the training step."""
    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(len(runs), 3, figsize=(10, 2.2 * len(runs) + 0.5), squeeze=False)
    for (label, path), (elbo_ax, loss_ax, adv_ax) in zip(runs, axes):
        m = pd.read_csv(path)
        elbo_ax.plot(m.step, m.elbo, lw=1)
        limits = _limits(m.elbo.to_numpy(float))
        if limits:
            elbo_ax.set_ylim(*limits)
        elbo_ax.set_ylabel(label, fontsize=8)
        loss_ax.plot(m.step, m.loss_primal, lw=1, label="primal")
        if m.loss_adversary.notna().any():
            loss_ax.plot(m.step, m.loss_adversary, lw=1, label="adversary")
            loss_ax.legend(fontsize=6)
        if m.adv_accuracy.notna().any():
            adv_ax.plot(m.step, m.adv_accuracy, lw=1)
            adv_ax.axhline(0.5, color="0.5", lw=0.8, ls=":")
            adv_ax.set_ylim(0.0, 1.02)
        else:
            adv_ax.text(0.5, 0.5, "no adversary", ha="center", va="center", transform=adv_ax.transAxes,
                        fontsize=8, color="0.4")
            adv_ax.set_axis_off()
    for ax, name in zip(axes[0], ("training ELBO (nats)", "losses", "adversary accuracy")):
        ax.set_title(name, fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("training step", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save(fig, out_png, out_pdf)
