"""The paper's printed numbers: Table 1 (toy), Table 2 (MNIST) and Figure 3 (eight schools), in one place.

Every comparison with the paper in this package reads its numbers from here. Source: images of the tables as printed
(probably arXiv v4 of arXiv:1701.04722, June 2018; copies in ``shared/docs/paper-tables/``, transcribed in
``shared/docs/avb-reference.md`` §1.1–1.3), **not yet compared with the PMLR version**. Figure 3 prints no numbers:
its values below are read off the plot and approximate. ``SOURCE`` says exactly this and is printed beside every
published number the suite shows.
"""
from __future__ import annotations

from dataclasses import dataclass

SOURCE = ("published values: the paper's tables as printed, read from an image of them (probably arXiv v4, "
          "1701.04722; not yet compared with the PMLR version)")
FIGURE3_SOURCE = ("Figure 3 of the paper prints no numbers: values read off the plot (approximate) from an image of "
                  "it (probably arXiv v4; not yet compared with the PMLR version)")


@dataclass(frozen=True)
class Value:
    """A printed number with its ± and its marks: ``approx`` for "≈", ``paren`` for a value printed in parentheses."""

    value: float
    pm: float | None = None
    approx: bool = False
    paren: bool = False
    note: str = ""
    fmt: str = ".1f"

    def text(self) -> str:
        """As printed: e.g. ``(≈ −83.6 ± 0.4)``, with a typographic minus."""
        s = format(self.value, self.fmt).replace("-", "−")
        if self.pm is not None:
            s += f" ± {format(self.pm, self.fmt)}"
        if self.approx:
            s = "≈ " + s
        if self.note:
            s += f" ({self.note})"
        return f"({s})" if self.paren else s


@dataclass(frozen=True)
class Table2Row:
    """One row of Table 2: ``bound`` is the "log p(x) ≥" column (the ELBO; ≈ for AVB, whose bound uses the
    adversary's KL estimate), ``ais`` the "log p(x) ≈" column (AIS for our methods; importance sampling, "IS", for
    the literature rows)."""

    label: str
    bound: Value | None
    ais: Value | None
    method: str | None = None     # our method name for the rows the suite trains
    z_dim: int | None = None
    reference: str = ""           # the citation printed in the row (literature rows)

    @property
    def gap(self) -> float | None:
        """log p(x) ≈ minus log p(x) ≥, as the two printed columns give it (no ± is printed for it)."""
        if self.bound is None or self.ais is None:
            return None
        return self.ais.value - self.bound.value


TABLE2: tuple[Table2Row, ...] = (
    Table2Row("AVB (8-dim)", Value(-83.6, 0.4, approx=True, paren=True), Value(-91.2, 0.6), "avb", 8),
    Table2Row("AVB + AC (8-dim)", Value(-96.3, 0.4, approx=True), Value(-89.6, 0.6), "avb_ac", 8),
    Table2Row("AVB + AC (32-dim)", Value(-79.5, 0.3, approx=True), Value(-80.2, 0.4), "avb_ac", 32),
    Table2Row("VAE (8-dim)", Value(-98.1, 0.5), Value(-90.9, 0.6), "vae", 8),
    Table2Row("VAE (32-dim)", Value(-87.2, 0.3), Value(-81.9, 0.4), "vae", 32),
    Table2Row("VAE + NF (T=80)", Value(-85.1), None, reference="Rezende & Mohamed, 2015"),
    Table2Row("VAE + HVI (T=16)", Value(-88.3), Value(-85.5, note="IS"), reference="Salimans et al., 2015"),
    Table2Row("convVAE + HVI (T=16)", Value(-84.1), Value(-81.9, note="IS"), reference="Salimans et al., 2015"),
    Table2Row("VAE + VGP (2hl)", Value(-81.3), None, reference="Tran et al., 2015"),
    Table2Row("DRAW + VGP", Value(-79.9), None, reference="Tran et al., 2015"),
    Table2Row("VAE + IAF", Value(-80.8), Value(-79.1, note="IS"), method="iaf", reference="Kingma et al., 2016"),
    Table2Row("Auxiliary VAE (L=2)", Value(-83.0), None, method="auxvae", reference="Maaløe et al., 2016"),
)
TABLE2_CAPTION = ("Log-likelihoods on binarized MNIST for AVB and other methods improving on VAEs. The approximate "
                  "log-likelihoods in the lower half of the table were not obtained with AIS but with importance "
                  "sampling.")


def table2_row(method: str, z_dim: int) -> Table2Row | None:
    """The printed Table 2 row of one of our (method, z_dim) configurations, or None (e.g. AVB 32-dim)."""
    for row in TABLE2:
        if row.method == method and row.z_dim == z_dim and not row.reference:
            return row
    return None


def literature_row(method: str) -> Table2Row | None:
    """The literature row the paper quotes for one of the baselines we run (``iaf``, ``auxvae``), or None."""
    for row in TABLE2:
        if row.method == method and row.reference:
            return row
    return None


def literature_rows() -> tuple[Table2Row, ...]:
    """The lower half of Table 2: methods the paper quotes from the literature (not run by the paper)."""
    return tuple(r for r in TABLE2 if r.reference)


# Table 1 (toy, four 2x2 images): the optimum log-likelihood is -log 4 ≈ -1.386 (the caption). Keys: our toy summary
# columns (avb/toy.py); values per method.
TABLE1_OPTIMUM = -1.386
TABLE1: dict[str, dict[str, Value]] = {
    "log_px": {"vae": Value(-1.568, fmt=".3f"), "avb": Value(-1.403, fmt=".3f")},
    "recon_error": {"vae": Value(88.5e-3, fmt=".4f"), "avb": Value(5.77e-3, fmt=".5f")},
    "elbo": {"vae": Value(-1.697, fmt=".3f"), "avb": Value(-1.421, approx=True, fmt=".3f")},
    "kl_aggregate_prior": {"vae": Value(0.165, approx=True, fmt=".3f"), "avb": Value(0.026, approx=True, fmt=".3f")},
}
TABLE1_LABELS = {"log_px": "log-likelihood", "recon_error": "reconstruction error", "elbo": "ELBO",
                 "kl_aggregate_prior": "KL(q(z), p(z))"}

# Figure 3 (eight schools): KL(method || HMC posterior), log scale, against training iterations 0-50,000 (points every
# 5,000). No numbers are printed; read off the plot: (low, high) of each curve and where it ends, approximate.
FIGURE3_ITERATIONS = 50_000
FIGURE3: dict[str, dict[str, float]] = {
    "advi_meanfield": {"low": 1.1, "high": 1.1, "end": 1.1},
    "advi_fullrank": {"low": 0.9, "high": 0.9, "end": 0.9},
    "avb": {"low": 0.35, "high": 0.7, "end": float("nan")},
    "avb_ac": {"low": 0.2, "high": 0.55, "end": 0.2},
}
FIGURE3_LABELS = {"advi_meanfield": "VB (meanfield)", "advi_fullrank": "VB (full rank)", "avb": "AVB",
                  "avb_ac": "AVB (AC)"}
