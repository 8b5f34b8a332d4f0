"""Where a preset's results live: every output of the pipeline under ``<results_dir>/<preset>/``.

The Snakefile declares its rules' files with these names, and ``avb paper`` finds its inputs with them, so the
layout is written down once. Paths are relative to the workflow's working directory, as Snakemake gives them.
Torch-free (the Snakefile imports it).
"""
from __future__ import annotations

import os
from typing import Any

from .config import sweep

# One MNIST-type run: <out>/runs/<dataset>/<method>/z<z_dim>/seed<seed>/ (a Snakemake wildcard pattern).
RUN = "runs/{dataset}/{method}/z{z_dim}/seed{seed}"
# Per run: the Figure 7 replica, the latent interpolations and the training / validation curves (rule run_figures).
RUN_FIGURES = ("fig7.png", "fig7.pdf", "interpolations.png", "interpolations.pdf", "curves.png", "curves.pdf")
TOY = "toy"
SCHOOLS = "schools"
TOY_REPORT = ("summary.csv", "summary.md", "latent_space.png", "latent_space.pdf", "table1.csv", "table1.md",
              "table1.tex", "training_curves.png", "training_curves.pdf")
SCHOOLS_REPORT = ("summary.csv", "summary.md", "per_parameter.csv", "mu_tau.png", "mu_tau.pdf", "kl_curve.csv",
                  "kl_iterations.png", "kl_iterations.pdf", "training_curves.png", "training_curves.pdf")


def out_dir(cfg: dict[str, Any]) -> str:
    """``<results_dir>/<preset>`` (normalised), the folder of every output of the preset ``cfg``."""
    return os.path.normpath(os.path.join(cfg["results_dir"], cfg["preset"]))


def run_files(cfg: dict[str, Any], name: str) -> list[str]:
    """The file ``name`` of every run of the sweep, in sweep order."""
    return [f"{out_dir(cfg)}/{RUN}/{name}".format(**w) for w in sweep(cfg)]


def toy_targets(cfg: dict[str, Any]) -> list[str]:
    """The toy experiment's report files (none where it is off)."""
    return [f"{out_dir(cfg)}/{TOY}/{name}" for name in TOY_REPORT] if cfg["toy"]["enabled"] else []


def schools_targets(cfg: dict[str, Any]) -> list[str]:
    """The eight-schools experiment's report files (none where it is off)."""
    return [f"{out_dir(cfg)}/{SCHOOLS}/{name}" for name in SCHOOLS_REPORT] if cfg["schools"]["enabled"] else []


def paper_inputs(cfg: dict[str, Any]) -> dict[str, str | list[str]]:
    """name -> result file(s) that ``avb paper`` renders from (lists: one file per run, in sweep order); sections
    whose experiment is off are left out. ``provenance.json`` is read but is no input of the rule: each invocation's
    own hooks rewrite it, which must not make paper/ look outdated (``paper_reads``)."""
    out, toy, schools = out_dir(cfg), f"{out_dir(cfg)}/{TOY}", f"{out_dir(cfg)}/{SCHOOLS}"
    files: dict[str, str | list[str]] = {
        "table2_md": f"{out}/table2.md", "claims_md": f"{out}/claims.md", "summary_csv": f"{out}/summary.csv",
        "summary_md": f"{out}/summary.md", "samples_png": f"{out}/samples_and_curves.png",
        "samples_pdf": f"{out}/samples_and_curves.pdf", "per_image": run_files(cfg, "eval_per_image.csv"),
        "fig7_png": run_files(cfg, "fig7.png"), "fig7_pdf": run_files(cfg, "fig7.pdf"),
        "interp_png": run_files(cfg, "interpolations.png"), "interp_pdf": run_files(cfg, "interpolations.pdf")}
    if cfg["convergence"]["enabled"]:
        files.update(convergence_png=f"{out}/ais_convergence.png", convergence_pdf=f"{out}/ais_convergence.pdf")
    if cfg["toy"]["enabled"]:
        files.update(toy_md=f"{toy}/summary.md", toy_png=f"{toy}/latent_space.png", toy_pdf=f"{toy}/latent_space.pdf",
                     toy_table1_md=f"{toy}/table1.md")
    if cfg["schools"]["enabled"]:
        files.update(schools_md=f"{schools}/summary.md", schools_png=f"{schools}/mu_tau.png",
                     schools_pdf=f"{schools}/mu_tau.pdf", schools_kl_png=f"{schools}/kl_iterations.png",
                     schools_kl_pdf=f"{schools}/kl_iterations.pdf", schools_kl_csv=f"{schools}/kl_curve.csv")
    return files


def paper_reads(cfg: dict[str, Any]) -> dict[str, str]:
    """What ``avb paper`` renders from, as ``avb.report.paper.render`` takes it: ``provenance_json`` and the
    ``paper_inputs`` (lists joined by commas, the render's form)."""
    files = {k: ",".join(v) if isinstance(v, list) else v for k, v in paper_inputs(cfg).items()}
    return {"provenance_json": f"{out_dir(cfg)}/provenance.json", **files}
