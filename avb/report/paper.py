"""``paper/``: the replication report, regenerated from ``results/<preset>/`` with no manual step.

Writes ``paper/replication.md`` and, from that Markdown alone, ``paper/main.tex`` (pandoc: ``avb.report.latex``), which
includes the figures copied to ``paper/figures/``; the per-run figures are one grid, a row per run. Every number comes
from the result files. The report states the preset's full config, every Snakemake invocation that produced the
results (commit, machine, command, wall time: ``provenance.json``) and the commit and machine that rendered it. The
discussion of how the numbers differ from the paper's is computed from the results, not written by hand.
"""
from __future__ import annotations

import json
import math
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from .. import io
from . import claims, latex, published, tables
from . import provenance as provenance_log

OFFICIAL_STEPS = 2_500_000
BDMC_CONVERGED = 1.0   # nats: a sandwich narrower than this counts as converged on simulated data


def provenance() -> dict[str, str]:
    """Commit (flagged when the tree has uncommitted changes), machine, software and time of this render."""
    return {"commit": provenance_log.commit(), "machine": provenance_log.machine(),
            "software": provenance_log.software(),
            "rendered": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def discussion(summary: pd.DataFrame, cfg: dict[str, Any], pairs: pd.DataFrame | None = None) -> list[str]:
    """Bullets on how and why our MNIST numbers differ from the published ones, computed from ``summary``
    (one row per run, as written by ``avb.report.tables.write``) and the paired comparisons of :func:`paired`."""
    model, train = cfg["model"], cfg["train"]
    reduced = model["adv_embed"] < 8192 or model["adv_hidden"] < 1024
    items = [
        f"Networks: `{model['arch']}` encoder/decoder, `{model['adv_arch']}` adversary"
        + (f" reduced to {model['adv_hidden']} hidden / {model['adv_embed']} embedding units (official 1024 / 8192)"
           if reduced else "") + ". The published rows come from the official conv nets (`conv0`/`conv1`).",
        f"Training: {train['steps']:,} steps per run, {train['steps'] / OFFICIAL_STEPS:.1%} of the official "
        f"{OFFICIAL_STEPS:,}; lr {train['lr']:g} (official 5e-5 for AVB, 1e-4 for the VAE), batch {train['batch_size']}.",
        "AIS: " + "; ".join(sorted({f"{tables.LABELS[m]} {st} steps × {ch} chains, step adaptation {ad}, start: {ini}"
                                  for m, st, ch, ad, ini in zip(summary.method, summary.ais_steps, summary.ais_chains,
                                                                summary.get("ais_adapt", ["?"] * len(summary)),
                                                                summary.ais_init)}))
        + f", on {', '.join(str(n) for n in sorted(set(summary.n_test)))} test images. The official launch scripts "
          "run 1000 × 5 with an adaptive step (AVB 8-dim), 2000 × 8 adaptive (AVB + AC) and 2000 × 8 with a fixed "
          "step (VAE), on 20 freshly binarised test batches; `config/paper.yaml` is those scripts row by row.",
        "Binarisation: dynamic (resampled on every read, test images included), as the official code; static "
        "binarisation alone moves numbers by about 2 nats, so every row states it.",
    ]
    agg = tables.with_published(tables.aggregate(summary))
    for r in agg.itertuples():
        label = f"{tables.LABELS[r.method]} ({r.z_dim}-dim)"
        pub = published.table2_row(r.method, r.z_dim) if r.dataset == "mnist" else None
        if pub is not None:
            items.append(f"{label}: AIS log p(x) {tables.nats(r.log_px_ais)} against the printed "
                         f"{pub.ais.text()}: {abs(r.diff_ais):.1f} ± {r.diff_ais_ci95:.1f} nats "
                         f"{'lower' if r.diff_ais < 0 else 'higher'}; "
                         f"{'ELBO estimate' if not r.elbo_is_bound else 'ELBO'} {tables.nats(r.elbo)} against the "
                         f"printed bound {pub.bound.text()}: {abs(r.elbo - pub.bound.value):.1f} nats "
                         f"{'lower' if r.elbo < pub.bound.value else 'higher'}.")
        if not r.elbo_is_bound and r.gap < 0:
            items.append(f"{label}: its ELBO estimate exceeds its AIS log p(x) by {-r.gap:.1f} nats. An ELBO cannot "
                         "exceed log p(x), so the adversary underestimates the KL term, AIS underestimates log p(x), "
                         "or both (see the BDMC sandwich)"
                         + (f"; the paper's own AVB row shows the same ({pub.bound.text()} above {pub.ais.text()})"
                            if pub is not None and pub.gap < 0 else "") + ".")
        if not pd.isna(r.iwae) and r.iwae > r.log_px_ais + 0.5:
            items.append(f"{label}: the IWAE bound ({tables.nats(r.iwae)}) lies above the AIS estimate: AIS is loose here.")
    runs = summary.dropna(subset=["bdmc_width"]) if "bdmc_width" in summary else summary.iloc[:0]
    loose = runs[runs.bdmc_width > BDMC_CONVERGED]
    for r in loose.itertuples():
        items.append(f"{tables.LABELS[r.method]} ({r.z_dim}-dim, seed {r.seed}): the BDMC sandwich on "
                     f"{int(r.bdmc_images)} simulated images is {r.bdmc_width:.2f} ± {r.bdmc_width_se:.2f} nats wide "
                     f"at this AIS budget ({r.ais_steps} steps, start: {r.ais_init}), so its AIS log p(x) is a lower "
                     "bound that may be that loose or looser on real data.")
    tight = runs[runs.bdmc_width <= BDMC_CONVERGED]
    if len(tight):
        names = ", ".join(sorted({f"{tables.LABELS[m]} ({z}-dim)" for m, z in zip(tight.method, tight.z_dim)}))
        items.append(f"AIS is converged on simulated data (BDMC sandwich narrower than {BDMC_CONVERGED:g} nat, "
                     f"widest {tight.bdmc_width.max():.2f}) for {names}.")
    if pairs is not None and not pairs.empty:
        for r in pairs[pairs.method == "avb_ac"].itertuples():
            verdict = ("AVB + AC ahead" if r.mean_diff > 2 * r.se else "the VAE ahead" if r.mean_diff < -2 * r.se
                       else "no difference beyond two standard errors")
            items.append(f"{r.z_dim}-dim, seed {r.seed}: AVB + AC − VAE = {tables.nats(r.mean_diff)} ± {r.se:.2f} nats per "
                         f"image, paired over {r.images} test images (higher on {r.frac_better:.0%}): {verdict}. The "
                         "paper reports AVB + AC ahead at 8 and 32 dimensions.")
    items.append("Nothing was tuned to match the published values. " + published.SOURCE[0].upper()
                 + published.SOURCE[1:] + ".")
    return [f"* {i}" for i in items]


def paired(per_image: list[str | Path]) -> pd.DataFrame:
    """AVB and AVB + AC against the VAE of the same dataset, latent size and seed, image by image: every model is
    scored on the same binarised test images, so the paired difference has a far smaller standard error than the
    two estimates' own. ``per_image``: ``.../<dataset>/<method>/z<z>/seed<s>/eval_per_image.csv`` files."""
    runs = {k: v.log_px_ais for k, v in claims.load_runs(per_image).items()}
    rows = []
    for (dataset, method, z, seed), lp in sorted(runs.items()):
        base = runs.get((dataset, "vae", z, seed))
        if method == "vae" or base is None:
            continue
        if not lp.index.equals(base.index):
            raise ValueError(f"{method} and vae (z={z}, seed {seed}) were evaluated on different test images")
        d = lp - base
        rows.append({"dataset": dataset, "comparison": f"{tables.LABELS[method]} − VAE", "method": method,
                     "z_dim": z, "seed": seed, "images": len(d), "mean_diff": d.mean(),
                     "se": d.std(ddof=1) / math.sqrt(len(d)), "frac_better": (d > 0).mean()})
    return pd.DataFrame(rows)


def paired_markdown(df: pd.DataFrame) -> list[str]:
    if df.empty:
        return []
    lines = ["| comparison | dataset | z | seed | images | mean difference of log p(x) (AIS) | images where higher |",
             "|---|---|---|---|---|---|---|"]
    for r in df.itertuples():
        lines.append(f"| {r.comparison} | {r.dataset} | {r.z_dim} | {r.seed} | {r.images} | "
                     f"{tables.nats(r.mean_diff)} ± {r.se:.2f} | {r.frac_better:.0%} |")
    return lines + ["", "Paired over the same binarised test images; ± is the standard error of the mean difference. "
                        "Each model's AIS estimate carries its own bias (see the BDMC sandwich), which pairing does "
                        "not remove."]


def _include(md_text: str) -> list[str]:
    """A result's Markdown inside the report: its own title dropped, its other headings demoted."""
    lines = md_text.strip().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return [re.sub(r"^#{1,2} ", "### ", line) for line in lines]


TABLE_SEPARATOR = re.compile(r"^\|(\s*:?-+:?\s*\|)+\s*$")
LINE_CHARS = 112   # characters of footnote-size text in the PDF's line (17 cm); a column gap takes 2


def column_widths(header: list[str], body: list[list[str]]) -> list[int]:
    """Relative widths of a wrapped table's columns, in characters: each its longest word (which cannot wrap; a body
    cell of up to 10 characters, such as ``≈ −109.16``, counts as one word) and one more, and what is left of the
    line shared in proportion to how much more each column's longest body cell (at most 60 characters) would take."""
    columns = [[head, *(row[c] for row in body if c < len(row))] for c, head in enumerate(header)]
    floor = [1 + max(3, *map(len, col[0].split()),
                     *(len(cell) if len(cell) <= 10 else max(map(len, cell.split())) for cell in col[1:]))
             for col in columns]
    want = [max(0, min(max(map(len, col[1:]), default=0), 60) - f) for col, f in zip(columns, floor)]
    left = max(0, LINE_CHARS - 2 * len(columns) - sum(floor))
    share = min(1.0, left / sum(want)) if sum(want) else 0.0
    return [f + round(w * share) for f, w in zip(floor, want)]


def pipe_widths(md: str) -> str:
    """Every pipe table's separator line with as many dashes as ``column_widths`` gives its columns: a Markdown
    viewer ignores them, pandoc sizes the wrapped columns of a wide table by them (equal widths otherwise)."""
    lines = md.split("\n")
    for i, line in enumerate(lines):
        if i == 0 or not TABLE_SEPARATOR.match(line) or not lines[i - 1].startswith("|"):
            continue
        end = next((j for j in range(i + 1, len(lines)) if not lines[j].startswith("|")), len(lines))
        header, *body = (latex._cells(row) for row in [lines[i - 1], *lines[i + 1:end]])
        marks = [s.strip() for s in line.strip().strip("|").split("|")]   # alignment colons kept
        lines[i] = "|" + "|".join((":" if m.startswith(":") else "") + "-" * w + (":" if m.endswith(":") else "")
                                  for m, w in zip(marks, column_widths(header, body))) + "|"
    return "\n".join(lines)


PER_RUN = ("fig7_png", "fig7_pdf", "interp_png", "interp_pdf")
RUN_DIR = re.compile(r"(?P<dataset>[^/]+)/(?P<method>[^/]+)/z(?P<z_dim>\d+)/seed(?P<seed>\d+)/[^/]+$")


def run_name(path: Path) -> str:
    """``mnist_vae_z8_seed0`` for a file in ``.../mnist/vae/z8/seed0/``."""
    m = RUN_DIR.search(path.as_posix())
    if m is None:
        raise ValueError(f"{path}: not a file of a <dataset>/<method>/z<z>/seed<s>/ run folder")
    return f"{m['dataset']}_{m['method']}_z{m['z_dim']}_seed{m['seed']}"


def run_label(path: Path) -> str:
    m = RUN_DIR.search(path.as_posix())
    return f"{tables.LABELS.get(m['method'], m['method'])} ({m['z_dim']}-dim, {m['dataset']}, seed {m['seed']})"


def render(cfg: dict[str, Any], out_dir: str | Path, inputs: dict[str, str | None]) -> None:
    """Write the report. ``inputs`` maps names (provenance_json, table2_md, summary_csv, summary_md, per_image (a
    comma-separated list), samples_png/pdf, convergence_png/pdf, toy_md, toy_png/pdf, schools_md, schools_png/pdf)
    to result files; a missing or None entry leaves its section out."""
    out = Path(out_dir)
    preset = cfg["preset"]
    prov = provenance()
    per_image = [p for p in (inputs.get("per_image") or "").split(",") if p]
    # per-run figures (comma-separated lists, one file per run); every other input is one file
    per_run = {k: [Path(p) for p in (inputs.get(k) or "").split(",") if p and Path(p).exists()] for k in PER_RUN}
    have = {k: Path(v) for k, v in inputs.items()
            if v and k != "per_image" and k not in PER_RUN and Path(v).exists()}

    def copy_file(src: Path, name: str) -> str:
        dst = out / "figures" / f"{preset}_{name}"
        with io.atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
        return str(dst.relative_to(out))

    def copy(key: str) -> str:
        return copy_file(have[key], have[key].name)

    def figure(key: str, caption: str) -> list[str]:
        if f"{key}_png" not in have:
            return []
        if f"{key}_pdf" in have:
            copy(f"{key}_pdf")
        return [f"![{caption}]({copy(key + '_png')})", ""]

    def run_grid(columns: dict[str, str], caption: str) -> list[str]:
        """The per-run figures as one grid, one row per run (a pipe table of images: a Markdown viewer shows it
        as it is, and ``templates/paper.lua`` lays it out as a figure whose rows may break across pages)."""
        cells: dict[str, dict[str, str]] = {}
        labels: dict[str, str] = {}
        for key, title in columns.items():
            pdfs = {run_name(p): p for p in per_run.get(f"{key}_pdf", [])}
            for png in per_run.get(f"{key}_png", []):
                name = run_name(png)
                if name in pdfs:
                    copy_file(pdfs[name], f"{name}_{png.stem}.pdf")   # beside its PNG: the PDF build uses it
                labels[name] = run_label(png)
                path = copy_file(png, f"{name}_{png.name}")
                cells.setdefault(name, {})[key] = f"![{title}: {run_label(png)}]({path})"
        if not cells:
            return []
        rows = ["| run | " + " | ".join(columns.values()) + " |", "|---" * (len(columns) + 1) + "|"]
        rows += [f"| {labels[name]} | " + " | ".join(cells[name].get(k, "") for k in columns) + " |" for name in cells]
        return [*rows, "", f": {caption} One row per run ({len(cells)}).", ""]

    summary = pd.read_csv(have["summary_csv"])
    pairs = paired(per_image)
    runs = provenance_log.load(have["provenance_json"]) if "provenance_json" in have else []
    md = [f"# Replication report: Adversarial Variational Bayes, preset `{preset}`", "",
          f"Generated by `snakemake paper` from `results/{preset}/`; nothing here is edited by hand.", "",
          f"* rendered by `snakemake --cores N paper --configfile config/{preset}.yaml` at commit "
          f"`{prov['commit']}` on {prov['machine']}; {prov['software']}; {prov['rendered']}",
          f"* per-job wall time and memory: `results/{preset}/**/benchmarks/*.tsv`", "",
          "### Where the numbers came from", "",
          f"Every Snakemake invocation that produced these results (`results/{preset}/provenance.json`):", "",
          *provenance_log.markdown(runs), "",
          *(["## Does the paper replicate? Its claims, checked", "", *_include(have["claims_md"].read_text()), ""]
            if "claims_md" in have else []),
          "## MNIST: Table 2 replica", "", *_include(have["table2_md"].read_text()), "",
          "### How these numbers differ from the paper's, and why", "", *discussion(summary, cfg, pairs), "",
          *(["### Paired comparisons against the VAE", "", *paired_markdown(pairs), ""] if not pairs.empty else []),
          "### All runs, with the IWAE bound and the BDMC sandwich", "",
          *(_include(have["summary_md"].read_text()) if "summary_md" in have else []), "",
          *figure("samples", f"One row per run: the decoder's Bernoulli means at {cfg['report']['n_samples']} draws "
                             "from the prior (left), test images over their reconstructions (middle) and the training "
                             "ELBO against the step (right; AVB and AVB + AC: the adversary's estimate of the KL; one "
                             "scale for every row, the last value written in)."),
          *figure("convergence", "AIS log p(x) against the number of annealing steps, and the BDMC sandwich on "
                                 "simulated images."),
          *(["### Figure 7 replica and latent interpolations, per run", ""]
            if per_run["fig7_png"] or per_run["interp_png"] else []),
          *run_grid({"fig7": "Figure 7 replica", "interp": "latent interpolations"},
                    "Left: the paper's Figure 7 replicated, (a) 64 training images beside (b) the decoder's Bernoulli "
                    "means at 64 prior draws. Right: latent interpolations, decoder means along the line between the "
                    "codes of two test images (one line per pair, the two test images at its ends).")]
    if "toy_md" in have:
        md += ["## Four-image toy (exact log p(x); optimum −log 4)", "",
               *(["### Table 1 replica", "", *_include(have["toy_table1_md"].read_text()), ""]
                 if "toy_table1_md" in have else []),
               "### Every toy run", "", *_include(have["toy_md"].read_text()), "",
               *figure("toy", "Latent space of the toy models (the paper's Figure 6) beside the exact posteriors.")]
    if "schools_md" in have:
        md += ["## Eight schools (errors against the exact posterior)", "",
               *_include(have["schools_md"].read_text()), "",
               *figure("schools_kl", "Figure 3 replica: KL to the HMC posterior against training iterations (log "
                                     "scale); faint lines: the paper's curves as read off its plot (approximate)."),
               *figure("schools", "Eight schools: (mu, tau) draws of each method beside the HMC gold standard.")]
    md += ["## Configuration", "", f"The preset `{preset}` with every default filled in:", "", "```json",
           json.dumps(cfg, indent=2, sort_keys=True), "```", "", f"Runs in the summary: {len(summary)}."]
    text = pipe_widths("\n".join(md) + "\n")
    io.write_text(text, out / "replication.md")

    io.write_text(latex.document(text, out), out / "main.tex")
