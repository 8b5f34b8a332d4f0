"""Figures (PNG + PDF): decoder samples and reconstructions of each model beside the training curves, AIS against
the annealing budget with the BDMC sandwich, and per run the Figure 7 replica (training images beside samples) and
latent interpolations between test images, as the official training script writes them."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402

from .. import data, io  # noqa: E402
from ..experiments import load_model  # noqa: E402
from ..methods import LABELS  # noqa: E402
from ..objectives import Method  # noqa: E402


def tile(images: np.ndarray, cols: int, pad_value: float = 1.0) -> np.ndarray:
    """[N, 28, 28] images into one grid with 1-pixel borders of ``pad_value``, ``cols`` per row."""
    rows = int(np.ceil(len(images) / cols))
    grid = np.full((rows * 29 + 1, cols * 29 + 1), pad_value)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid[1 + r * 29:1 + r * 29 + 28, 1 + c * 29:1 + c * 29 + 28] = img
    return grid


@torch.no_grad()
def sample_grid(model_path: str | Path, n: int, seed: int = 0, cols: int | None = None) -> np.ndarray:
    """Bernoulli means of the decoder at n prior draws, tiled ``cols`` per row (default: a square)."""
    model, _ = load_model(model_path)
    g = torch.Generator().manual_seed(seed)
    probs = torch.sigmoid(model.decoder(torch.randn(n, model.z_dim, generator=g))).view(n, 28, 28).numpy()
    return tile(probs, cols or int(np.ceil(np.sqrt(n))))


@torch.no_grad()
def reconstruction_grid(model_path: str | Path, n: int = 8, seed: int = 0) -> np.ndarray:
    """Rows of test images (dynamically binarised with ``seed``) above their reconstructions: the decoder's
    Bernoulli means at one z ~ q(z|x)."""
    from ..evaluate import test_images

    model, run = load_model(model_path)
    x = test_images(run, max(n, 16), seed)  # 16: the binarisation draw of earlier figures (z ~ q needs no batch)
    torch.manual_seed(seed)
    z = model.proposal(x)[0] if model.proposal_is_q else model.sample(x)  # the VAE's mean, else one draw
    recon = torch.sigmoid(model.decoder(z))
    return tile(torch.cat([x[:n], recon[:n]]).view(-1, 28, 28).numpy(), n)


def save(fig, out_png: str | Path, out_pdf: str | Path | None = None, dpi: int = 120) -> None:
    with io.atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    if out_pdf is not None:
        with io.atomic_path(out_pdf) as tmp:
            fig.savefig(tmp, format="pdf")
    plt.close(fig)


def _blank_unused(grid: np.ndarray, n: int, cols: int) -> np.ndarray:
    """A ``tile`` grid of n images with its slots after the n-th white (0) instead of border-coloured."""
    grid = grid.copy()
    for k in range(n, ((grid.shape[0] - 1) // 29) * cols):
        r, c = divmod(k, cols)
        grid[r * 29 + 1:(r + 1) * 29 + 1, c * 29 + 1:(c + 1) * 29 + 1] = 0.0
    return grid


def samples_and_curves(runs: list[dict], out_png: str | Path, n_samples: int = 64,
                       out_pdf: str | Path | None = None) -> None:
    """One row per run, so that 18 runs fit a page at full size: the decoder's Bernoulli means at ``n_samples``
    prior draws (left, about seven times as many per line as lines), 8 test images over their reconstructions
    (middle) and the training ELBO against the step (right; one scale for every row, from the 5th percentile of all
    values up: the first steps' transient is cut; the last value written in).

    ``runs``: dicts with keys ``label``, ``model`` (path of model.pt) and ``metrics`` (path of train_metrics.csv).
    """
    sns.set_theme(style="whitegrid", context="paper")
    n = len(runs)
    cols = min(n_samples, int(np.ceil(np.sqrt(7 * n_samples))))   # 64 draws: 3 lines of 22
    metrics = [pd.read_csv(run["metrics"]) for run in runs]
    images = [(_blank_unused(sample_grid(run["model"], n_samples, cols=cols), n_samples, cols),
               reconstruction_grid(run["model"])) for run in runs]
    values = np.concatenate([m.elbo.to_numpy(float) for m in metrics])
    values = values[np.isfinite(values)]
    low, high = (np.percentile(values, 5), values.max()) if len(values) else (-1.0, 0.0)
    pad = 0.08 * max(high - low, 1.0)
    # Panel widths follow the images' aspect ratios at one row height, inches: label, samples, reconstructions, curve.
    row_h = 0.36
    aspect = [im.shape[1] / im.shape[0] for im in images[0]] if n else [1.0, 1.0]
    widths = [0.75, row_h * aspect[0], row_h * aspect[1], 1.7]
    width = sum(widths) + 0.6
    fig = plt.figure(figsize=(width, row_h * 1.22 * n + 0.6))
    grid = fig.add_gridspec(n, 4, width_ratios=widths, left=0.01, right=1 - 0.4 / width,
                            bottom=0.4 / fig.get_figheight(), top=1 - 0.2 / fig.get_figheight(), wspace=0.05,
                            hspace=0.22)
    show = dict(cmap="gray_r", vmin=0, vmax=1, interpolation="none")
    first_curve = None
    for i, (run, m, (samples, recon)) in enumerate(zip(runs, metrics, images)):
        label, s_ax, r_ax = fig.add_subplot(grid[i, 0]), fig.add_subplot(grid[i, 1]), fig.add_subplot(grid[i, 2])
        c_ax = fig.add_subplot(grid[i, 3], sharex=first_curve)
        first_curve = first_curve or c_ax
        name, _, rest = run["label"].partition(" z=")   # "AVB + AC z=8 s0" on two lines
        label.text(1.0, 0.5, f"{name}\nz={rest}" if rest else name, ha="right", va="center", fontsize=7,
                   linespacing=1.1, transform=label.transAxes)
        s_ax.imshow(samples, **show)
        r_ax.imshow(recon, **show)
        for ax in (label, s_ax, r_ax):
            ax.axis("off")
        c_ax.plot(m.step, m.elbo, lw=1)
        c_ax.set_ylim(low - pad, high + pad)
        c_ax.yaxis.set_major_locator(plt.MaxNLocator(3))
        c_ax.tick_params(labelsize=6, pad=1)
        c_ax.yaxis.tick_right()
        if len(m):
            c_ax.text(0.97, 0.1, f"last {m.elbo.iloc[-1]:.1f}", fontsize=6, ha="right", transform=c_ax.transAxes)
        if i < n - 1:
            c_ax.tick_params(labelbottom=False)
        if i == 0:
            s_ax.set_title(f"decoder means at {n_samples} prior draws", fontsize=7)
            r_ax.set_title("test images / reconstructions", fontsize=7)
            c_ax.set_title("training ELBO (nats)", fontsize=7)
    if n:
        fig.axes[-1].set_xlabel("training step", fontsize=6, labelpad=1)
    save(fig, out_png, out_pdf, dpi=200)


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


# --- per run: the Figure 7 replica and latent interpolations --------------------------------------------------------
GRID = 8  # 8 x 8 images per panel, as the official ``save_images(x[:64], [8, 8], ...)``


@torch.no_grad()
def decoder_means(model: Method, z: torch.Tensor) -> np.ndarray:
    """Bernoulli means sigmoid(decoder(z)) as [N, 28, 28] (the official ``get_decoder_mean``)."""
    return torch.sigmoid(model.decoder(z)).view(-1, 28, 28).cpu().numpy()


def training_images(run: dict, n: int, seed: int, data_dir: str | Path | None = None) -> np.ndarray:
    """n training images chosen at random with ``seed`` and binarised as the run's data are (dynamically with
    ``seed``, or static MNIST's fixed binarisation): what the model was trained on."""
    splits = data.load(run["dataset"], data_dir if data_dir is not None else run.get("data_dir"))
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(splits.train), generator=g)[:n].numpy()
    return data.binarize(splits.train[idx], splits.static, g).view(-1, 28, 28).numpy()


@torch.no_grad()
def posterior_draw(model: Method, x: torch.Tensor, seed: int) -> torch.Tensor:
    """One z ~ q(z|x) per image, reproducible with ``seed`` (the global RNG is left as it was). As the official
    ``z_real``: the VAE's mean + std * eps; AVB's (and AVB + AC's) encoder at one draw of its noise, not a mean."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model.sample(x)


def interpolate(z1: torch.Tensor, z2: torch.Tensor, n_steps: int) -> torch.Tensor:
    """The official ``get_interpolations``: alpha = linspace(0, 1, n_steps), z = alpha z1 + (1 - alpha) z2 for each
    pair; [B, d] each -> [B * n_steps, d], pair-major (row b * n_steps + j: pair b at alpha_j, so j = 0 is z2)."""
    alpha = torch.linspace(0.0, 1.0, n_steps, device=z1.device).view(1, n_steps, 1)
    return (alpha * z1[:, None] + (1 - alpha) * z2[:, None]).reshape(-1, z1.shape[-1])


def interpolation_grid(model: Method, x1: torch.Tensor, x2: torch.Tensor, seed: int,
                       n_steps: int = GRID) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """Decoder means along the line from the code of x2[b] (column 0) to that of x1[b] (last column), one row per
    pair, and the codes (z1, z2): one posterior draw each, encoded in one batch as the official code does."""
    z = posterior_draw(model, torch.cat([x1, x2]), seed)
    z1, z2 = z[:len(x1)], z[len(x1):]
    return decoder_means(model, interpolate(z1, z2, n_steps)).reshape(len(x1), n_steps, 28, 28), z1, z2


def run_figures(model_path: str | Path, fig7: tuple[str | Path, str | Path], interp: tuple[str | Path, str | Path],
                seed: int = 0, data_dir: str | Path | None = None) -> None:
    """Per run, PNG + PDF each: the Figure 7 replica, 64 training images (a) beside the decoder's Bernoulli means at
    64 prior draws (b), and 8 latent interpolations between pairs of test images (test images 8-15 on the left,
    0-7 on the right, as the official ``real1.png`` / ``interp`` / ``real2.png``). White digits on black, as
    printed. Seeds: prior draws ``seed``, training images ``seed + 1``, test images (binarised) and codes ``seed + 2``.
    """
    from ..evaluate import test_images

    model, run = load_model(model_path)
    label = f"{run_label(run)}, {run['dataset']}"
    n = GRID * GRID
    samples = decoder_means(model, torch.randn(n, model.z_dim, generator=torch.Generator().manual_seed(seed)))
    show = dict(cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 4.4))
    a.imshow(tile(training_images(run, n, seed + 1, data_dir), GRID, pad_value=0.0), **show)
    a.set_title("(a) training data")
    b.imshow(tile(samples, GRID, pad_value=0.0), **show)
    b.set_title("(b) random samples (decoder means)")
    for ax in (a, b):
        ax.axis("off")
    fig.suptitle(label)
    fig.tight_layout()
    save(fig, *fig7)

    x = test_images(run, 2 * GRID, seed + 2, data_dir)
    grid, _, _ = interpolation_grid(model, x[:GRID], x[GRID:], seed + 2)
    fig, axes = plt.subplots(1, 3, figsize=(6.4, 5.2), gridspec_kw={"width_ratios": [1, GRID, 1]})
    images = x.view(-1, 28, 28).numpy()
    panels = [(images[GRID:], 1, "test\nx_8..x_15"),
              (grid.reshape(-1, 28, 28), GRID, "decoder means at (1 - alpha) z(x_8+i) + alpha z(x_i)"),
              (images[:GRID], 1, "test\nx_0..x_7")]
    for ax, (imgs, cols, title) in zip(axes, panels):
        ax.imshow(tile(imgs, cols, pad_value=0.0), **show)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{label}: latent interpolations")
    fig.tight_layout()
    save(fig, *interp)
