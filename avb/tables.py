"""Summary tables: one tidy CSV row per run and a Markdown rendering of it."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from . import io

COLUMNS = ["method", "dataset", "binarization", "arch", "z_dim", "seed", "train_steps", "log_px_ais", "log_px_ais_se",
           "elbo", "elbo_se", "gap", "elbo_is_bound", "iwae", "iwae_se", "iwae_samples", "iwae_note", "n_test",
           "ais_steps", "ais_chains", "ais_schedule", "ais_adapt", "ais_init", "mean_ess", "bdmc_images", "bdmc_lower", "bdmc_upper", "bdmc_width", "bdmc_width_se",
           "eval_seconds"]
METHOD_ORDER = {"vae": 0, "avb": 1, "avb_ac": 2}
LABELS = {"vae": "VAE", "avb": "AVB", "avb_ac": "AVB + AC"}


def collect(eval_jsons: list[str | Path]) -> pd.DataFrame:
    rows = [json.loads(Path(p).read_text()) for p in eval_jsons]
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.sort_values(["dataset", "z_dim", "method", "seed"], key=lambda s: s.map(METHOD_ORDER)
                          if s.name == "method" else s).reset_index(drop=True)


def markdown(df: pd.DataFrame) -> str:
    """Table 2-style Markdown: log p(x) by AIS, ELBO and gap per run, with estimator and binarisation stated."""
    lines = ["| model | dataset (binarisation) | seed | log p(x), AIS | ELBO | IWAE bound | gap | AIS settings |",
             "|---|---|---|---|---|---|---|---|"]
    for r in df.itertuples():
        elbo = f"{r.elbo:.2f} ± {r.elbo_se:.2f}" + ("" if r.elbo_is_bound else " (≈, adversary KL; not a bound)")
        if pd.notna(r.iwae):
            iwae = f"{r.iwae:.2f} ± {r.iwae_se:.2f} (k = {int(r.iwae_samples)})"
        else:
            iwae = f"n/a ({r.iwae_note})" if isinstance(r.iwae_note, str) and r.iwae_note else "n/a"
        lines.append(
            f"| {LABELS[r.method]} ({r.z_dim}-dim, {r.arch}, {r.train_steps} steps) | {r.dataset} ({r.binarization}) "
            f"| {r.seed} | {r.log_px_ais:.2f} ± {r.log_px_ais_se:.2f} | {elbo} | {iwae} | {r.gap:.2f} "
            f"| {r.ais_steps} steps × {r.ais_chains} chains, {r.ais_schedule}, start: {r.ais_init}, "
            f"{r.n_test} test images |")
    lines.append("")
    lines.append("± is the standard error over test images. Gap = log p(x) − ELBO; for AVB both the ELBO and the gap "
                 "use the adversary's KL estimate. IWAE bound: log (1/k) Σ p(x, z_j) / q(z_j|x) with k samples "
                 "from the encoder's Gaussian (VAE) or AVB + AC's Gaussian r(z|x); a stochastic lower bound on "
                 "log p(x). AVB's implicit encoder has no density, so it has no IWAE bound.")
    sim = df[df.bdmc_images.fillna(0) > 0]
    if len(sim):
        lines += ["", "AIS accuracy check: BDMC sandwich on images simulated from each model, with the same AIS "
                  "settings (forward AIS = stochastic lower bound, reverse AIS from the exact latent = stochastic "
                  "upper bound; valid on simulated data only).", "",
                  "| model | seed | simulated images | lower | upper | width |", "|---|---|---|---|---|---|"]
        for r in sim.itertuples():
            lines.append(f"| {LABELS[r.method]} ({r.z_dim}-dim) | {r.seed} | {int(r.bdmc_images)} | "
                         f"{r.bdmc_lower:.2f} | {r.bdmc_upper:.2f} | {r.bdmc_width:.2f} ± {r.bdmc_width_se:.2f} |")
    return "\n".join(lines) + "\n"


def write(eval_jsons: list[str | Path], out_csv: str | Path, out_md: str | Path) -> pd.DataFrame:
    df = collect(eval_jsons)
    io.write_csv(df, out_csv)
    io.write_text(markdown(df), out_md)
    return df
