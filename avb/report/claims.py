"""The paper's claims, checked: one row per claim with the paper's numbers, ours and a verdict.

A claim is a sign: "A is above B" holds when a difference d is positive. Ours comes with a 95 % half-width h, and the
verdict is *replicated* when d − h > 0, *not replicated* when d + h < 0, and *inconclusive* when the interval covers
both answers. MNIST differences are paired over the same binarised test images (every model of a sweep is scored on
identical images), averaged over seeds; h is the Student-t half-width over seeds where there are several, else
1.96 × the paired standard error over images. AIS estimates carry their own bias (see the BDMC sandwich), which
pairing does not remove: the basis column says what each verdict rests on. The paper's numbers come from
:mod:`avb.report.published`.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from ..methods import LABELS
from . import published

Z95 = 1.959964
VERDICTS = ("replicated", "not replicated", "inconclusive")
RUN_PATH = re.compile(r"(?P<dataset>[^/]+)/(?P<method>[^/]+)/z(?P<z_dim>\d+)/seed(?P<seed>\d+)/eval_per_image\.csv$")


def verdict(d: float, h: float) -> str:
    """The verdict on "d > 0" from an estimate ``d`` with 95 % half-width ``h`` (0 for an exact quantity)."""
    if math.isnan(d) or math.isnan(h):
        return "inconclusive"
    if d - h > 0:
        return "replicated"
    if d + h < 0:
        return "not replicated"
    return "inconclusive"


def load_runs(per_image: list[str | Path]) -> dict[tuple[str, str, int, int], pd.DataFrame]:
    """Per-image evaluation tables keyed by (dataset, method, z_dim, seed), from ``.../<dataset>/<method>/z<z>/
    seed<s>/eval_per_image.csv`` paths."""
    runs = {}
    for path in per_image:
        m = RUN_PATH.search(Path(path).as_posix())
        if m is None:
            raise ValueError(f"{path}: not a <dataset>/<method>/z<z>/seed<s>/eval_per_image.csv path")
        runs[(m["dataset"], m["method"], int(m["z_dim"]), int(m["seed"]))] = pd.read_csv(path).set_index("image")
    return runs


def paired_difference(runs: dict, dataset: str, z_dim: int, a: str, b: str, value) -> tuple[float, float, int]:
    """Mean over seeds of the per-image mean of ``value(run_a) − value(run_b)``, its 95 % half-width and the number
    of seeds; NaN where either method is missing. ``value`` maps a per-image table to a Series."""
    means, ses = [], []
    for (ds, method, z, seed), df in sorted(runs.items()):
        other = runs.get((ds, b, z, seed))
        if ds != dataset or z != z_dim or method != a or other is None:
            continue
        if not df.index.equals(other.index):
            raise ValueError(f"{a} and {b} (z={z}, seed {seed}) were evaluated on different test images")
        d = value(df) - value(other)
        means.append(d.mean())
        ses.append(d.std(ddof=1) / math.sqrt(len(d)))
    return _combine(means, ses)


def within_run(runs: dict, dataset: str, z_dim: int, method: str, value) -> tuple[float, float, int]:
    """As :func:`paired_difference` for a per-image quantity of one method (e.g. ELBO − AIS)."""
    means, ses = [], []
    for (ds, m, z, _), df in sorted(runs.items()):
        if ds == dataset and z == z_dim and m == method:
            d = value(df)
            means.append(d.mean())
            ses.append(d.std(ddof=1) / math.sqrt(len(d)))
    return _combine(means, ses)


def _combine(means: list[float], ses: list[float]) -> tuple[float, float, int]:
    from scipy import stats

    n = len(means)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(means) / n
    if n == 1:
        return mean, Z95 * ses[0], 1
    sd = pd.Series(means).std(ddof=1)
    return mean, stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n), n


def _ais(df: pd.DataFrame) -> pd.Series:
    return df.log_px_ais


def _gap(df: pd.DataFrame) -> pd.Series:
    return df.log_px_ais - df.elbo


def _pm(d: float, h: float, digits: int = 2) -> str:
    if math.isnan(d):
        return "not run"
    txt = f"{d:+.{digits}f}".replace("-", "−")
    return txt if h < 0.5 * 10 ** -digits else f"{txt} ± {h:.{digits}f}"


def _row(exp: str, claim: str, paper: str, d: float, h: float, basis: str, digits: int = 2,
         methods: tuple[tuple[str, int], ...] = ()) -> dict:
    return {"experiment": exp, "claim": claim, "paper": paper, "ours": _pm(d, h, digits), "ours_value": d,
            "ours_ci95": h, "verdict": verdict(d, h) if not math.isnan(d) else "not run", "basis": basis,
            "_methods": methods}


BDMC_LOOSE = 1.0  # nats: a BDMC sandwich wider than this says the AIS estimate may be biased by about that much


def caveat(methods: tuple[tuple[str, int], ...], summary: pd.DataFrame | None) -> str:
    """Where an MNIST verdict rests on an AIS estimate whose BDMC sandwich (on simulated images) is wide."""
    if summary is None or not methods or "bdmc_width" not in summary:
        return ""
    notes = []
    for method, z in methods:
        w = summary[(summary.method == method) & (summary.z_dim == z)].bdmc_width.astype(float).max()
        if not math.isnan(w) and w > BDMC_LOOSE:
            notes.append(f"AIS of {LABELS[method]} ({z}-dim) not converged: BDMC sandwich {w:.1f} nats wide")
    return "; ".join(notes)


def mnist_claims(per_image: list[str | Path], dataset: str = "mnist") -> list[dict]:
    """Table 2's claims from per-image evaluations of one dataset."""
    runs = load_runs(per_image)
    p = {(r.method, r.z_dim): r for r in published.TABLE2 if r.method and not r.reference}
    rows = []
    for z in (8, 32):
        ac, vae = p[("avb_ac", z)], p[("vae", z)]
        d, h, n = paired_difference(runs, dataset, z, "avb_ac", "vae", _ais)
        rows.append(_row("MNIST", f"AVB + AC above the VAE on AIS log p(x), {z}-dim",
                         f"{ac.ais.value:.1f} vs {vae.ais.value:.1f}: {ac.ais.value - vae.ais.value:+.1f}",
                         d, h, f"AIS(AVB + AC) − AIS(VAE), paired over test images, {n} seed(s)",
                         methods=(("avb_ac", z), ("vae", z))))
    avb = p[("avb", 8)]
    d, h, n = within_run(runs, dataset, 8, "avb", lambda df: df.elbo - df.log_px_ais)
    rows.append(_row("MNIST", "Plain AVB's adversarial bound above its own AIS estimate, 8-dim",
                     f"(≈ {avb.bound.value:.1f}) vs {avb.ais.value:.1f}: {avb.bound.value - avb.ais.value:+.1f}",
                     d, h, f"ELBO estimate (adversary KL) − AIS, per test image, {n} seed(s)",
                     methods=(("avb", 8),)))
    for z in (8, 32):
        ac, vae = p[("avb_ac", z)], p[("vae", z)]
        d, h, n = paired_difference(runs, dataset, z, "vae", "avb_ac", _gap)
        rows.append(_row("MNIST", f"ELBO-to-AIS gap of AVB + AC below the VAE's, {z}-dim",
                         f"{ac.gap:.1f} vs {vae.gap:.1f}: {vae.gap - ac.gap:+.1f}", d, h,
                         f"gap(VAE) − gap(AVB + AC), gap = AIS − ELBO (AVB + AC's ELBO uses the adversary's KL "
                         f"estimate), paired over test images, {n} seed(s)",
                         methods=(("avb_ac", z), ("vae", z))))
    return [{**r, "paper": r["paper"].replace("-", "−")} for r in rows]


def toy_claims(toy: pd.DataFrame) -> list[dict]:
    """Table 1's claims from the toy summary (exact log p(x) by quadrature; reconstruction error by Monte Carlo)."""
    t = published.TABLE1
    toy = toy.set_index("method")
    have = {"vae", "avb"} <= set(toy.index)
    rows = []
    opt = published.TABLE1_OPTIMUM
    pv, pa = t["log_px"]["vae"].value, t["log_px"]["avb"].value
    if have:
        d = abs(toy.loc["vae", "log_px_exact"] - toy.loc["vae", "optimum"]) - abs(
            toy.loc["avb", "log_px_exact"] - toy.loc["avb", "optimum"])
        quad = float(toy.loc[["vae", "avb"], "quad_error_est"].abs().sum()) if "quad_error_est" in toy else 0.0
    else:
        d, quad = math.nan, 0.0
    rows.append(_row("toy", "AVB closer to the optimum −log 4 than the VAE (exact log-likelihood)",
                     f"distance {abs(pv - opt):.3f} (VAE) vs {abs(pa - opt):.3f} (AVB): {abs(pv - opt) - abs(pa - opt):+.3f}",
                     d, quad, "distance of the exact log p(x) to −log 4, VAE minus AVB, by "
                     "quadrature (± its error estimate); one training seed", digits=3))
    col = "recon_error_paper" if "recon_error_paper" in toy else "recon_error"
    rv, ra = t["recon_error"]["vae"].value, t["recon_error"]["avb"].value
    d = toy.loc["vae", col] - toy.loc["avb", col] if have else math.nan
    rows.append(_row("toy", "AVB's reconstruction error below the VAE's",
                     f"{rv:.4f} vs {ra:.5f}: {rv - ra:+.4f}", d, 0.0,
                     f"`{col}` of the VAE minus that of AVB (Monte Carlo over {int(toy['n_samples'].iloc[0])} encoder "
                     "samples per image; one training seed)", digits=4))
    return rows


def schools_claims(schools: pd.DataFrame) -> list[dict]:
    """Figure 3's claims from the schools summary's final KL to the HMC posterior (``kl_hmc`` ± ``kl_hmc_se``)."""
    s = schools.set_index("method")
    f = published.FIGURE3
    lab = published.FIGURE3_LABELS
    rows = []
    if "kl_hmc" not in s:
        return rows
    others = [m for m in ("advi_meanfield", "advi_fullrank", "avb") if m in s.index]
    if "avb_ac" in s.index and others:
        # the smallest margin over the other methods decides "lowest"
        cands = [(s.loc[m, "kl_hmc"] - s.loc["avb_ac", "kl_hmc"],
                  Z95 * math.hypot(s.loc[m, "kl_hmc_se"], s.loc["avb_ac", "kl_hmc_se"]), m) for m in others]
        d, h, m = min(cands, key=lambda c: c[0] - c[1])
        basis = f"smallest margin: KL({lab[m]}) − KL(AVB (AC)), kNN estimate at the last iteration, ± 1.96 × SE"
    else:
        d, h, basis = math.nan, math.nan, "not run"
    rows.append(_row("eight schools", "AVB + AC has the lowest KL to the HMC posterior",
                     f"AVB (AC) ends ≈ {f['avb_ac']['end']:.2f}; the others ≥ ≈ {f['avb']['low']:.2f} (read off the plot)",
                     d, h, basis, digits=3))
    if {"avb", "advi_fullrank"} <= set(s.index):
        d = s.loc["advi_fullrank", "kl_hmc"] - s.loc["avb", "kl_hmc"]
        h = Z95 * math.hypot(s.loc["advi_fullrank", "kl_hmc_se"], s.loc["avb", "kl_hmc_se"])
    else:
        d, h = math.nan, math.nan
    rows.append(_row("eight schools", "AVB below full-rank VB in KL to the HMC posterior",
                     f"AVB ≈ {f['avb']['low']:.2f}–{f['avb']['high']:.2f} vs full rank ≈ {f['advi_fullrank']['end']:.2f} "
                     "(read off the plot)", d, h, "KL(VB full rank) − KL(AVB) at the last iteration, ± 1.96 × SE",
                     digits=3))
    return rows


COLUMNS = ["experiment", "claim", "paper", "ours", "ours_value", "ours_ci95", "verdict", "basis", "caveat"]


def table(per_image: list[str | Path], toy: pd.DataFrame | None = None, schools: pd.DataFrame | None = None,
          summary: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every claim that the available results can speak to, as a tidy table. ``summary`` (one row per MNIST run)
    adds the BDMC caveats."""
    rows = mnist_claims(per_image) if per_image else []
    if toy is not None:
        rows += toy_claims(toy)
    if schools is not None:
        rows += schools_claims(schools)
    for r in rows:
        r["caveat"] = caveat(r.pop("_methods"), summary)
    return pd.DataFrame(rows, columns=COLUMNS)


def markdown(df: pd.DataFrame) -> str:
    lines = ["| experiment | claim | paper | ours | verdict | basis of ours |", "|---|---|---|---|---|---|"]
    for r in df.itertuples():
        basis = r.basis + (f". Caveat: {r.caveat}" if isinstance(r.caveat, str) and r.caveat else "")
        lines.append(f"| {r.experiment} | {r.claim} | {r.paper} | {r.ours} | **{r.verdict}** | {basis} |")
    counts = df.verdict.value_counts()
    lines += ["", "Verdict: *replicated* when our 95 % interval of the difference lies on the paper's side of zero, "
              "*not replicated* when it lies on the other side, *inconclusive* when it covers zero; *not run* when "
              "the preset has no such rows. Paper: " + published.SOURCE + "; Figure 3 values: "
              + published.FIGURE3_SOURCE + ".", "",
              "Totals: " + ", ".join(f"{counts.get(v, 0)} {v}" for v in (*VERDICTS, "not run")) + "."]
    return "\n".join(lines) + "\n"


def write(per_image: list[str | Path], summary_csv: str | Path | None, toy_csv: str | Path | None,
          schools_csv: str | Path | None, out_csv: str | Path, out_md: str | Path) -> pd.DataFrame:
    from .. import io

    def read(path):
        return pd.read_csv(path) if path else None

    df = table(per_image, read(toy_csv), read(schools_csv), read(summary_csv))
    io.write_csv(df, out_csv)
    io.write_text(markdown(df), out_md)
    return df
