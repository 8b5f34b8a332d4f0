"""Summary tables: one tidy CSV row per run, its Markdown rendering, and the Table 2 replica (mean and 95 % CI
over seeds, beside the paper's printed columns from :mod:`avb.report.published`) in Markdown and LaTeX."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from .. import io
from ..methods import LABELS
from . import latex, published

COLUMNS = ["method", "dataset", "binarization", "arch", "z_dim", "seed", "train_steps", "log_px_ais", "log_px_ais_se",
           "elbo", "elbo_se", "gap", "elbo_is_bound", "iwae", "iwae_se", "iwae_samples", "iwae_note", "n_test",
           "ais_steps", "ais_chains", "ais_schedule", "ais_adapt", "ais_init", "mean_ess", "bdmc_images",
           "bdmc_lower", "bdmc_upper", "bdmc_width", "bdmc_width_se", "eval_seconds"]
METHOD_ORDER = {"vae": 0, "avb": 1, "avb_ac": 2, "iaf": 3, "auxvae": 4}


def collect(eval_jsons: list[str | Path]) -> pd.DataFrame:
    io.check_eval_jsons(eval_jsons)  # a NaN / inf log p(x) or ELBO is an error naming the file
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
                 "log p(x). AVB's implicit encoder has no density, so it has no IWAE bound."
                 + (" VAE + IAF: q is the flow (its density exact); auxiliary VAE: the joint q(a, z|x) with "
                    "r(a|x~, z) in the numerator, a bound on log p(x) too." if df.method.isin(["iaf", "auxvae"]).any()
                    else ""))
    note = ais_below_iwae(df)
    if note:
        lines += ["", note]
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


def ais_below_iwae(df: pd.DataFrame) -> str:
    """A note on the rows (runs or configurations) whose AIS estimate is below their IWAE bound, or ''.

    Both are stochastic lower bounds on log p(x) (in expectation), so there the AIS budget is too small for that
    model and the IWAE value is the tighter of the two (IAF: AIS starts from the prior, as the official test)."""
    if "iwae" not in df or not len(df):
        return ""
    low = df[df.iwae.notna() & (df.iwae > df.log_px_ais)]
    if not len(low):
        return ""
    seeds = "seed" in low.columns
    items = [f"{LABELS[r.method]} ({r.z_dim}-dim{f', seed {r.seed}' if seeds else ''}): AIS {r.log_px_ais:.2f}, "
             f"IWAE {r.iwae:.2f}" for r in low.itertuples()]
    return ("AIS below the IWAE bound: " + "; ".join(items) + ". Both are stochastic lower bounds on log p(x), so "
            "for these rows the AIS budget (steps, start) is too small for the model: log p(x) is at least the IWAE "
            "value in expectation, and the AIS column understates it.")


def write(eval_jsons: list[str | Path], out_csv: str | Path, out_md: str | Path) -> pd.DataFrame:
    df = collect(eval_jsons)
    io.write_csv(df, out_csv)
    io.write_text(markdown(df), out_md)
    return df


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
        # Standard error over test images, averaged over seeds: the only uncertainty a single seed has.
        row["log_px_ais_se"] = g["log_px_ais_se"].astype(float).mean()
        rows.append(row)
    return pd.DataFrame(rows)


def nats(x: float) -> str:
    """A value in nats with two decimals and a typographic minus."""
    return f"{x:.2f}".replace("-", "−")


def _pm(mean: float, half: float, approx: bool = False) -> str:
    if pd.isna(mean):
        return "n/a"
    return ("≈ " if approx else "") + (nats(mean) if pd.isna(half) else f"{nats(mean)} ± {nats(half)}")


Z95 = 1.959964  # two-sided 95 % normal quantile


def diff_to_published(r, pub: published.Table2Row | None) -> tuple[float, float]:
    """Our AIS log p(x) minus the paper's printed "log p(x) ≈" value, with a 95 % half-width.

    Our uncertainty: the Student-t half-width over seeds where there are several, else 1.96 × the standard error over
    test images (one seed says nothing about training variance). The paper's ± is the standard error of 20 batch
    means (the official test code), so it enters as 1.96 × ±. The two are combined in quadrature.
    """
    if pub is None or pub.ais is None:
        return float("nan"), float("nan")
    ours = r.log_px_ais_ci95 if r.n_seeds > 1 else Z95 * r.log_px_ais_se
    theirs = Z95 * (pub.ais.pm or 0.0)
    return r.log_px_ais - pub.ais.value, (ours ** 2 + theirs ** 2) ** 0.5


def table2_rows(agg: pd.DataFrame) -> list[dict[str, str]]:
    """One row per configuration with our numbers beside the paper's two printed columns (where it has the row)."""
    out = []
    for r in agg.sort_values(["dataset", "method", "z_dim"], key=lambda s: s.map(METHOD_ORDER)
                             if s.name == "method" else s).itertuples():
        pub = published.table2_row(r.method, r.z_dim) if r.dataset == "mnist" else None
        lit = published.literature_row(r.method) if r.dataset == "mnist" and pub is None else None
        approx = not r.elbo_is_bound
        diff, half = diff_to_published(r, pub)
        missing = "not in the paper" if r.dataset == "mnist" else "n/a (the paper: dynamic MNIST only)"
        if lit is not None:  # a baseline the paper only quotes from the literature: its values, labelled as such
            quoted = f"literature, quoted by the paper ({lit.reference}; other protocol)"
            paper_bound = f"{lit.bound.text()} [{quoted}]" if lit.bound else f"– [{quoted}]"
            paper_ais = f"{lit.ais.text()} [{quoted}]" if lit.ais else f"– [{quoted}]"
            paper_gap = f"{lit.gap:.1f}".replace("-", "−") if lit.gap is not None else "–"
            diff_text = "n/a (a literature value: another protocol)"
        else:
            paper_bound, paper_ais = (pub.bound.text(), pub.ais.text()) if pub else (missing, missing)
            paper_gap = (("≈ " if pub.bound.approx else "") + f"{pub.gap:.1f}".replace("-", "−")) if pub else "–"
            diff_text = "n/a" if math.isnan(diff) else f"{nats(diff)} ± {half:.2f}"
        out.append({
            "model": f"{LABELS[r.method]} ({r.z_dim}-dim)",
            "seeds": f"{r.n_seeds}",
            "elbo": _pm(r.elbo, r.elbo_ci95, approx),
            "paper_bound": paper_bound,
            "log_px": _pm(r.log_px_ais, r.log_px_ais_ci95),
            "paper_ais": paper_ais,
            "diff": diff_text,
            "gap": _pm(r.gap, r.gap_ci95, approx),
            "paper_gap": paper_gap,
            "protocol": f"{r.arch}, {r.train_steps} steps, {r.dataset} ({r.binarization} binarisation); AIS "
                        f"{r.ais_steps} steps × {r.ais_chains} chains ({r.ais_schedule}, start: {r.ais_init}) on "
                        f"{r.n_test} test images",
        })
    return out


TABLE2_HEAD = ["model", "seeds", "ELBO (ours)", "log p(x) ≥ (paper)", "log p(x), AIS (ours)", "log p(x) ≈ (paper)",
               "ours − paper, AIS", "gap (ours)", "gap (paper)", "protocol (ours)"]
TABLE2_KEYS = ["model", "seeds", "elbo", "paper_bound", "log_px", "paper_ais", "diff", "gap", "paper_gap", "protocol"]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table2_markdown(agg: pd.DataFrame) -> str:
    """Our rows with the paper's two printed columns beside them, then the literature rows the paper quotes."""
    lines = ["| " + " | ".join(TABLE2_HEAD) + " |", "|" + "---|" * len(TABLE2_HEAD)]
    for r in table2_rows(agg):
        lines.append("| " + " | ".join(_cell(r[k]) for k in TABLE2_KEYS) + " |")
    ours = set(agg.method[agg.dataset == "mnist"]) if len(agg) else set()
    for row in published.literature_rows():
        run_here = row.method in ours
        cells = [f"{row.label} ({row.reference}), quoted by the paper", "–", "–",
                 row.bound.text() if row.bound else "–", "–", row.ais.text() if row.ais else "–", "–", "–",
                 f"{row.gap:.1f}".replace("-", "−") if row.gap is not None else "–",
                 f"the paper's lower half (another protocol); our run of {LABELS[row.method]}: its rows above"
                 if run_here else "not run here; the paper's lower half"]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines += ["", "Columns: *log p(x) ≥* and *log p(x) ≈* are the paper's two printed columns (the ELBO, and the AIS "
              "estimate; the literature rows' ≈ values are importance-sampling estimates, as the paper's caption "
              "says). Ours: mean over seeds ± 95 % Student-t half-width (no ± with one seed). ≈: AVB's ELBO (and the "
              "paper's bound for AVB, printed in parentheses for plain AVB) uses the adversary's KL estimate and is "
              "not a bound. Gap = log p(x) − ELBO on each side. *ours − paper*: our AIS estimate minus the printed "
              "one, ± a 95 % half-width combining ours (over seeds, or 1.96 × the standard error over test images "
              "with one seed) and the paper's ± (taken as a standard error: the official code's std of 20 batch "
              "means / √20). Literature rows are the paper's quotes of other work, run under other protocols "
              "(architectures, training, binarisation, importance sampling instead of AIS). VAE + IAF and the "
              "auxiliary VAE are also run here (the official code's `avb/iaf`, `avb/auxvae`, scored by the same AIS "
              "as every row above): their rows above show the quoted literature values in the paper's columns, "
              "marked [literature, quoted by the paper], with no difference computed. Source: "
              + published.SOURCE + "."]
    note = ais_below_iwae(agg)
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def with_published(agg: pd.DataFrame) -> pd.DataFrame:
    """The aggregate table with the paper's printed values and our distance to them as numeric columns."""
    out = agg.copy()
    cols = {k: [] for k in ("paper_bound", "paper_bound_pm", "paper_ais", "paper_ais_pm", "paper_gap",
                            "diff_ais", "diff_ais_ci95")}
    for r in agg.itertuples():
        pub = published.table2_row(r.method, r.z_dim) if r.dataset == "mnist" else None
        diff, half = diff_to_published(r, pub)
        nan = float("nan")
        cols["paper_bound"].append(pub.bound.value if pub else nan)
        cols["paper_bound_pm"].append(pub.bound.pm if pub else nan)
        cols["paper_ais"].append(pub.ais.value if pub else nan)
        cols["paper_ais_pm"].append(pub.ais.pm if pub else nan)
        cols["paper_gap"].append(pub.gap if pub else nan)
        cols["diff_ais"].append(diff)
        cols["diff_ais_ci95"].append(half)
    return out.assign(**cols)


def table2_latex(agg: pd.DataFrame) -> str:
    """The Table 2 replica as a booktabs tabular (the same rows and columns as the Markdown)."""
    return latex.table(table2_markdown(agg).split("\n\n", 1)[0].splitlines())


def write_table2(df: pd.DataFrame, out_csv: str | Path, out_md: str | Path, out_tex: str | Path) -> pd.DataFrame:
    agg = aggregate(df)
    io.write_csv(with_published(agg), out_csv)
    io.write_text(table2_markdown(agg), out_md)
    io.write_text(table2_latex(agg), out_tex)
    return agg
