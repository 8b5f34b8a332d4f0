"""``avb train | evaluate | convergence | figures | report``: the MNIST-type runs' jobs (one run each, then the
preset's summary)."""
from __future__ import annotations

import argparse
import json

from .common import RUN_SECTIONS, add_run_settings, gpu_slot, job, run_config, settings, threads


def add(sub) -> None:
    t = job(sub, "train", "train one run from its resolved run config (JSON), optionally changed", data=True)
    add_run_settings(t)
    t.add_argument("--out", required=True, help="run folder: model.pt, checkpoint.pt, train_metrics.csv")
    t.set_defaults(func=train)

    e = job(sub, "evaluate", "AIS log-likelihood and ELBO of a trained model on test images", model=True,
            config="JSON file of eval settings (a run's eval section, as eval_config.json); unset keys take the "
                   "schema's defaults", data=True)
    e.add_argument("--out-csv", required=True, help="per-image CSV (written atomically)")
    e.add_argument("--out-json", required=True, help="summary JSON (written atomically)")
    e.set_defaults(func=evaluate)

    v = job(sub, "convergence", "AIS log p(x) against the annealing budget, with the BDMC sandwich", model=True,
            config="JSON file {eval: AIS settings, steps: budgets, n_images: N} (as convergence_config.json); "
                   "unset keys take the schema defaults", data=True)
    v.add_argument("--out-csv", required=True)
    v.set_defaults(func=convergence)

    r = sub.add_parser("report", help="summary CSV, Markdown table and figure from evaluated runs")
    r.add_argument("--evals", nargs="+", required=True)
    r.add_argument("--models", nargs="+", required=True)
    r.add_argument("--metrics", nargs="+", required=True)
    r.add_argument("--out-csv", required=True)
    r.add_argument("--out-md", required=True)
    r.add_argument("--out-png", required=True)
    r.add_argument("--config", help="JSON file of the config's report section (as report_config.json)")
    r.add_argument("--out-pdf", help="the samples figure as PDF too")
    r.add_argument("--table2", nargs=3, metavar=("CSV", "MD", "TEX"),
                   help="write the Table 2 replica (mean ± 95%% CI over seeds, published values beside)")
    r.add_argument("--convergence", nargs="*", default=[], help="ais_convergence.csv files of the runs (none: no "
                                                                "convergence figure)")
    r.add_argument("--out-convergence", nargs="*", default=[], metavar="PNG PDF",
                   help="the AIS convergence / BDMC figure (two paths, or none)")
    r.set_defaults(func=report, parser=r)

    f = job(sub, "figures", "per run: the Figure 7 replica and latent interpolations (PNG + PDF)", model=True,
            data=True)
    f.add_argument("--out-fig7", nargs=2, metavar=("PNG", "PDF"), required=True)
    f.add_argument("--out-interp", nargs=2, metavar=("PNG", "PDF"), required=True)
    f.add_argument("--seed", type=int, default=0, help="prior draws; training images seed + 1; test images seed + 2")
    f.add_argument("--metrics", help="train_metrics.csv of the run (for --out-curves)")
    f.add_argument("--val-metrics", nargs="?", help="val_metrics.csv of the run (validation on; for --out-curves)")
    f.add_argument("--out-curves", nargs=2, metavar=("PNG", "PDF"),
                   help="the training and validation curves (needs --metrics)")
    f.set_defaults(func=figures, parser=f)


def train(a: argparse.Namespace) -> None:
    from ..train import train as fit_run
    threads(a.threads)
    run = run_config(a.run_config, a.settings, a.device, RUN_SECTIONS)
    gpu_slot(run["train"]["device"])
    print(fit_run(run, a.out, data_dir=a.data_dir))


def evaluate(a: argparse.Namespace) -> None:
    from ..config import section
    from ..evaluate import evaluate as score
    threads(a.threads)
    ev = section("eval", settings(a.config), f"evaluate settings {a.config or ''}")
    gpu_slot(ev["device"])
    print(json.dumps(score(a.model, ev, a.out_csv, a.out_json, data_dir=a.data_dir), indent=2))


def convergence(a: argparse.Namespace) -> None:
    from ..config import ConfigError, section
    from ..evaluate import ais_convergence
    threads(a.threads)
    given, source = settings(a.config), f"convergence settings {a.config or ''}"
    extra = set(given) - {"eval", "steps", "n_images"}
    if extra:
        raise ConfigError(f"{source}: unknown keys {sorted(extra)} (allowed: eval, steps, n_images)")
    ev = section("eval", given.get("eval", {}), source)
    conv = section("convergence", {k: given[k] for k in ("steps", "n_images") if k in given}, source)
    gpu_slot(ev["device"])
    print(ais_convergence(a.model, ev, conv["steps"], conv["n_images"], a.out_csv,
                          data_dir=a.data_dir).to_string(index=False))


def report(a: argparse.Namespace) -> None:
    from ..config import section
    from ..experiments import load_model
    from ..report import figures, tables
    if len(a.out_convergence) not in (0, 2):
        a.parser.error("report: --out-convergence takes two paths (PNG PDF) or none")
    n_samples = section("report", settings(a.config), f"report settings {a.config or ''}")["n_samples"]
    df = tables.write(a.evals, a.out_csv, a.out_md)
    runs = [{"label": figures.run_label(load_model(m)[1]), "model": m, "metrics": x}
            for m, x in zip(a.models, a.metrics)]
    figures.samples_and_curves(runs, a.out_png, n_samples, a.out_pdf)
    if a.table2:
        tables.write_table2(df, *a.table2)
    if a.convergence and a.out_convergence:
        figures.ais_convergence(a.convergence, *a.out_convergence)
    print(tables.markdown(df))


def figures(a: argparse.Namespace) -> None:
    from ..report import figures as draw
    threads(a.threads)
    if a.out_curves and not a.metrics:
        a.parser.error("figures: --out-curves needs --metrics")
    draw.run_figures(a.model, a.out_fig7, a.out_interp, a.seed, data_dir=a.data_dir)
    if a.out_curves:
        from .. import io
        from ..report.curves import training_curves
        run = io.load_torch(a.model, "cpu", ("run",))["run"]
        training_curves(a.metrics, *a.out_curves, val_csv=a.val_metrics or None,
                        title=f"{draw.run_label(run)}, {run['dataset']}")
    print(f"wrote {' '.join(a.out_fig7 + a.out_interp + (a.out_curves or []))}")
