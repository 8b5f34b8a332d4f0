"""paper/: Markdown -> LaTeX, the computed discussion, and a full render (compiled where latexmk exists)."""
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from avb import config as avb_config
from avb.report import latex, paper, tables

from test_tables import runs


def test_escape_gives_ascii_latex_for_our_symbols_code_and_bold():
    out = latex.escape("log p(x) ≈ −83.6 ± 0.4 × 5 → `results/cpu_run` **not** a bound; 50% & #1 q(z|x) ~ a^2 \\int")
    assert out.isascii()
    for piece in (r"$\approx$ -83.6 $\pm$ 0.4 $\times$ 5 $\to$", r"\texttt{results/cpu\_run}", r"\textbf{not}",
                  r"50\% \& \#1 q(z\textbar{}x) \textasciitilde{} a\textasciicircum{}2 \textbackslash{}int"):
        assert piece in out
    assert latex.escape("ĳ") == "?"          # unknown non-ASCII never reaches pdflatex


def test_table_keeps_escaped_pipes_inside_cells_and_rejects_ragged_rows():
    tex = latex.table(["| method | KL(q(z\\|x), p(z\\|x)) |", "|---|---|", "| VAE | 0.15 |"])
    assert r"KL(q(z\textbar{}x), p(z\textbar{}x)) \\" in tex and r"VAE & 0.15 \\" in tex
    assert tex.count("&") == 2                 # two columns: the escaped pipes did not split the header
    with pytest.raises(ValueError, match=r"different numbers of cells: \[2, 3\]"):
        latex.table(["| a | b |", "|---|---|", "| 1 | 2 | 3 |"])


def test_document_translates_every_block_kind(tmp_path):
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "f.pdf").write_bytes(b"%PDF")
    md = "\n".join(["## Results", "Some text.", "", "* one", "* two", "", "| a | b |", "|---|---|", "| 1 | 2 |", "",
                    "![A caption](figures/f.png)", "", "```json", '{"lr": 1e-4}', "```"])
    written = {}
    tex = latex.document(md, "Title", lambda i, t: written.setdefault(f"tables/t{i}.tex", t) and f"tables/t{i}.tex",
                         lambda p: latex.pdf_if_present(p, tmp_path))
    assert r"\subsection*{Results}" in tex and r"\begin{itemize}" in tex and tex.count(r"\item ") == 2
    assert r"\input{tables/t1.tex}" in tex and r"1 & 2 \\" in written["tables/t1.tex"]
    assert r"{figures/f.pdf}" in tex and r"\caption{A caption}" in tex       # the vector version when present
    assert '{"lr": 1e-4}' in tex and r"\begin{verbatim}" in tex and tex.isascii()


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
    assert r"\subsection*{MNIST: Table 2 replica}" in tex and r"9.2 $\pm$ 1.3 nats lower" in tex and tex.isascii()
    assert r"\input{tables/t_table1.tex}" in tex and "lower half" in (out / "tables" / "t_table1.tex").read_text()
    assert "not yet compared with the PMLR version" in md  # the source of the printed values, wherever shown
    if shutil.which("latexmk") is None:
        pytest.skip("latexmk not installed: main.tex written but not compiled")
    r = subprocess.run(["latexmk", "-pdf", "-interaction=nonstopmode", "main.tex"], cwd=out, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and (out / "main.pdf").exists(), r.stdout[-3000:]


def test_mnist_figures_raise_no_deprecation_warnings(tmp_path, monkeypatch):
    """pyproject's filterwarnings turns FutureWarning and seaborn / matplotlib DeprecationWarning into errors, so
    this fails on any deprecated plotting call (the figures are otherwise only drawn in Snakemake subprocesses)."""
    from avb import figures

    monkeypatch.setattr(figures, "sample_grid", lambda path, n: np.zeros((59, 59)))
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


def test_render_shows_one_figure_per_run_with_its_label(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    df = summary()
    df.to_csv(res / "summary.csv", index=False)
    tables.write_table2(df, res / "table2.csv", res / "table2.md", res / "table2.tex")
    pngs = []
    for method in ("vae", "avb"):
        d = tmp_path / "runs" / "mnist" / method / "z8" / "seed0"
        d.mkdir(parents=True)
        (d / "fig7.png").write_bytes(b"png of " + method.encode())
        pngs.append(str(d / "fig7.png"))
    cfg = avb_config.validate({"preset": "t"}, "test")
    out = tmp_path / "paper"
    paper.render(cfg, out, {"summary_csv": str(res / "summary.csv"), "table2_md": str(res / "table2.md"),
                            "fig7_png": ",".join(pngs)})
    md = (out / "replication.md").read_text()
    assert "Figure 7 replica" in md and "VAE (8-dim, mnist, seed 0)" in md and "AVB (8-dim, mnist, seed 0)" in md
    assert (out / "figures" / "t_mnist_avb_z8_seed0_fig7.png").read_bytes() == b"png of avb"
