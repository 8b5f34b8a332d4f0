"""The eight-schools report: the summary against the exact posterior and the gold standard, its Markdown table and
the (mu, tau) figure (``avb schools report``).

``summarize`` compares each method's draws (``avb schools fit``) with the exact quadrature moments
(``avb.schools.exact_posterior``) and with the gold-standard HMC draws (``avb schools gold``) by the energy distance
(``avb.diagnostics``) and, from the KL curve (``avb.schools_kl``), the kNN KL at the last iteration.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import io
from ..diagnostics import energy_distance
from ..schools import DIM, LABELS, METHODS, PARAM_NAMES, exact_posterior

if TYPE_CHECKING:  # pandas is imported lazily, where the report needs it
    import pandas as pd

SUMMARY_COLUMNS = ["method", "label", "steps", "n_samples", "mean_abs_err_mean", "max_abs_err_mean",
                   "mean_abs_err_sd", "max_abs_err_sd", "err_mean_mu", "err_mean_tau", "err_sd_mu", "err_sd_tau",
                   "p_tau_positive", "divergence", "divergence_se", "divergence_noise_floor",
                   "divergence_noise_floor_se", "kl_hmc", "kl_hmc_se", "kl_hmc_noise_floor", "kl_hmc_noise_floor_se",
                   "kl_gaussian", "kl_gaussian_se", "elbo", "elbo_se", "elbo_is_bound", "log_evidence", "rhat_max",
                   "rank_rhat_max", "ess_min", "seconds"]


def _divergences(samples: np.ndarray, gold: np.ndarray, scale: np.ndarray, n: int, repeats: int,
                 rng: np.random.Generator) -> list[float]:
    out = []
    for _ in range(repeats):
        a = samples[rng.choice(len(samples), n, replace=False)] / scale
        b = gold[rng.choice(len(gold), n, replace=False)] / scale
        out.append(energy_distance(a, b))
    return out


def summarize(gold_npz: str | Path, gold_json: str | Path, fits: list[str | Path], settings: dict[str, Any],
              kl_curve: str | Path | None = None) -> tuple["pd.DataFrame", "pd.DataFrame", dict[str, Any]]:
    """The summary table (one row per method, HMC first), the per-parameter table and the exact reference.

    ``fits``: run folders holding samples.npz and fit.json. Errors are against the exact (quadrature) posterior
    moments. Divergence: energy distance between ``n`` draws of the method and ``n`` gold draws, both standardised by
    the exact posterior sds, mean and standard error over ``repeats`` fresh subsets; the noise floor is the same
    statistic between two disjoint sets of ``n`` gold draws (for the HMC row, the divergence itself is that floor).
    ``kl_curve`` (the CSV of ``avb.schools_kl``): its last iteration per method gives ``kl_hmc`` (kNN KL to the HMC
    draws), ``kl_gaussian`` (ADVI's exact KL) and the KL noise floor, which is also the HMC row's ``kl_hmc``; without
    it these columns are NaN.
    """
    import pandas as pd

    from ..schools_kl import final

    met = settings["metrics"]
    ref = exact_posterior(met["quad_grid"])
    gold_draws = np.load(gold_npz, allow_pickle=False)["draws"]
    gold = gold_draws.reshape(-1, DIM)
    gdiag = json.loads(Path(gold_json).read_text())
    n = min(met["divergence_samples"], len(gold) // 2)
    rng = np.random.default_rng(settings["seed"])
    floor = []
    for _ in range(met["divergence_repeats"]):
        idx = rng.permutation(len(gold))[: 2 * n]
        floor.append(energy_distance(gold[idx[:n]] / ref["sd"], gold[idx[n:]] / ref["sd"]))
    floor_mean, floor_se = float(np.mean(floor)), float(np.std(floor, ddof=1) / np.sqrt(len(floor))) \
        if len(floor) > 1 else math.nan

    entries = [("hmc", gold, {"steps": gdiag["draws_per_chain"] * gdiag["thin"] + gdiag["warmup"],
                              "seconds": gdiag["seconds"]})]
    for d in fits:
        info = json.loads((Path(d) / "fit.json").read_text())
        entries.append((info["method"], np.load(Path(d) / "samples.npz", allow_pickle=False)["samples"], info))
    entries.sort(key=lambda e: ("hmc", *METHODS).index(e[0]))
    curve = pd.read_csv(kl_curve) if kl_curve is not None else None
    last = final(curve) if curve is not None else {}
    nan = math.nan
    kl_floor = (float(curve.kl_noise_floor.iloc[0]), float(curve.kl_noise_floor_se.iloc[0])) \
        if curve is not None and len(curve) else (nan, nan)

    rows, per_param = [], []
    for method, s, info in entries:
        mean, sd = s.mean(0), s.std(0)
        em, es = np.abs(mean - ref["mean"]), np.abs(sd - ref["sd"])
        if method == "hmc":
            div, div_se = floor_mean, floor_se
        else:
            dv = _divergences(s, gold, ref["sd"], min(n, len(s)), met["divergence_repeats"], rng)
            div, div_se = float(np.mean(dv)), float(np.std(dv, ddof=1) / np.sqrt(len(dv))) if len(dv) > 1 else math.nan
        rows.append({
            "method": method, "label": LABELS[method], "steps": info["steps"], "n_samples": len(s),
            "mean_abs_err_mean": em.mean(), "max_abs_err_mean": em.max(), "mean_abs_err_sd": es.mean(),
            "max_abs_err_sd": es.max(), "err_mean_mu": mean[0] - ref["mean"][0],
            "err_mean_tau": mean[1] - ref["mean"][1],
            "err_sd_mu": sd[0] - ref["sd"][0], "err_sd_tau": sd[1] - ref["sd"][1],
            "p_tau_positive": float((s[:, 1] > 0).mean()), "divergence": div, "divergence_se": div_se,
            "divergence_noise_floor": floor_mean, "divergence_noise_floor_se": floor_se,
            "kl_hmc": kl_floor[0] if method == "hmc" else last.get(method, {}).get("kl", nan),
            "kl_hmc_se": kl_floor[1] if method == "hmc" else last.get(method, {}).get("kl_se", nan),
            "kl_hmc_noise_floor": kl_floor[0], "kl_hmc_noise_floor_se": kl_floor[1],
            "kl_gaussian": last.get(method, {}).get("kl_gaussian", nan),
            "kl_gaussian_se": last.get(method, {}).get("kl_gaussian_se", nan),
            "elbo": info.get("elbo", math.nan), "elbo_se": info.get("elbo_se", math.nan),
            "elbo_is_bound": info.get("elbo_is_bound", math.nan), "log_evidence": ref["log_evidence"],
            "rhat_max": gdiag["rhat_max"] if method == "hmc" else math.nan,
            "rank_rhat_max": gdiag["rank_rhat_max"] if method == "hmc" else math.nan,
            "ess_min": gdiag["ess_min"] if method == "hmc" else math.nan,
            "seconds": info.get("train_seconds", info.get("seconds", math.nan)),
        })
        for k, name in enumerate(PARAM_NAMES):
            per_param.append({"method": method, "parameter": name, "mean": mean[k], "sd": sd[k],
                              "exact_mean": ref["mean"][k], "exact_sd": ref["sd"][k],
                              "err_mean": mean[k] - ref["mean"][k], "err_sd": sd[k] - ref["sd"][k],
                              "gold_mcse_mean": gdiag["mcse_mean"][name] if method == "hmc" else math.nan,
                              "gold_rhat": gdiag["split_rhat"][name] if method == "hmc" else math.nan,
                              "gold_ess": gdiag["ess"][name] if method == "hmc" else math.nan})
    df = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    kl_info = {"n": int(curve.n.iloc[0]), "k": int(curve.k.iloc[0]), "repeats": int(curve.repeats.iloc[0])} \
        if curve is not None and len(curve) else None
    return df, pd.DataFrame(per_param), {**ref, "divergence_n": n, "gold": gdiag, "entries": entries, "kl": kl_info}


def markdown(df: "pd.DataFrame", ref: dict[str, Any], settings: dict[str, Any]) -> str:
    g = ref["gold"]
    lines = ["# Eight schools: posterior approximations against the gold standard", "",
             f"Reference moments: exact quadrature over (mu, tau) (${ref['n_grid']}^2$ grid); log p(y) = "
             f"{ref['log_evidence']:.4f}. Gold standard: HMC, {g['chains']} chains x {g['draws_per_chain']} draws "
             f"(thin {g['thin']}) after {g['warmup']} warm-up transitions, L = {g['leapfrog_steps']}; max split-R-hat "
             f"{g['rhat_max']:.4f} (classic, not rank-normalised; rank-normalised folded: {g['rank_rhat_max']:.4f}), "
             f"min ESS {g['ess_min']:.0f}.", "",
             "Steps: HMC transitions per chain (warm-up included); ADVI / AVB training iterations.", "",
             "| method | steps | mean abs err of means | mean abs err of sds | err sd(tau) | P(tau > 0) | "
             "energy distance (noise floor) | KL to HMC, kNN (noise floor) | KL, exact (Gaussian q) | ELBO | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in df.itertuples():
        elbo = "" if pd_isnan(r.elbo) else f"{r.elbo:.3f} ± {r.elbo_se:.3f}" + ("" if r.elbo_is_bound else " (≈)")
        lines.append(f"| {r.label} | {r.steps} | {r.mean_abs_err_mean:.4f} (max {r.max_abs_err_mean:.4f}) | "
                     f"{r.mean_abs_err_sd:.4f} (max {r.max_abs_err_sd:.4f}) | {r.err_sd_tau:+.4f} | "
                     f"{r.p_tau_positive:.3f} | {r.divergence:.4f} ± {r.divergence_se:.4f} "
                     f"({r.divergence_noise_floor:.4f}) | {_pm(r.kl_hmc, r.kl_hmc_se)} "
                     f"({_pm(r.kl_hmc_noise_floor)}) | {_pm(r.kl_gaussian, r.kl_gaussian_se)} | {elbo} | "
                     f"{r.seconds:.1f} |")
    lines += ["", f"Errors: |method - exact| over the 10 parameters (mu, tau, eta_1..8). Energy distance: V-statistic "
              f"between {ref['divergence_n']} draws of the method and {ref['divergence_n']} HMC draws, coordinates "
              f"divided by the exact posterior sds, ± standard error over {settings['metrics']['divergence_repeats']} "
              f"random subsets; noise floor: the same statistic between two disjoint sets of HMC draws (the HMC row "
              f"shows the floor itself). ELBO: ADVI an unbiased estimate (a lower bound on log p(y)); AVB (≈) "
              f"uses the adversary's KL estimate and is not a bound. The posterior is symmetric under (tau, eta) -> "
              f"(-tau, -eta), so the exact P(tau > 0) is 0.5 and the exact mean of tau and eta is 0."]
    kl = ref.get("kl")
    if kl is not None:
        lines += ["", f"KL to HMC (the paper's Figure 3 quantity, at the last iteration): kNN estimate of KL(method "
                  f"|| HMC posterior) (Wang, Kulkarni & Verdú 2009; k = {kl['k']}, ITE's default) between n = "
                  f"{kl['n']} draws of the method and n HMC draws, coordinates divided by the exact posterior sds, "
                  f"mean ± standard error over {kl['repeats']} disjoint sets; noise floor: the same between two "
                  "disjoint sets of HMC draws (true value 0; the HMC row shows it). In 10 dimensions this estimator is "
                  "biased at such n, by up to several tenths of a nat and of either sign (tests/test_knn.py). KL, exact: "
                  "for ADVI, whose q is Gaussian, KL(q || p) = -H(q) - E_q log p(z|y) with the exact log p(z|y) "
                  "(Gaussian fitted to the same draws; exact up to Monte-Carlo error; it equals log p(y) - ELBO up to "
                  "that error, a check), a measure of the kNN estimator's bias here. Curve over iterations: "
                  "kl_curve.csv and kl_iterations.png."]
    return "\n".join(lines) + "\n"


def _pm(v: float, se: float = math.nan) -> str:
    if pd_isnan(v):
        return ""
    return f"{v:.3f}" if pd_isnan(se) else f"{v:.3f} ± {se:.3f}"


def pd_isnan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def figure(entries: list[tuple[str, np.ndarray, dict]], ref: dict[str, Any], out_prefix: str | Path,
           n_points: int = 2000, seed: int = 0) -> list[Path]:
    """(mu, tau) per method as in the notebook: a scatter row and a KDE row (filled), each over the gold standard's
    KDE contours, bbox = gold mean +- 4 sd; and the tau marginals against the exact one. PNG and PDF."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    sns.set_theme(style="white", context="paper")
    rng = np.random.default_rng(seed)
    gold = entries[0][1]
    m, s = gold[:, :2].mean(0), gold[:, :2].std(0)
    box = (m[0] - 4 * s[0], m[0] + 4 * s[0], m[1] - 4 * s[1], m[1] + 4 * s[1])
    sub = lambda a: a[rng.choice(len(a), min(n_points, len(a)), replace=False)]  # noqa: E731
    gsub = sub(gold)
    k = len(entries)
    fig, axes = plt.subplots(2, k + 1, figsize=(2.9 * (k + 1), 5.6), squeeze=False)
    for col, (method, smp, _) in enumerate(entries):
        pts = sub(smp)
        for row in range(2):
            ax = axes[row, col]
            if row == 0:
                ax.scatter(pts[:, 0], pts[:, 1], s=3, alpha=0.4, edgecolor="none", color="C0")
            else:
                sns.kdeplot(x=pts[:, 0], y=pts[:, 1], fill=True, cmap="Blues", levels=8, thresh=0.05, ax=ax,
                            clip=((box[0], box[1]), (box[2], box[3])))
            if method != "hmc":
                sns.kdeplot(x=gsub[:, 0], y=gsub[:, 1], color="0.3", levels=5, linewidths=0.6, ax=ax)
            ax.set(xlim=box[:2], ylim=box[2:], xlabel=r"$\mu$", ylabel=r"$\tau$" if col == 0 else "")
            if row == 0:
                ax.set_title(LABELS[method])
    ax = axes[0, k]
    frames = [pd.DataFrame({"tau": sub(smp)[:, 1], "method": LABELS[mth]}) for mth, smp, _ in entries]
    sns.kdeplot(data=pd.concat(frames, ignore_index=True), x="tau", hue="method", common_norm=False, ax=ax,
                linewidth=1)
    ax.plot(ref["grid"], ref["tau_density"], color="k", linestyle="--", linewidth=1, label="exact")
    ax.set(xlim=box[2:], title=r"marginal of $\tau$ (dashed: exact)")
    sns.move_legend(ax, "upper right", fontsize=6, title=None, frameon=False)
    ax = axes[1, k]
    frames = [pd.DataFrame({"mu": sub(smp)[:, 0], "method": LABELS[mth]}) for mth, smp, _ in entries]
    sns.kdeplot(data=pd.concat(frames, ignore_index=True), x="mu", hue="method", common_norm=False, ax=ax,
                linewidth=1, legend=False)
    ax.plot(ref["grid"], ref["mu_density"], color="k", linestyle="--", linewidth=1)
    ax.set(xlim=box[:2], title=r"marginal of $\mu$ (dashed: exact)")
    fig.suptitle("Eight schools: (mu, tau) per method; grey contours: HMC gold standard")
    fig.tight_layout()
    out_prefix = Path(out_prefix)
    paths = []
    for ext in ("png", "pdf"):
        path = out_prefix.with_suffix(f".{ext}")
        with io.atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=130)
        paths.append(path)
    plt.close(fig)
    return paths


def report(gold_npz: str | Path, gold_json: str | Path, fits: list[str | Path], settings: dict[str, Any],
           out_csv: str | Path, out_md: str | Path, out_fig: str | Path, out_params: str | Path | None = None,
           kl_curve: str | Path | None = None) -> str:
    """summary.csv, summary.md, the per-parameter CSV and the (mu, tau) figure (PNG + PDF, ``out_fig`` any suffix);
    with ``kl_curve`` (``avb schools kl``), the final KL to the HMC posterior joins the summary."""
    df, per_param, ref = summarize(gold_npz, gold_json, fits, settings, kl_curve)
    io.write_csv(df, out_csv)
    if out_params is not None:
        io.write_csv(per_param, out_params)
    md = markdown(df, ref, settings)
    io.write_text(md, out_md)
    figure(ref["entries"], ref, out_fig, seed=settings["seed"])
    return md
