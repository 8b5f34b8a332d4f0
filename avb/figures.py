"""Figures (PNG + PDF): decoder samples and reconstructions of each model beside the training curves, and AIS
against the annealing budget with the BDMC sandwich."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402

from . import io  # noqa: E402
from .tables import LABELS  # noqa: E402
from .train import load_model  # noqa: E402


def tile(images: np.ndarray, cols: int) -> np.ndarray:
    """[N, 28, 28] images into one grid with 1-pixel borders, ``cols`` per row."""
    rows = int(np.ceil(len(images) / cols))
    grid = np.ones((rows * 29 + 1, cols * 29 + 1))
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid[1 + r * 29:1 + r * 29 + 28, 1 + c * 29:1 + c * 29 + 28] = img
    return grid


@torch.no_grad()
def sample_grid(model_path: str | Path, n: int, seed: int = 0) -> np.ndarray:
    """Bernoulli means of the decoder at n prior draws, tiled into one square image."""
    model, _ = load_model(model_path)
    g = torch.Generator().manual_seed(seed)
    probs = torch.sigmoid(model.decoder(torch.randn(n, model.z_dim, generator=g))).view(n, 28, 28).numpy()
    return tile(probs, int(np.ceil(np.sqrt(n))))


@torch.no_grad()
def reconstruction_grid(model_path: str | Path, n: int = 8, seed: int = 0) -> np.ndarray:
    """Rows of test images (dynamically binarised with ``seed``) above their reconstructions: the decoder's
    Bernoulli means at one z ~ q(z|x)."""
    from .evaluate import test_images

    model, run = load_model(model_path)
    x = test_images(run, max(n, 16), seed)  # AC's moments are batch statistics: give the encoder a batch
    torch.manual_seed(seed)
    z = model.encode(x)[0] if hasattr(model, "encode") else model.ais_init(x)[0]
    recon = torch.sigmoid(model.decoder(z))
    return tile(torch.cat([x[:n], recon[:n]]).view(-1, 28, 28).numpy(), n)


def save(fig, out_png: str | Path, out_pdf: str | Path | None = None) -> None:
    with io.atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    if out_pdf is not None:
        with io.atomic_path(out_pdf) as tmp:
            fig.savefig(tmp, format="pdf")
    plt.close(fig)


def samples_and_curves(runs: list[dict], out_png: str | Path, n_samples: int = 64,
                       out_pdf: str | Path | None = None) -> None:
    """Per run: decoder samples (top) and test images over their reconstructions (bottom); last column: the
    training ELBO against the step for every run.

    ``runs``: dicts with keys ``label``, ``model`` (path of model.pt) and ``metrics`` (path of train_metrics.csv).
    """
    sns.set_theme(style="whitegrid", context="paper")
    n = len(runs)
    fig, axes = plt.subplots(2, n + 1, figsize=(3.2 * (n + 1), 6.4), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1]})
    curves = []
    for i, run in enumerate(runs):
        axes[0, i].imshow(sample_grid(run["model"], n_samples), cmap="gray_r", vmin=0, vmax=1)
        axes[0, i].set_title(f"{run['label']}: samples")
        axes[1, i].imshow(reconstruction_grid(run["model"]), cmap="gray_r", vmin=0, vmax=1)
        axes[1, i].set_title("test images / reconstructions")
        for ax in axes[:, i]:
            ax.axis("off")
        m = pd.read_csv(run["metrics"])
        m["run"] = run["label"]
        curves.append(m)
    sns.lineplot(data=pd.concat(curves, ignore_index=True), x="step", y="elbo", hue="run", ax=axes[0, -1])
    axes[0, -1].set_title("training ELBO (AVB: adversary estimate)")
    axes[0, -1].set_ylabel("ELBO (nats)")
    axes[1, -1].axis("off")
    fig.tight_layout()
    save(fig, out_png, out_pdf)


def ais_convergence(csvs: list[str | Path], out_png: str | Path, out_pdf: str | Path | None = None) -> None:
    """Left: AIS log p(x) of test images against the annealing budget, one line per run. Right: the BDMC sandwich
    (forward and reverse AIS) on images simulated from each model; where the two meet, AIS has converged."""
    sns.set_theme(style="whitegrid", context="paper")
    df = pd.concat([pd.read_csv(c) for c in csvs], ignore_index=True)
    df["run"] = [f"{LABELS[m]} z={z} s{s}" for m, z, s in zip(df.method, df.z_dim, df.seed)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    palette = dict(zip(sorted(df.run.unique()), sns.color_palette(n_colors=df.run.nunique())))
    for run, g in df.groupby("run"):
        t = g[g.estimate == "ais_test"].sort_values("n_steps")
        left.errorbar(t.n_steps, t["mean"], yerr=t.se, marker="o", capsize=2, color=palette[run], label=run)
        lo, up = (g[g.estimate == e].sort_values("n_steps") for e in ("bdmc_lower", "bdmc_upper"))
        right.plot(lo.n_steps, lo["mean"], marker="o", color=palette[run], label=f"{run}: forward (lower)")
        right.plot(up.n_steps, up["mean"], marker="v", ls="--", color=palette[run], label=f"{run}: reverse (upper)")
        right.fill_between(lo.n_steps, lo["mean"], up["mean"], color=palette[run], alpha=0.15)
    left.set(xscale="log", xlabel="annealing steps", ylabel="mean log p̂(x) (nats)",
             title="AIS on test images")
    right.set(xscale="log", xlabel="annealing steps", ylabel="mean over simulated images (nats)",
              title="BDMC sandwich on simulated images")
    left.legend(fontsize=7)
    right.legend(fontsize=6, ncol=1)
    fig.tight_layout()
    save(fig, out_png, out_pdf)


def run_label(run: dict) -> str:
    return f"{LABELS[run['method']]} z={run['z_dim']} s{run['seed']}"
