"""Figure 3 of the paper for eight schools: KL(method || HMC posterior) against training iterations.

* Snapshots (``Snapshots``, used by ``avb.schools_fit.fit_method`` as the ``on_step`` callback of ``avb.train.fit``):
  at iteration 0, every ``schools.kl_every`` iterations and at the last, ``schools.kl_samples`` posterior draws of
  the model, with a seed of their own inside ``torch.random.fork_rng``, so training's random streams, results and
  bit-identical resumption are untouched. They go to ``snapshots.npz`` in the run folder, rewritten atomically after
  each snapshot; a resumed fit keeps the ones up to its checkpoint and retakes later ones. A copy,
  ``snapshots.kept.npz``, is no output of the pipeline: Snakemake deletes a job's outputs before it reruns it, so a
  fit whose ``steps`` were raised (it continues from its checkpoint) finds its earlier snapshots there.
* The curve (``curve``): per snapshot the kNN estimate of KL(q || p) (``avb.knn``, Wang, Kulkarni & Verdú 2009;
  k = ``metrics.kl_k``, ITE's default 3) against gold-standard HMC draws: the draws are split into
  ``metrics.kl_repeats`` disjoint sets of n = kl_samples / kl_repeats, each against n fresh gold draws; mean and
  standard error over the sets. Coordinates are divided by the exact posterior standard deviations (KL is invariant
  under this; the estimator's bias is smaller for round samples). The noise floor is the same estimate between two
  disjoint sets of n gold draws (true value 0). For ADVI, whose q is Gaussian, ``kl_gaussian`` is KL(q || p) without
  the kNN estimator: -H(q_hat) - E_q log p(z | y), with q_hat the Gaussian fitted to the snapshot (its entropy in
  closed form) and the exact log p(z | y) = log p(y, z) - log p(y) (log p(y) by quadrature): exact up to Monte-Carlo
  error (and a plug-in bias of order d^2 / N). Beside the kNN estimate it measures that estimator's bias here.
* The figure (``figure``): the curves on the paper's axes (log-scale KL against iterations, its method names), the
  paper's levels as read off its plot faintly behind (approximate), the HMC noise floor, and ADVI's ``kl_gaussian``.

What the paper does not say: its estimator, n and direction of the KL. The direction here is KL(method || HMC).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from . import io, knn
from .report import published

if TYPE_CHECKING:
    import pandas as pd

    from .objectives import Method

SNAPSHOT_FILE = "snapshots.npz"
KEPT_FILE = "snapshots.kept.npz"  # the same draws, where Snakemake's rerun of the fit does not delete them
CURVE_COLUMNS = ["method", "label", "iteration", "kl", "kl_se", "kl_gaussian", "kl_gaussian_se", "kl_noise_floor",
                 "kl_noise_floor_se", "n", "k", "repeats"]
COLOURS = {"advi_meanfield": "C0", "advi_fullrank": "C1", "avb": "C2", "avb_ac": "C3"}  # the paper's figure


def snapshot_steps(steps: int, every: int) -> list[int]:
    """The iterations at which a run of ``steps`` iterations is snapshotted: 0, every, 2 every, ... and the last."""
    return sorted({0, steps, *range(every, steps + 1, every)})


class Snapshots:
    """Posterior draws of ``model`` at the iterations of ``snapshot_steps``, kept in ``path`` (see the module doc).

    Call it with the number of iterations done (``avb.train.fit``'s ``on_step``); it draws only at due iterations.
    """

    def __init__(self, model: "Method", run: dict[str, Any], path: str | Path):
        from .checkpoint import config_change

        self.model, self.run, self.path = model, run, Path(path)
        snap = run["snapshots"]
        self.n = snap["samples"]
        self.due = set(snapshot_steps(run["train"]["steps"], snap["every"]))
        self.seed = 1_000_003 * (run["seed"] + 1)
        self.samples: dict[int, np.ndarray] = {}
        self.kept = self.path.with_name(KEPT_FILE)
        found = next((p for p in (self.path, self.kept) if p.exists()), None)
        if found is not None:
            try:
                with np.load(found, allow_pickle=False) as d:
                    old_run, steps, samples = json.loads(str(d["run"])), d["steps"], d["samples"]
            except (OSError, ValueError, KeyError) as err:
                print(f"[avb] {found} unreadable ({type(err).__name__}); snapshots are retaken", flush=True)
            else:
                if config_change(old_run, run) is None and old_run.get("snapshots") == snap:
                    self.samples = {int(s): x for s, x in zip(steps, samples) if int(s) in self.due}

    def __call__(self, step: int) -> None:
        if step in self.due:
            self.take(step)

    def take(self, step: int) -> None:
        """Draw the snapshot of the model as it is now, as iteration ``step``, and rewrite the file."""
        from .schools import draw

        dev = next(self.model.parameters()).device
        was_training = self.model.training
        cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            self.samples[step] = draw(self.model, self.n, self.seed + step).astype(np.float32)
        self.model.train(was_training)
        self.write()

    def missing(self) -> list[int]:
        return sorted(self.due - self.samples.keys())

    def write(self) -> None:
        steps = sorted(self.samples)
        for path in (self.kept, self.path):
            with io.atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.savez(f, steps=np.asarray(steps, dtype=np.int64),
                         samples=np.stack([self.samples[s] for s in steps]),
                         run=np.asarray(json.dumps(self.run, sort_keys=True)))


def read_snapshots(path: str | Path) -> tuple[str, np.ndarray, np.ndarray]:
    """(method, iterations [S], draws [S, n, d] as float64) of a ``snapshots.npz``."""
    try:
        with np.load(path, allow_pickle=False) as d:
            run = json.loads(str(d["run"]))
            return run["method"], d["steps"].astype(int), d["samples"].astype(np.float64)
    except (OSError, ValueError, KeyError) as err:
        raise io.CorruptFile(f"{path}: not a snapshots file of `avb schools fit` ({type(err).__name__}: {err})") \
            from None


def schools_log_posterior(log_evidence: float) -> Callable[[np.ndarray], np.ndarray]:
    """z [N, 10] -> log p(z | y) of eight schools = log p(y, z) - log p(y)."""
    from .schools import log_joint

    return lambda z: log_joint(torch.as_tensor(z, dtype=torch.float64)).numpy() - log_evidence


def gaussian_kl_to_posterior(z: np.ndarray, log_post: Callable[[np.ndarray], np.ndarray]) -> tuple[float, float]:
    """KL(q_hat || p) for the Gaussian q_hat fitted to draws ``z`` [N, d] and the normalised log density
    ``log_post`` of p, with its Monte-Carlo standard error: -H(q_hat) - mean log p(z) over the draws."""
    log_post = log_post(z)
    h = knn.gaussian_entropy(np.cov(z, rowvar=False, bias=True))
    return float(-h - log_post.mean()), float(log_post.std(ddof=1) / math.sqrt(len(z)))


def curve(gold_npz: str | Path, snapshot_files: list[str | Path], settings: dict[str, Any]) -> "pd.DataFrame":
    """The tidy KL curve (``CURVE_COLUMNS``): one row per method and snapshot iteration, methods in the order of
    ``avb.schools.METHODS``. ``settings``: the validated ``schools`` section (seed, metrics)."""
    import pandas as pd

    from .schools import LABELS, METHODS, exact_posterior

    met = settings["metrics"]
    k, repeats = met["kl_k"], met["kl_repeats"]
    ref = exact_posterior(met["quad_grid"])
    with np.load(gold_npz, allow_pickle=False) as d:
        gold = d["draws"].reshape(-1, d["draws"].shape[-1]).astype(np.float64)
    log_post = schools_log_posterior(ref["log_evidence"])
    runs = sorted((read_snapshots(p) for p in snapshot_files), key=lambda r: METHODS.index(r[0]))
    if not runs:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    n = min(len(s[2][0]) for s in runs) // repeats
    floor, floor_se = knn.kl_noise_floor(gold, n, repeats, np.random.default_rng([settings["seed"], 0]), k, ref["sd"])
    rows = []
    for method, steps, draws in runs:
        for step, z in zip(steps, draws):
            rng = np.random.default_rng([settings["seed"], 1 + METHODS.index(method), int(step)])
            kl, se, n_used = knn.kl_repeated(z, gold, repeats, rng, k, ref["sd"])
            kg, kg_se = gaussian_kl_to_posterior(z, log_post) if method.startswith("advi") \
                else (math.nan, math.nan)
            rows.append({"method": method, "label": LABELS[method], "iteration": int(step), "kl": kl, "kl_se": se,
                         "kl_gaussian": kg, "kl_gaussian_se": kg_se, "kl_noise_floor": floor,
                         "kl_noise_floor_se": floor_se, "n": n_used, "k": k, "repeats": repeats})
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def final(df: "pd.DataFrame") -> dict[str, dict[str, float]]:
    """Per method, the curve's row at its last iteration (``kl``, ``kl_se``, ``kl_gaussian``, ...)."""
    out = {}
    for method, g in df.groupby("method", sort=False):
        out[method] = g.sort_values("iteration").iloc[-1].to_dict()
    return out


def figure(df: "pd.DataFrame", out_png: str | Path, out_pdf: str | Path) -> None:
    """The curves on the paper's axes (see the module doc); PNG and PDF.

    The paper's curves as read off its plot are drawn faintly: a band (AVB, AVB (AC): the range they wander in after
    10,000 iterations) or a dashed level (VB), and a star where a curve ends, if this run reaches 50,000 iterations.
    The noise level is the HMC-vs-HMC estimate + 2 standard errors (its mean is about 0 and cannot be drawn on a log
    axis). kNN values below the axis are drawn at its bottom as triangles.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    last_iter = float(df.iteration.max()) if len(df) else float(published.FIGURE3_ITERATIONS)
    noise = float(max(df.kl_noise_floor.iloc[0], 0.0) + 2 * df.kl_noise_floor_se.iloc[0]) if len(df) else math.nan
    kls = [v for v in df.kl if np.isfinite(v) and v > 0]
    lows = [m["low"] for m in published.FIGURE3.values()]
    bottom = 0.5 * min([*kls, *lows, *([noise] if np.isfinite(noise) and noise > 0 else [])])
    top = 2.0 * max([*kls, *[m["high"] for m in published.FIGURE3.values()]])
    handles = []
    for method, g in df.groupby("method", sort=False):
        g = g.sort_values("iteration")
        c, label = COLOURS.get(method, "k"), published.FIGURE3_LABELS.get(method, method)
        pub = published.FIGURE3.get(method)
        if pub is not None:
            if pub["high"] > pub["low"]:
                ax.axhspan(pub["low"], pub["high"], color=c, alpha=0.08, lw=0)
            else:
                ax.axhline(pub["low"], color=c, alpha=0.35, lw=1.0, ls=(0, (6, 3)))
            if np.isfinite(pub["end"]) and last_iter >= published.FIGURE3_ITERATIONS:
                ax.plot([published.FIGURE3_ITERATIONS], [pub["end"]], marker="*", ms=9, color=c, alpha=0.4, ls="none")
        y = g.kl.to_numpy()
        below = ~(y > bottom)
        ax.fill_between(g.iteration, np.clip(y - g.kl_se, bottom, None), np.clip(y + g.kl_se, bottom, None), color=c,
                        alpha=0.2, lw=0)
        ax.plot(g.iteration, np.where(below, bottom, y), color=c, lw=1.5, marker="o", ms=3)
        if below.any():
            ax.plot(g.iteration[below], np.full(int(below.sum()), bottom), color=c, marker="v", ms=6, ls="none",
                    clip_on=False)
        if g.kl_gaussian.notna().any():
            ax.plot(g.iteration, g.kl_gaussian, color=c, lw=1.0, ls=":")
        handles.append(Line2D([], [], color=c, lw=1.5, marker="o", ms=3, label=label))
    if np.isfinite(noise) and noise > 0:
        ax.axhline(noise, color="0.4", lw=0.8, ls="-.")
    handles += [Line2D([], [], color="0.3", lw=1.0, ls=":", label="VB: exact KL of its Gaussian q"),
                Line2D([], [], color="0.4", lw=0.8, ls="-.", label="noise: HMC vs HMC + 2 SE"),
                Patch(color="0.5", alpha=0.3, label="paper, read off its plot (approx.)")]
    ax.set_yscale("log")
    ax.set_ylim(bottom, top)
    ax.set_xlim(-0.02 * max(last_iter, 1.0), 1.03 * max(last_iter, 1.0))
    ax.set_xlabel("Iterations")
    ax.set_ylabel("KL")
    n, k = (int(df.n.iloc[0]), int(df.k.iloc[0])) if len(df) else (0, knn.DEFAULT_K)
    ax.set_title(f"KL(method ‖ HMC posterior): kNN estimate (k = {k}, n = {n}) ± SE", fontsize=9)
    ax.legend(handles=handles, fontsize=7, loc="upper right", frameon=False)
    fig.tight_layout()
    with io.atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
    with io.atomic_path(out_pdf) as tmp:
        fig.savefig(tmp, format="pdf")
    plt.close(fig)


def write(gold_npz: str | Path, snapshot_files: list[str | Path], settings: dict[str, Any], out_csv: str | Path,
          out_png: str | Path, out_pdf: str | Path) -> "pd.DataFrame":
    """``avb schools kl``: the curve CSV and its figure."""
    df = curve(gold_npz, snapshot_files, settings)
    io.require_finite({"kl": df.kl, "kl_se": df.kl_se}, f"KL curve {out_csv}")
    io.write_csv(df, out_csv)
    figure(df, out_png, out_pdf)
    return df
