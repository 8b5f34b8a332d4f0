"""paper/: Markdown -> LaTeX by pandoc (math, code, Unicode, captions, figure grids), the computed discussion, and a
full render (compiled where latexmk exists, its text checked where pdftotext exists)."""
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from avb import config as avb_config
from avb.report import latex, paper, tables

from test_tables import runs

MD = "\n".join([
    "# The title", "",
    "Run `snakemake --cores 2 paper --configfile config/cpu.yaml --config 'x=1'`, then read on.", "",
    "## Results", "",
    r"The bound $\log \int p(x \mid z)\, dz$ on a $600^2$ grid; a stray \int and 600^2 outside math stay text.", "",
    "* log p(x) ≈ −83.6 ± 0.4 × 5 → ĳ", "* 50% & #1 q(z|x) ~ a_b", "",
    "| a | b |", "|---|---|", "| 1 | 2 |", "",
    "![A caption with `code` and ≈.](figures/f.png)", "",
    "```json", '{"lr": 1e-4, "flag": "--x"}', "```", ""])


def texttt(tex: str) -> list[str]:
    """The contents of every \\texttt{...} in ``tex`` (no nested braces in our code spans)."""
    return re.findall(r"\\texttt\{([^{}]*(?:\{\}[^{}]*)*)\}", tex)


def body(tex: str) -> str:
    return tex.split(r"\begin{document}", 1)[1]


def test_escape_of_standalone_tables_maps_our_symbols_and_keeps_code_hyphens_and_unicode():
    out = latex.escape("log p(x) ≈ −83.6 ± 0.4 × 5 → `--cores 2` **not** a bound; 50% & #1 q(z|x) ~ a^2 \\int "
                       "ĳ")
    for piece in (r"$\approx$ -83.6 $\pm$ 0.4 $\times$ 5 $\to$", r"\textbf{not}",
                  r"50\% \& \#1 q(z\textbar{}x) \textasciitilde{} a\textasciicircum{}2 \textbackslash{}int"):
        assert piece in out
    assert r"\texttt{-{}-{}cores 2}" in out           # no en-dash ligature in the typewriter font
    assert out.endswith("ĳ") and "?" not in out        # unknown non-ASCII is kept, never a "?"


def test_table_keeps_escaped_pipes_inside_cells_and_rejects_ragged_rows():
    tex = latex.table(["| method | KL(q(z\\|x), p(z\\|x)) |", "|---|---|", "| VAE | 0.15 |"])
    assert r"KL(q(z\textbar{}x), p(z\textbar{}x)) \\" in tex and r"VAE & 0.15 \\" in tex
    assert tex.count("&") == 2                 # two columns: the escaped pipes did not split the header
    with pytest.raises(ValueError, match=r"different numbers of cells: \[2, 3\]"):
        latex.table(["| a | b |", "|---|---|", "| 1 | 2 | 3 |"])


def test_document_keeps_code_math_unicode_and_captions(tmp_path):
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "f.pdf").write_bytes(b"%PDF")
    tex = latex.document(MD, tmp_path)
    text = body(tex)
    assert r"\title{The title}" in tex and r"\section{Results}" in text and "The title" not in text.split(
        r"\maketitle")[1]
    # code: every character survives, `--` never two hyphens a font can join into an en-dash
    code = texttt(text)
    assert any("cores" in c for c in code) and all("--" not in c for c in code)
    assert r"-\/-cores" in text and "--configfile" not in text
    assert r"\textquotesingle{}x=1\textquotesingle{}" in text      # a straight quote, as typed
    # math written $...$ is math; a backslash outside math is text, never raw LaTeX
    assert r"\(\log \int p(x \mid z)\, dz\)" in text and r"\(600^2\)" in text
    assert r"\textbackslash int" in text and r"600\^{}2" in text
    # non-ASCII goes through as UTF-8 (the header sets it up for pdflatex), never as "?"
    for ch in "≈−±×→ĳ":
        assert ch in text
    assert "?" not in text
    assert r"\newunicodechar{≈}" in tex and r"\newunicodechar{−}" in tex
    # a figure is a float with its caption, the vector PDF beside the PNG included
    fig = text[text.index(r"\begin{figure}"):text.index(r"\end{figure}")]
    assert r"{figures/f.pdf}" in fig and r"\caption{A caption with \protect\texttt{code} and ≈.}" in fig
    assert r"\begin{longtable}" in text and r"1 & 2 \\" in text and '{"lr": 1e-4, "flag": "--x"}' in text


def test_every_figure_of_the_document_has_a_caption(tmp_path):
    md = "\n".join(["# T", "", "![First.](a.png)", "", "![Second.](b.png)", "", "![](c.png)", ""])
    tex = body(latex.document(md, tmp_path))
    figures = re.findall(r"\\begin\{figure\}(.*?)\\end\{figure\}", tex, re.S)
    assert len(figures) == 2 and all(r"\caption{" in f for f in figures)   # an uncaptioned image is no figure


def test_paper_templates_are_package_data():
    data = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["avb.report.templates"]
    for path in (latex.HEADER, latex.FILTER):
        assert path.is_file() and any(path.match(pattern) for pattern in patterns), path


def summary(avb_gap=-3.0, avb_width=4.0):
    df = pd.concat([runs("vae", 8, values=(-100.1,)), runs("avb", 8, values=(-110.0,)),
                    runs("avb_ac", 8, values=(-99.6,))], ignore_index=True)
    df["log_px_ais_se"] = [0.3, 0.4, 0.4]
    df.loc[df.method == "avb", "gap"] = avb_gap
    df["iwae"] = df.log_px_ais - 0.2
    df.loc[df.method == "avb", "iwae"] = float("nan")
    df["bdmc_images"], df["bdmc_width"], df["bdmc_width_se"] = 32, [0.05, avb_width, 0.02], 0.1
    return df


def per_image_files(root, diffs, n=400, seed=0):
    """eval_per_image.csv files laid out as the pipeline writes them: VAE per-image values with a large spread, and
    each other method = VAE + its paired difference (a constant plus small noise)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(-100.0, 25.0, n)           # between-image spread: what makes unpaired s.e. large
    paths = []
    for method, shift in {"vae": 0.0, **diffs}.items():
        path = root / "mnist" / method / "z8" / "seed0" / "eval_per_image.csv"
        path.parent.mkdir(parents=True)
        lp = base + (shift + rng.normal(0, 1.0, n) if method != "vae" else 0)
        pd.DataFrame({"image": range(n), "log_px_ais": lp}).to_csv(path, index=False)
        paths.append(str(path))
    return paths


def test_paired_comparison_resolves_differences_the_unpaired_errors_hide(tmp_path):
    pairs = paper.paired(per_image_files(tmp_path, {"avb": -3.0, "avb_ac": 0.4}))
    ac = pairs.set_index("method").loc["avb_ac"]
    # d = 0.4 + N(0, 1): mean within 3 s.e. (= 3 / sqrt(400)) of 0.4, s.e. near 1/sqrt(400), not 25 * sqrt(2/400)
    assert abs(ac.mean_diff - 0.4) < 3 * 0.05 and 0.04 < ac.se < 0.06 and ac.images == 400
    assert pairs.set_index("method").loc["avb", "frac_better"] < 0.01
    cfg = avb_config.validate({"preset": "t"}, "test")
    text = "\n".join(paper.discussion(summary(), cfg, pairs))
    assert "8-dim, seed 0: AVB + AC − VAE = 0." in text and "(higher on 6" in text and "AVB + AC ahead." in text
    with pytest.raises(ValueError, match="not a <dataset>/<method>"):
        paper.paired([str(tmp_path / "eval_per_image.csv")])


def test_discussion_is_computed_from_the_results():
    cfg = avb_config.validate({"preset": "t", "train": {"steps": 25000}}, "test")
    text = "\n".join(paper.discussion(summary(), cfg))
    assert "1.0% of the official 2,500,000" in text
    # against the printed AIS column (−90.9 ± 0.6), with a 95 % half-width 1.96 × hypot(0.3, 0.6), and the printed
    # bound column (−98.1) for the ELBO (−102.1)
    assert ("VAE (8-dim): AIS log p(x) −100.10 against the printed −90.9 ± 0.6: 9.2 ± 1.3 nats lower; ELBO −102.10 "
            "against the printed bound −98.1 ± 0.5: 4.0 nats lower") in text
    assert "the paper's own AVB row shows the same ((≈ −83.6 ± 0.4) above −91.2 ± 0.6)" in text
    assert "not yet compared with the PMLR version" in text
    assert "AVB (8-dim): its ELBO estimate exceeds its AIS log p(x) by 3.0 nats" in text
    assert "AVB (8-dim, seed 0): the BDMC sandwich on 32 simulated images is 4.00 ± 0.10 nats wide" in text
    assert "widest 0.05) for AVB + AC (8-dim), VAE (8-dim)" in text
    # A well-behaved AVB run gets neither warning.
    calm = "\n".join(paper.discussion(summary(avb_gap=1.0, avb_width=0.5), cfg))
    assert "cannot exceed" not in calm and "may be that loose" not in calm


def test_render_writes_matching_markdown_and_latex(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    df = summary()
    df.to_csv(res / "summary.csv", index=False)
    tables.write_table2(df, res / "table2.csv", res / "table2.md", res / "table2.tex")
    (res / "summary.md").write_text("| model | log p(x) |\n|---|---|\n| VAE | −100.1 |\n")
    cfg = avb_config.validate({"preset": "t"}, "test")
    out = tmp_path / "paper"
    paper.render(cfg, out, {"summary_csv": str(res / "summary.csv"), "table2_md": str(res / "table2.md"),
                            "summary_md": str(res / "summary.md"), "provenance_json": str(res / "missing.json"),
                            "per_image": ",".join(per_image_files(tmp_path / "runs", {"avb_ac": 0.4}))})
    md = (out / "replication.md").read_text()
    tex = (out / "main.tex").read_text()
    assert "## MNIST: Table 2 replica" in md and "No provenance record" in md and "9.2 ± 1.3 nats lower" in md
    assert "| AVB + AC − VAE | mnist | 8 | 0 | 400 | 0." in md
    # main.tex is pandoc's rendering of replication.md: its sections, its tables (longtables), its Unicode as is
    assert r"\section{MNIST: Table 2 replica}" in tex and "9.2 ± 1.3 nats lower" in tex
    assert r"\begin{longtable}" in tex and "lower half" in tex and "?" not in body(tex)
    assert "not yet compared with the PMLR version" in md  # the source of the printed values, wherever shown
    if shutil.which("latexmk") is None:
        pytest.skip("latexmk not installed: main.tex written but not compiled")
    r = subprocess.run(["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error", "main.tex"], cwd=out,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and (out / "main.pdf").exists(), r.stdout[-3000:]
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext not installed: main.pdf built but its text not checked")
    text = subprocess.run(["pdftotext", "main.pdf", "-"], cwd=out, capture_output=True, text=True, check=True).stdout
    # what a reader copies out of the PDF is what the Markdown says: commands, minus signs, symbols
    assert "snakemake --cores N paper --configfile config/t.yaml" in text.replace("\n", " ")
    assert "9.2 ± 1.3 nats lower" in text and "AVB + AC − VAE" in text


def test_mnist_figures_raise_no_deprecation_warnings(tmp_path, monkeypatch):
    """pyproject's filterwarnings turns FutureWarning and seaborn / matplotlib DeprecationWarning into errors, so
    this fails on any deprecated plotting call (the figures are otherwise only drawn in Snakemake subprocesses)."""
    from avb.report import figures

    monkeypatch.setattr(figures, "sample_grid", lambda path, n, seed=0, cols=None: np.zeros((59, 59)))
    monkeypatch.setattr(figures, "reconstruction_grid", lambda path: np.zeros((59, 233)))
    runs_ = []
    for i, label in enumerate(("VAE z=8 s0", "AVB z=8 s0")):
        metrics = tmp_path / f"m{i}.csv"
        pd.DataFrame({"step": [0, 50, 100], "elbo": [-500.0, -200.0, -150.0 - i]}).to_csv(metrics, index=False)
        runs_.append({"label": label, "model": "unused", "metrics": str(metrics)})
    figures.samples_and_curves(runs_, tmp_path / "s.png", 4, tmp_path / "s.pdf")
    rows = [{"method": m, "dataset": "mnist", "z_dim": 8, "seed": 0, "n_steps": n, "estimate": e,
             "mean": -100.0 - (e == "bdmc_lower") * 10 / n, "se": 1.0, "n_images": 4}
            for m in ("vae", "avb") for n in (10, 100) for e in ("ais_test", "bdmc_lower", "bdmc_upper")]
    pd.DataFrame(rows).to_csv(tmp_path / "c.csv", index=False)
    figures.ais_convergence([tmp_path / "c.csv"], tmp_path / "c.png", tmp_path / "c.pdf")
    assert all((tmp_path / f).stat().st_size > 1000 for f in ("s.png", "s.pdf", "c.png", "c.pdf"))


def test_render_lays_the_per_run_figures_out_one_row_per_run(tmp_path):
    """18 runs (the paper preset's sweep): one grid, a row per run with its label, its Figure 7 replica and its
    interpolations (the vector PDFs in main.tex), under one caption; rows may break across pages."""
    res = tmp_path / "results"
    res.mkdir()
    df = summary()
    df.to_csv(res / "summary.csv", index=False)
    tables.write_table2(df, res / "table2.csv", res / "table2.md", res / "table2.tex")
    files: dict[str, list[str]] = {k: [] for k in paper.PER_RUN}
    names = []
    for method in ("vae", "avb", "avb_ac"):
        for z in (8, 32):
            for seed in (0, 1, 2):
                d = tmp_path / "runs" / "mnist" / method / f"z{z}" / f"seed{seed}"
                d.mkdir(parents=True)
                for key, stem in (("fig7", "fig7"), ("interp", "interpolations")):
                    for ext in ("png", "pdf"):
                        (d / f"{stem}.{ext}").write_bytes(f"{ext} of {method} {z} {seed}".encode())
                        files[f"{key}_{ext}"].append(str(d / f"{stem}.{ext}"))
                names.append(f"mnist_{method}_z{z}_seed{seed}")
    cfg = avb_config.validate({"preset": "t"}, "test")
    out = tmp_path / "paper"
    paper.render(cfg, out, {"summary_csv": str(res / "summary.csv"), "table2_md": str(res / "table2.md"),
                            **{k: ",".join(v) for k, v in files.items()}})
    md = (out / "replication.md").read_text()
    grid = [line for line in md.splitlines() if line.startswith("| ") and "fig7.png" in line]
    assert len(grid) == 18 and "One row per run (18)." in md
    assert grid[0].startswith("| VAE (8-dim, mnist, seed 0) | ![") and "interpolations.png" in grid[0]
    assert (out / "figures" / "t_mnist_avb_z8_seed0_fig7.png").read_bytes() == b"png of avb 8 0"
    assert (out / "figures" / "t_mnist_avb_z8_seed0_fig7.pdf").read_bytes() == b"pdf of avb 8 0"
    tex = body((out / "main.tex").read_text())
    rows = re.findall(r"\\begin\{minipage\}\{\\linewidth\}(.*?)\\end\{minipage\}", tex, re.S)
    assert len(rows) == 18 and tex.count(r"\captionof{figure}") == 1
    for row, name in zip(rows, names):
        assert re.findall(r"\\includegraphics\[height=\\avbgridheight\]\{([^}]*)\}", row) == [
            f"figures/t_{name}_fig7.pdf", f"figures/t_{name}_interpolations.pdf"]
    assert "VAE (8-dim, mnist, seed 0)" in rows[0] and "AVB + AC (32-dim, mnist, seed 2)" in rows[-1]
    assert r"\begin{longtable}" not in tex[tex.index(r"\captionof{figure}"):]   # the grid is no table


def test_samples_and_curves_has_one_row_per_run_and_a_fixed_width(tmp_path, monkeypatch):
    """18 runs: 18 rows (samples, reconstructions and curve of a run side by side, one height), and a figure as
    wide as for 2 runs, so it shrinks by its height only (a page) and not by the number of runs."""
    from avb.report import figures

    monkeypatch.setattr(figures, "sample_grid", lambda path, n, seed=0, cols=None: figures.tile(
        np.zeros((n, 28, 28)), cols or 8))
    monkeypatch.setattr(figures, "reconstruction_grid", lambda path, n=8, seed=0: figures.tile(
        np.zeros((2 * n, 28, 28)), n))
    drawn = {}

    def keep(fig, *paths, **kwargs):
        drawn["fig"] = fig

    monkeypatch.setattr(figures, "save", keep)
    sizes = {}
    for n in (2, 18):
        runs_ = []
        for i in range(n):
            metrics = tmp_path / f"m{i}.csv"
            pd.DataFrame({"step": [100, 200, 300], "elbo": [-300.0, -120.0, -110.0 - i]}).to_csv(metrics, index=False)
            runs_.append({"label": f"VAE z=8 s{i}", "model": "unused", "metrics": str(metrics)})
        figures.samples_and_curves(runs_, tmp_path / "s.png", 64)
        fig = drawn["fig"]
        sizes[n] = fig.get_size_inches()
        image_axes = [ax for ax in fig.axes if ax.images]
        rows = sorted({round(ax.get_position().y0, 4) for ax in image_axes})
        assert len(image_axes) == 2 * n and len(rows) == n          # samples + reconstructions per row
        curves = [ax for ax in fig.axes if ax.lines]
        assert len(curves) == n and len({round(ax.get_position().y0, 4) for ax in curves}) == n
        labels = [t.get_text() for ax in fig.axes for t in ax.texts if t.get_text().startswith("VAE")]
        assert labels == [f"VAE\nz=8 s{i}" for i in range(n)]
        assert curves[-1].get_ylim() == curves[0].get_ylim()         # one scale for every row
        plt_close(fig)
    assert sizes[18][0] == sizes[2][0] < 8.5 and sizes[18][1] > 8 * sizes[2][1] / 2


def plt_close(fig):
    import matplotlib.pyplot as plt

    plt.close(fig)
