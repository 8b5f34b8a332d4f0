"""Figures: decoder samples of each model beside the training curves."""
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


def sample_grid(model_path: str | Path, n: int, seed: int = 0) -> np.ndarray:
    """Bernoulli means of the decoder at n prior draws, tiled into one square image."""
    model, _ = load_model(model_path)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        probs = torch.sigmoid(model.decoder(torch.randn(n, model.z_dim, generator=g))).view(n, 28, 28).numpy()
    side = int(np.ceil(np.sqrt(n)))
    grid = np.ones((side * 29 + 1, side * 29 + 1))
    for i, img in enumerate(probs):
        r, c = divmod(i, side)
        grid[1 + r * 29:1 + r * 29 + 28, 1 + c * 29:1 + c * 29 + 28] = img
    return grid


def samples_and_curves(runs: list[dict], out_png: str | Path, n_samples: int = 64) -> None:
    """One panel of samples per run and one panel of training ELBO against step.

    ``runs``: dicts with keys ``label``, ``model`` (path of model.pt) and ``metrics`` (path of train_metrics.csv).
    """
    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(1, len(runs) + 1, figsize=(3.2 * (len(runs) + 1), 3.4))
    curves = []
    for ax, run in zip(axes, runs):
        ax.imshow(sample_grid(run["model"], n_samples), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(f"{run['label']}: samples")
        ax.axis("off")
        m = pd.read_csv(run["metrics"])
        m["run"] = run["label"]
        curves.append(m)
    sns.lineplot(data=pd.concat(curves, ignore_index=True), x="step", y="elbo", hue="run", ax=axes[-1])
    axes[-1].set_title("training ELBO (AVB: adversary estimate)")
    axes[-1].set_ylabel("ELBO (nats)")
    fig.tight_layout()
    with io.atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def run_label(run: dict) -> str:
    return f"{LABELS[run['method']]} z={run['z_dim']} s{run['seed']}"
