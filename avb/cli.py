"""Command line: ``avb <command>``; ``avb --help`` lists the commands, ``avb <command> --help`` their options.

Settings come from JSON files (``--config FILE``, as the pipeline's local rules write them from tracked params);
a file is checked against the schema's definition of its section (``avb.config.section``), whose defaults fill the
keys it leaves out. Only a training run's config may be changed on the command line, by hand:
``avb train CONFIG train.steps=100 model.arch=conv0 --device cuda:1`` (values read as YAML, each key and value
checked against the schema: ``avb.config.assign``); the pipeline never does so.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

import torch


DATA_DIR_HELP = ("folder holding the datasets (the config's data_dir); unset or '': AVB_DATA_DIR, ../shared/data, "
                 "then a download")
# The sections of a run config that the command line may change, and their definitions in the schema.
RUN_SECTIONS = {"model": "model", "train": "train"}
TOY_SECTIONS = {"model": "toy.model", "train": "toy.train"}
SCHOOLS_CONFIG_HELP = "JSON file of (part of) the config's schools section; unset keys take the schema defaults"


def _threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)


def _gpu_slot(device: str) -> None:
    """With ``AVB_GPUS`` set, this job's own GPU (``avb.gpus.claim``: a device slot held until the process exits,
    ``CUDA_VISIBLE_DEVICES`` set to it); taken before anything touches CUDA. Without it, nothing happens."""
    from .gpus import claim
    claim(device)


def _settings(path: str | None) -> dict:
    """The JSON settings file ``path`` (as the pipeline's local rules write them), or {} where none is given."""
    if path is None:
        return {}
    from .config import read_settings
    return read_settings(path)


SETTINGS_HELP = ("settings of the run config to change, e.g. train.steps=100 model.arch=conv0 (values read as YAML; "
                 "each key and value checked against the schema; raising train.steps alone continues the run)")
REQUIRE_GPU_HELP = ("fail (avb.device.NoCudaDevice) instead of falling back to the CPU where no CUDA device is "
                    "found, as with AVB_REQUIRE_GPU=1 (the workflow sets it for jobs whose resources ask for a GPU)")
DEVICE_HELP = "training device (auto, cpu, cuda, cuda:N): the same as train.device=DEVICE"


def _run_config(path: str, settings: list[str], device: str | None, sections: dict[str, str]) -> dict:
    """The run config in JSON file ``path`` with the command line's ``SECTION.KEY=VALUE`` settings and ``--device``
    applied (``avb.config.assign``: unknown keys and bad values are errors naming the key)."""
    from .config import assign, read_settings
    extra = [*settings, *([f"train.device={json.dumps(device)}"] if device is not None else [])]
    return assign(read_settings(path), extra, sections, f"run config {path} with {' '.join(extra)}") if extra \
        else read_settings(path)


def _add_run_settings(job: argparse.ArgumentParser) -> None:
    job.add_argument("run_config")
    job.add_argument("settings", nargs="*", metavar="SECTION.KEY=VALUE", help=SETTINGS_HELP)
    job.add_argument("--device", help=DEVICE_HELP)


def _data_dir(value: str) -> str | None:
    """``--data-dir``: '' (the pipeline's form of an unset data_dir) is unset."""
    return value or None


def _job(sub, name: str, help: str, *, model: bool = False, config: str | None = None,
         data_dir: bool = False) -> argparse.ArgumentParser:
    """A job's subcommand with the options jobs share: the model.pt it reads (``model``), its JSON settings file
    (``config``: the help text), ``--data-dir`` and ``--threads``."""
    job = sub.add_parser(name, help=help)
    if model:
        job.add_argument("model")
    if config:
        job.add_argument("--config", help=config)
    if data_dir:
        job.add_argument("--data-dir", type=_data_dir, help=DATA_DIR_HELP)
    job.add_argument("--threads", type=int)
    job.add_argument("--require-gpu", action="store_true", help=REQUIRE_GPU_HELP)
    return job


class _CommandsFormatter(argparse.HelpFormatter):
    """``avb --help``: one line per command (the descriptions start after the longest command name)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=24, width=120)
        self._action_max_length = 18  # "    check-config" + 2: argparse does not count the commands' own names


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("avb-replication")
    except PackageNotFoundError:  # a checkout on PYTHONPATH, not installed
        return "unknown (not installed)"


def _toy(a: argparse.Namespace) -> str:
    """``avb toy train | evaluate | report``."""
    if a.toy_cmd == "train":
        from .train import train
        run = _run_config(a.run_config, a.settings, a.device, TOY_SECTIONS)
        _gpu_slot(run["train"]["device"])
        return str(train(run, a.out))
    if a.toy_cmd == "evaluate":
        from .config import section
        from .toy import evaluate, write_eval
        settings = section("toy.eval", _settings(a.config), f"toy eval settings {a.config or ''}")
        _gpu_slot(settings["device"])
        summary, arrays = evaluate(a.model, settings)
        write_eval(summary, arrays, a.out_json, a.out_npz)
        return json.dumps(summary, indent=2)
    if len(a.evals) != len(a.npz):
        raise ValueError("--evals and --npz need one file per method each")
    from .report.toy import report
    md = report(a.evals, a.npz, a.out_csv, a.out_md, a.out_png, a.out_pdf, a.out_table1)
    _runs_curves(a.metrics, a.out_curves, "Toy experiment: training curves")
    return md


def _runs_curves(metrics: list[str], out: list[str] | None, title: str) -> None:
    """``--metrics`` / ``--out-curves`` of ``toy report`` and ``schools report``: one row per run, labelled by its
    method (the name of the folder holding its train_metrics.csv)."""
    if not out:
        return
    if not metrics:
        raise ValueError("--out-curves needs --metrics")
    import os
    from .methods import LABELS
    from .report.curves import runs_curves
    method = lambda path: os.path.basename(os.path.dirname(os.path.abspath(path)))  # noqa: E731
    runs_curves([(LABELS.get(method(m), method(m)), m) for m in metrics], *out, title=title)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="avb", description="Adversarial Variational Bayes, replicated: the jobs of the Snakemake pipeline "
                                "(each reads its settings from a JSON file: --config).",
        epilog="`avb <command> --help` lists a command's options.",
        formatter_class=_CommandsFormatter)
    p.add_argument("--version", action="version", version=f"avb-replication {_version()}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="<command>", title="commands")

    t = _job(sub, "train", "train one run from its resolved run config (JSON), optionally changed", data_dir=True)
    _add_run_settings(t)
    t.add_argument("--out", required=True, help="run folder: model.pt, checkpoint.pt, train_metrics.csv")

    e = _job(sub, "evaluate", "AIS log-likelihood and ELBO of a trained model on test images", model=True,
             config="JSON file of eval settings (a run's eval section, as eval_config.json); unset keys take the "
                    "schema's defaults", data_dir=True)
    e.add_argument("--out-csv", required=True, help="per-image CSV (written atomically)")
    e.add_argument("--out-json", required=True, help="summary JSON (written atomically)")

    v = _job(sub, "convergence", "AIS log p(x) against the annealing budget, with the BDMC sandwich", model=True,
             config="JSON file {eval: AIS settings, steps: budgets, n_images: N} (as convergence_config.json); "
                    "unset keys take the schema defaults", data_dir=True)
    v.add_argument("--out-csv", required=True)

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

    f = _job(sub, "figures", "per run: the Figure 7 replica and latent interpolations (PNG + PDF)", model=True,
             data_dir=True)
    f.add_argument("--out-fig7", nargs=2, metavar=("PNG", "PDF"), required=True)
    f.add_argument("--out-interp", nargs=2, metavar=("PNG", "PDF"), required=True)
    f.add_argument("--seed", type=int, default=0, help="prior draws; training images seed + 1; test images seed + 2")
    f.add_argument("--metrics", help="train_metrics.csv of the run (for --out-curves)")
    f.add_argument("--val-metrics", nargs="?", help="val_metrics.csv of the run (validation on; for --out-curves)")
    f.add_argument("--out-curves", nargs=2, metavar=("PNG", "PDF"),
                   help="the training and validation curves (needs --metrics)")

    s = sub.add_parser("schools", help="eight schools: gold-standard HMC, ADVI / AVB fits, Figure 3, report")
    ss = s.add_subparsers(dest="schools_cmd", required=True)
    sg = _job(ss, "gold", "gold-standard HMC chains and their diagnostics", config=SCHOOLS_CONFIG_HELP)
    sg.add_argument("--out-npz", required=True)
    sg.add_argument("--out-json", required=True)
    sf = _job(ss, "fit", "train one method (avb.train.fit) and draw its posterior samples", config=SCHOOLS_CONFIG_HELP)
    sf.add_argument("--method", required=True, choices=["advi_meanfield", "advi_fullrank", "avb", "avb_ac"])
    sf.add_argument("--out", required=True, help="run folder: model.pt, checkpoint.pt, train_metrics.csv, "
                    "samples.npz, fit.json")
    sr = _job(ss, "report", "summary CSV / Markdown, per-parameter CSV and the (mu, tau) figure",
              config=SCHOOLS_CONFIG_HELP)
    sr.add_argument("--gold-npz", required=True)
    sr.add_argument("--gold-json", required=True)
    sr.add_argument("--fits", nargs="*", default=[], help="fit.json files (or run folders) of `avb schools fit`")
    sr.add_argument("--out-csv", required=True)
    sr.add_argument("--out-md", required=True)
    sr.add_argument("--out-params", required=True)
    sr.add_argument("--out-fig", required=True, help="figure path; written as .png and .pdf")
    sr.add_argument("--kl-curve", help="kl_curve.csv of `avb schools kl`: its last iteration joins the summary")
    sr.add_argument("--metrics", nargs="*", default=[], help="train_metrics.csv of each fit (for --out-curves)")
    sr.add_argument("--out-curves", nargs=2, metavar=("PNG", "PDF"), help="the fits' training curves")
    sk = _job(ss, "kl", "Figure 3 replica: kNN KL(method || HMC) of the training snapshots, CSV + figure",
              config=SCHOOLS_CONFIG_HELP)
    sk.add_argument("--gold-npz", required=True)
    sk.add_argument("--snapshots", nargs="+", required=True, help="snapshots.npz files of `avb schools fit`")
    sk.add_argument("--out-csv", required=True)
    sk.add_argument("--out-png", required=True)
    sk.add_argument("--out-pdf", required=True)

    toy = sub.add_parser("toy", help="four-image toy: train, evaluate (exact log p(x)), report")
    ts = toy.add_subparsers(dest="toy_cmd", required=True)
    tt = _job(ts, "train", "train one toy run from its run config (JSON), optionally changed")
    _add_run_settings(tt)
    tt.add_argument("--out", required=True, help="run folder: model.pt, checkpoint.pt, train_metrics.csv")
    te = _job(ts, "evaluate", "exact log p(x) by quadrature, posteriors, ELBO and KL estimates", model=True,
              config="JSON file of toy eval settings (the toy.eval section of a config, as eval_config.json); unset "
                     "keys take the schema defaults")
    te.add_argument("--out-json", required=True)
    te.add_argument("--out-npz", required=True, help="grid posteriors and encoder samples for the figure")
    tr = ts.add_parser("report", help="summary CSV, Markdown and the latent-space figure (PNG + PDF)")
    tr.add_argument("--evals", nargs="+", required=True)
    tr.add_argument("--npz", nargs="+", required=True)
    tr.add_argument("--out-csv", required=True)
    tr.add_argument("--out-md", required=True)
    tr.add_argument("--out-png", required=True)
    tr.add_argument("--out-pdf", required=True)
    tr.add_argument("--out-table1", nargs=3, metavar=("CSV", "MD", "TEX"),
                    help="the Table 1 replica: ours beside the paper's printed values (avb/report/published.py)")
    tr.add_argument("--metrics", nargs="*", default=[], help="train_metrics.csv of each run (for --out-curves)")
    tr.add_argument("--out-curves", nargs=2, metavar=("PNG", "PDF"), help="the runs' training curves")

    pp = sub.add_parser("paper", help="render paper/replication.md and paper/main.tex from a preset's results")
    pp.add_argument("--config", required=True, help="JSON file of the validated preset config (paper_config.json); "
                                                    "the results are read from its results_dir/preset "
                                                    "(avb.layout.paper_inputs)")
    pp.add_argument("--out", default="paper", help="folder to render into; replaced file by file only once all of "
                                                    "it rendered (a failed render leaves it as it was)")
    pp.add_argument("--stamp", help="JSON file written last: the files written into --out and their sha256")
    pp.add_argument("--latex", action="store_true", help="also build main.pdf with latexmk, where installed")

    cl = sub.add_parser("claims", help="the paper's claims checked against a preset's results")
    cl.add_argument("--per-image", nargs="*", default=[], help="eval_per_image.csv files of the MNIST runs")
    cl.add_argument("--summary", help="summary.csv of the MNIST runs (BDMC caveats)")
    cl.add_argument("--toy", nargs="?", help="toy/summary.csv (none: the toy claims are left out)")
    cl.add_argument("--schools", nargs="?", help="schools/summary.csv (none: the schools claims are left out)")
    cl.add_argument("--out-csv", required=True)
    cl.add_argument("--out-md", required=True)

    rd = sub.add_parser("readme", help="rewrite README.md's results block from a published run's files")
    rd.add_argument("run_dir", help="the run's results folder, e.g. results/cpu")
    rd.add_argument("--readme", default="README.md")
    rd.add_argument("--check", action="store_true", help="only check that the block is up to date (exit 1 if not)")

    c = sub.add_parser("check-config", help="validate a preset config and print it with defaults filled in")
    c.add_argument("config", nargs="+", help="the preset file, then any override files merged over it in order (as "
                                             "snakemake --configfile PRESET MORE.yaml)")
    c.add_argument("--config", dest="cli_config", nargs="+", default=[], metavar="KEY=VALUE",
                   help="then these, as snakemake --config reads them (values YAML): 'train={steps: 100}'")
    c.add_argument("--rows", action="store_true", help="instead: one JSON object per line, one line per run of the "
                   "sweep, with its method, dataset, z_dim, seed and resolved model, train and eval sections")

    pl = sub.add_parser("plan", help="expected GPU-hours of a preset's jobs, from measured or given throughput")
    pl.add_argument("--configfile", required=True, help="the preset, e.g. config/paper.yaml")
    pl.add_argument("--throughput", help="JSON file of benchmarks/gpu_throughput.py --out (rates per method)")
    pl.add_argument("--img-per-s", type=float, help="training images per second, for every method (replaces the "
                                                    "file's)")
    pl.add_argument("--ais-evals-per-s", type=float, help="AIS latent-gradient evaluations per second, for every "
                                                          "method (replaces the file's)")

    a = p.parse_args(argv)
    if getattr(a, "require_gpu", False):
        import os
        from .device import ENV_REQUIRE_GPU
        os.environ[ENV_REQUIRE_GPU] = "1"
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    try:
        if a.cmd == "train":
            from .train import train
            _threads(a.threads)
            run = _run_config(a.run_config, a.settings, a.device, RUN_SECTIONS)
            _gpu_slot(run["train"]["device"])
            print(train(run, a.out, data_dir=a.data_dir))
        elif a.cmd == "evaluate":
            from .config import section
            from .evaluate import evaluate
            _threads(a.threads)
            settings = section("eval", _settings(a.config), f"evaluate settings {a.config or ''}")
            _gpu_slot(settings["device"])
            s = evaluate(a.model, settings, a.out_csv, a.out_json, data_dir=a.data_dir)
            print(json.dumps(s, indent=2))
        elif a.cmd == "convergence":
            from .config import ConfigError, section
            from .evaluate import ais_convergence
            _threads(a.threads)
            given, source = _settings(a.config), f"convergence settings {a.config or ''}"
            extra = set(given) - {"eval", "steps", "n_images"}
            if extra:
                raise ConfigError(f"{source}: unknown keys {sorted(extra)} (allowed: eval, steps, n_images)")
            ev = section("eval", given.get("eval", {}), source)
            conv = section("convergence", {k: given[k] for k in ("steps", "n_images") if k in given}, source)
            _gpu_slot(ev["device"])
            print(ais_convergence(a.model, ev, conv["steps"], conv["n_images"], a.out_csv,
                                  data_dir=a.data_dir).to_string(index=False))
        elif a.cmd == "report":
            from .report import figures, tables
            from .config import section
            from .experiments import load_model
            if len(a.out_convergence) not in (0, 2):
                p.error("report: --out-convergence takes two paths (PNG PDF) or none")
            n_samples = section("report", _settings(a.config), f"report settings {a.config or ''}")["n_samples"]
            df = tables.write(a.evals, a.out_csv, a.out_md)
            runs = [{"label": figures.run_label(load_model(m)[1]), "model": m, "metrics": x}
                    for m, x in zip(a.models, a.metrics)]
            figures.samples_and_curves(runs, a.out_png, n_samples, a.out_pdf)
            if a.table2:
                tables.write_table2(df, *a.table2)
            if a.convergence and a.out_convergence:
                figures.ais_convergence(a.convergence, *a.out_convergence)
            print(tables.markdown(df))
        elif a.cmd == "figures":
            from .report import figures
            _threads(a.threads)
            if a.out_curves and not a.metrics:
                p.error("figures: --out-curves needs --metrics")
            figures.run_figures(a.model, a.out_fig7, a.out_interp, a.seed, data_dir=a.data_dir)
            if a.out_curves:
                from . import io
                from .report.curves import training_curves
                run = io.load_torch(a.model, "cpu", ("run",))["run"]
                training_curves(a.metrics, *a.out_curves, val_csv=a.val_metrics or None,
                                title=f"{figures.run_label(run)}, {run['dataset']}")
            print(f"wrote {' '.join(a.out_fig7 + a.out_interp + (a.out_curves or []))}")
        elif a.cmd == "schools":
            from . import schools
            from .config import section
            _threads(a.threads)
            settings = section("schools", _settings(a.config), f"schools settings {a.config or ''}")
            if a.schools_cmd == "fit":
                _gpu_slot(settings["device"])
                info = schools.fit_method(schools.run_config(settings, a.method), a.out)
                print(json.dumps({k: v for k, v in info.items() if k != "run"}))
            elif a.schools_cmd == "gold":
                d = schools.gold_standard(settings, a.out_npz, a.out_json)
                print(json.dumps({k: d[k] for k in ("rhat_max", "rank_rhat_max", "ess_min", "seconds")}))
            elif a.schools_cmd == "kl":
                from . import schools_kl
                df = schools_kl.write(a.gold_npz, a.snapshots, settings, a.out_csv, a.out_png, a.out_pdf)
                print(df.to_string(index=False))
            else:
                import os
                from .report.schools import report
                fits = [os.path.dirname(f) if f.endswith(".json") else f for f in a.fits]  # fit.json -> its folder
                print(report(a.gold_npz, a.gold_json, fits, settings, a.out_csv, a.out_md, a.out_fig,
                             a.out_params, a.kl_curve))
                _runs_curves(a.metrics, a.out_curves, "Eight schools: training curves")
        elif a.cmd == "toy":
            _threads(getattr(a, "threads", None))
            print(_toy(a))
        elif a.cmd == "paper":
            from .layout import paper_reads
            from .report.publish import paper
            cfg = _settings(a.config)
            written = paper(cfg, a.out, paper_reads(cfg), a.stamp, latex=a.latex)
            print(f"wrote {', '.join(str(p) for p in written) or 'nothing new'}")
        elif a.cmd == "claims":
            from .report import claims
            df = claims.write(a.per_image, a.summary, a.toy, a.schools, a.out_csv, a.out_md)
            print(claims.markdown(df))
        elif a.cmd == "readme":
            from .report import readme
            if a.check:
                from pathlib import Path
                text = Path(a.readme).read_text()
                if readme.block(a.run_dir) not in text:
                    print(f"{a.readme}: its results block is out of date; run `avb readme {a.run_dir}`",
                          file=sys.stderr)
                    return 1
                print(f"{a.readme}: results block up to date with {a.run_dir}")
            else:
                changed = readme.update(a.readme, a.run_dir)
                print(f"{a.readme}: results block {'rewritten' if changed else 'already up to date'} from {a.run_dir}")
        elif a.cmd == "plan":
            from . import plan
            from .config import load
            if a.throughput is None and a.img_per_s is None:
                p.error("plan: give --throughput FILE (benchmarks/gpu_throughput.py --out) or --img-per-s N")
            cfg = load(a.configfile)
            rates = plan.read_rates(a.throughput) if a.throughput else None
            rates = plan.with_given(rates, a.img_per_s, a.ais_evals_per_s, list(cfg["methods"]))
            print(plan.render(plan.plan(cfg, rates), rates, f"avb plan: {a.configfile} (preset {cfg['preset']}), "
                              f"GPU-hours per job, each alone on one GPU"))
        elif a.cmd == "check-config":
            from .config import load_merged, rows
            cfg = load_merged(a.config, a.cli_config)
            if a.rows:
                for row in rows(cfg):
                    print(json.dumps(row, sort_keys=True))
            else:
                print(json.dumps(cfg, indent=2))
    except Exception as err:  # one clear line for users; the traceback stays available with AVB_DEBUG=1
        import os
        if os.environ.get("AVB_DEBUG"):
            raise
        print(f"avb {a.cmd}: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
