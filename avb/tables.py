"""Summary tables: one tidy CSV row per run, its Markdown rendering, and the Table 2 replica (mean and 95 % CI
over seeds, beside the published values) in Markdown and LaTeX."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from . import io, latex

COLUMNS = ["method", "dataset", "binarization", "arch", "z_dim", "seed", "train_steps", "log_px_ais", "log_px_ais_se",
           "elbo", "elbo_se", "gap", "elbo_is_bound", "iwae", "iwae_se", "iwae_samples", "iwae_note", "n_test",
           "ais_steps", "ais_chains", "ais_schedule", "ais_adapt", "ais_init", "mean_ess", "bdmc_images",
           "bdmc_lower", "bdmc_upper", "bdmc_width", "bdmc_width_se", "eval_seconds"]
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


# Table 2 of the paper as recalled in ../shared/docs/avb-reference.md section 1.3: NOT verified against the PDF.
# Keys (method, z_dim); values are strings as printed there ("≈": AVB's ELBO uses the adversary's KL estimate).
PUBLISHED_TABLE2 = {
    ("vae", 8): {"log_px": "−98.1 ± 0.5", "elbo": "−100.8 ± 0.4", "gap": "2.7 ± 0.5"},
    ("vae", 32): {"log_px": "−87.2 ± 0.3", "elbo": "−89.4 ± 0.3", "gap": "2.2 ± 0.2"},
    ("avb", 8): {"log_px": "≈ −83.6 ± 0.4", "elbo": "?", "gap": "?"},
    ("avb_ac", 8): {"log_px": "≈ −96.3 ± 0.4", "elbo": "?", "gap": "?"},
    ("avb_ac", 32): {"log_px": "≈ −79.5 ± 0.3", "elbo": "≈ −80.2 ± 0.4", "gap": "≈ 0.7 ± 0.5"},
}


def published_log_px(method: str, z_dim: int) -> float | None:
    """The published log p(x) of a Table 2 row as a number (as reported, unverified), or None."""
    pub = PUBLISHED_TABLE2.get((method, z_dim))
    m = re.search(r"−?\d+\.\d+", pub["log_px"]) if pub else None
    return float(m.group().replace("−", "-")) if m else None


PUBLISHED_NOTE = ("published: AVB paper Table 2 (conv nets, 2.5M steps, dynamic binarisation, AIS 1000 steps × 5 "
                  "chains on 2048 test images), as reported, unverified against the PDF")
GROUP = ["method", "arch", "dataset", "binarization", "z_dim", "train_steps", "n_test", "ais_steps", "ais_chains",
         "ais_schedule", "ais_init", "elbo_is_bound"]


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95 % Student-t confidence half-width over seeds of log p(x), ELBO and gap, per configuration."""
    from scipy import stats

    rows = []
    for key, g in df.groupby(GROUP, sort=False, dropna=False):
        row = dict(zip(GROUP, key), n_seeds=len(g), seeds=" ".join(str(s) for s in sorted(g.seed)))
        for col in ("log_px_ais", "elbo", "gap", "iwae"):
            vals = g[col].astype(float)
            row[col] = vals.mean()
            n = vals.notna().sum()
            row[f"{col}_ci95"] = (stats.t.ppf(0.975, n - 1) * vals.std(ddof=1) / n ** 0.5) if n > 1 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def nats(x: float) -> str:
    """A value in nats with two decimals and a typographic minus."""
    return f"{x:.2f}".replace("-", "−")


def _pm(mean: float, half: float, approx: bool = False) -> str:
    if pd.isna(mean):
        return "n/a"
    return ("≈ " if approx else "") + (nats(mean) if pd.isna(half) else f"{nats(mean)} ± {nats(half)}")


def table2_rows(agg: pd.DataFrame) -> list[dict[str, str]]:
    """One row per configuration with our numbers and, where the paper has the row, the published ones."""
    out = []
    for r in agg.sort_values(["dataset", "method", "z_dim"], key=lambda s: s.map(METHOD_ORDER)
                             if s.name == "method" else s).itertuples():
        pub = PUBLISHED_TABLE2.get((r.method, r.z_dim)) if r.dataset == "mnist" else None
        approx = not r.elbo_is_bound
        out.append({
            "model": f"{LABELS[r.method]} ({r.z_dim}-dim)",
            "setup": f"{r.arch}, {r.train_steps} steps, {r.dataset} ({r.binarization} binarisation)",
            "seeds": f"{r.n_seeds}",
            "log_px": _pm(r.log_px_ais, r.log_px_ais_ci95),
            "elbo": _pm(r.elbo, r.elbo_ci95, approx),
            "gap": _pm(r.gap, r.gap_ci95, approx),
            "estimator": f"AIS {r.ais_steps} steps × {r.ais_chains} chains ({r.ais_schedule}, start: {r.ais_init}), "
                         f"{r.n_test} test images",
            "published": (f"{pub['log_px']} / {pub['elbo']} / {pub['gap']}" if pub else "not in the paper"),
        })
    return out


def table2_markdown(agg: pd.DataFrame) -> str:
    head = ["model", "setup", "seeds", "log p(x) (AIS)", "ELBO", "gap", "estimator",
            "published log p(x) / ELBO / gap (unverified)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table2_rows(agg):
        lines.append("| " + " | ".join(r[k] for k in ("model", "setup", "seeds", "log_px", "elbo", "gap",
                                                          "estimator", "published")) + " |")
    lines += ["", "Ours: mean over seeds ± 95 % Student-t half-width (no ± with one seed). ≈: AVB's ELBO and gap use "
              "the adversary's KL estimate and are not bounds. " + PUBLISHED_NOTE + "."]
    return "\n".join(lines) + "\n"


def table2_latex(agg: pd.DataFrame) -> str:
    """The Table 2 replica as a booktabs tabular (the same rows and columns as the Markdown)."""
    return latex.table(table2_markdown(agg).split("\n\n", 1)[0].splitlines())


def write_table2(df: pd.DataFrame, out_csv: str | Path, out_md: str | Path, out_tex: str | Path) -> pd.DataFrame:
    agg = aggregate(df)
    io.write_csv(agg, out_csv)
    io.write_text(table2_markdown(agg), out_md)
    io.write_text(table2_latex(agg), out_tex)
    return agg
