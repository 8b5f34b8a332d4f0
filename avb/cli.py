"""Command line: ``avb train``, ``avb evaluate``, ``avb figures``, ``avb report``, ``avb check-config``, ...

Settings come from JSON files (``--config FILE``, as the pipeline's local rules write them from tracked params),
never from a JSON string on the command line.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

import torch


DATA_DIR_HELP = ("folder holding the datasets (the config's data_dir); unset: AVB_DATA_DIR, ../shared/data, then a "
                 "download")
SCHOOLS_CONFIG_HELP = "JSON file of (part of) the config's schools section; unset keys take the schema defaults"


def _threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)


def _settings(path: str | None) -> dict:
    """The JSON settings file ``path`` (as the pipeline's local rules write them), or {} where none is given."""
    if path is None:
        return {}
    from .config import read_settings
    return read_settings(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="avb", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train one run from its resolved run config (JSON)")
    t.add_argument("run_config")
    t.add_argument("--out", required=True, help="run folder: model.pt, checkpoint.pt, train_metrics.csv")
    t.add_argument("--data-dir", help=DATA_DIR_HELP)
    t.add_argument("--threads", type=int)

    e = sub.add_parser("evaluate", help="AIS log-likelihood and ELBO of a trained model on test images")
    e.add_argument("model")
    e.add_argument("--config", help="JSON file of eval settings (a run's eval section, as eval_config.json); unset "
                                    "keys take the schema defaults, i.e. 1000 AIS steps x 5 chains on 2048 test images")
    e.add_argument("--n-test", type=int, help="overrides the file's n_test")
    e.add_argument("--ais-steps", type=int, help="overrides the file's ais_steps")
    e.add_argument("--ais-chains", type=int, help="overrides the file's ais_chains")
    e.add_argument("--data-dir", help=DATA_DIR_HELP)
    e.add_argument("--out-csv", required=True, help="per-image CSV (written atomically)")
    e.add_argument("--out-json", required=True, help="summary JSON (written atomically)")
    e.add_argument("--threads", type=int)

    v = sub.add_parser("convergence", help="AIS log p(x) against the number of annealing steps, with BDMC bounds")
    v.add_argument("model")
    v.add_argument("--config", help="JSON file {eval: AIS settings, steps: budgets, n_images: N} (as "
                                    "convergence_config.json); unset keys take the schema defaults")
    v.add_argument("--steps", type=int, nargs="+", help="annealing budgets (overrides the file's)")
    v.add_argument("--n-images", type=int, help="test (and simulated) images (overrides the file's)")
    v.add_argument("--data-dir", help=DATA_DIR_HELP)
    v.add_argument("--out-csv", required=True)
    v.add_argument("--threads", type=int)

    r = sub.add_parser("report", help="summary CSV, Markdown table and figure from evaluated runs")
    r.add_argument("--evals", nargs="+", required=True)
    r.add_argument("--models", nargs="+", required=True)
    r.add_argument("--metrics", nargs="+", required=True)
    r.add_argument("--out-csv", required=True)
    r.add_argument("--out-md", required=True)
    r.add_argument("--out-png", required=True)
    r.add_argument("--config", help="JSON file of the config's report section (as report_config.json)")
    r.add_argument("--n-samples", type=int, help="decoder samples per run in the figure (overrides the file's)")
    r.add_argument("--out-pdf", help="the samples figure as PDF too")
    r.add_argument("--table2", nargs=3, metavar=("CSV", "MD", "TEX"),
                   help="write the Table 2 replica (mean ± 95%% CI over seeds, published values beside)")
    r.add_argument("--convergence", nargs="*", default=[], help="ais_convergence.csv files of the runs")
    r.add_argument("--out-convergence", nargs=2, metavar=("PNG", "PDF"), help="the AIS convergence / BDMC figure")

    f = sub.add_parser("figures", help="per run: the Figure 7 replica (training images beside samples) and latent "
                                       "interpolations between test images")
    f.add_argument("model")
    f.add_argument("--out-fig7", nargs=2, metavar=("PNG", "PDF"), required=True)
    f.add_argument("--out-interp", nargs=2, metavar=("PNG", "PDF"), required=True)
    f.add_argument("--seed", type=int, default=0, help="prior draws; training images seed + 1; test images seed + 2")
    f.add_argument("--data-dir", help=DATA_DIR_HELP)
    f.add_argument("--threads", type=int)

    s = sub.add_parser("schools", help="eight-schools experiment: gold-standard HMC, ADVI / AVB fits, report")
    ss = s.add_subparsers(dest="schools_cmd", required=True)
    sg = ss.add_parser("gold", help="gold-standard HMC chains and their diagnostics")
    sg.add_argument("--config", help=SCHOOLS_CONFIG_HELP)
    sg.add_argument("--out-npz", required=True)
    sg.add_argument("--out-json", required=True)
    sg.add_argument("--threads", type=int)
    sf = ss.add_parser("fit", help="train one method (avb.train.fit) and draw its posterior samples")
    sf.add_argument("--method", required=True, choices=["advi_meanfield", "advi_fullrank", "avb", "avb_ac"])
    sf.add_argument("--config", help=SCHOOLS_CONFIG_HELP)
    sf.add_argument("--out", required=True, help="run folder: model.pt, checkpoint.pt, train_metrics.csv, "
                    "samples.npz, fit.json")
    sf.add_argument("--threads", type=int)
    sr = ss.add_parser("report", help="summary CSV / Markdown, per-parameter CSV and the (mu, tau) figure")
    sr.add_argument("--gold-npz", required=True)
    sr.add_argument("--gold-json", required=True)
    sr.add_argument("--fits", nargs="*", default=[], help="run folders of `avb schools fit`")
    sr.add_argument("--config", help=SCHOOLS_CONFIG_HELP)
    sr.add_argument("--out-csv", required=True)
    sr.add_argument("--out-md", required=True)
    sr.add_argument("--out-params", required=True)
    sr.add_argument("--out-fig", required=True, help="figure path; written as .png and .pdf")
    sr.add_argument("--kl-curve", help="kl_curve.csv of `avb schools kl`: its last iteration joins the summary")
    sr.add_argument("--threads", type=int)
    sk = ss.add_parser("kl", help="Figure 3 replica: kNN KL(method || HMC) of the training snapshots, CSV + figure")
    sk.add_argument("--gold-npz", required=True)
    sk.add_argument("--snapshots", nargs="+", required=True, help="snapshots.npz files of `avb schools fit`")
    sk.add_argument("--config", help=SCHOOLS_CONFIG_HELP)
    sk.add_argument("--out-csv", required=True)
    sk.add_argument("--out-png", required=True)
    sk.add_argument("--out-pdf", required=True)
    sk.add_argument("--threads", type=int)

    from .toy import add_cli_arguments as _toy_arguments
    _toy_arguments(sub.add_parser("toy", help="four-image toy experiment: train / evaluate (exact log p(x)) / report"))

    pp = sub.add_parser("paper", help="render paper/replication.md and paper/main.tex from a preset's results")
    pp.add_argument("--config", required=True, help="JSON file of the validated preset config (paper_config.json)")
    pp.add_argument("--out", default="paper", help="folder to render into; replaced file by file only once all of "
                                                    "it rendered (a failed render leaves it as it was)")
    pp.add_argument("--stamp", help="JSON file written last: the files written into --out and their sha256")
    pp.add_argument("--latex", action="store_true", help="also build main.pdf with latexmk, where installed")
    pp.add_argument("--inputs", nargs="+", required=True, help="name=path pairs of result files (per_image=a,b,...: a comma-separated list)")

    cl = sub.add_parser("claims", help="the paper's claims checked against a preset's results (CSV + Markdown)")
    cl.add_argument("--per-image", nargs="*", default=[], help="eval_per_image.csv files of the MNIST runs")
    cl.add_argument("--summary", help="summary.csv of the MNIST runs (BDMC caveats)")
    cl.add_argument("--toy", help="toy/summary.csv")
    cl.add_argument("--schools", help="schools/summary.csv")
    cl.add_argument("--out-csv", required=True)
    cl.add_argument("--out-md", required=True)

    rd = sub.add_parser("readme", help="rewrite README.md's results block from a published run's files")
    rd.add_argument("run_dir", help="the run's results folder, e.g. results/cpu")
    rd.add_argument("--readme", default="README.md")
    rd.add_argument("--check", action="store_true", help="only check that the block is up to date (exit 1 if not)")

    c = sub.add_parser("check-config", help="validate a preset config and print it with defaults filled in")
    c.add_argument("config")
    c.add_argument("--rows", action="store_true", help="instead: one JSON object per line, one line per run of the "
                   "sweep, with its method, dataset, z_dim, seed and resolved model, train and eval sections")

    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    try:
        if a.cmd == "train":
            from .train import read_run_config, train
            _threads(a.threads)
            print(train(read_run_config(a.run_config), a.out, data_dir=a.data_dir))
        elif a.cmd == "evaluate":
            from .config import validate
            from .evaluate import evaluate
            _threads(a.threads)
            given = _settings(a.config)
            for key in ("n_test", "ais_steps", "ais_chains"):
                if getattr(a, key) is not None:
                    given[key] = getattr(a, key)
            settings = validate({"preset": "cli", "eval": given}, f"evaluate settings {a.config or ''}")["eval"]
            s = evaluate(a.model, settings, a.out_csv, a.out_json, data_dir=a.data_dir)
            print(json.dumps(s, indent=2))
        elif a.cmd == "convergence":
            from .config import validate
            from .evaluate import ais_convergence
            _threads(a.threads)
            given = _settings(a.config)
            extra = set(given) - {"eval", "steps", "n_images"}
            if extra:
                raise ValueError(f"convergence settings {a.config}: unknown keys {sorted(extra)}")
            conv = {k: v for k, v in (("steps", a.steps), ("n_images", a.n_images)) if v is not None}
            cfg = validate({"preset": "cli", "eval": given.get("eval", {}),
                            "convergence": {**{k: given[k] for k in ("steps", "n_images") if k in given}, **conv}},
                           f"convergence settings {a.config or ''}")
            print(ais_convergence(a.model, cfg["eval"], cfg["convergence"]["steps"], cfg["convergence"]["n_images"],
                                  a.out_csv, data_dir=a.data_dir).to_string(index=False))
        elif a.cmd == "report":
            from . import figures, tables
            from .config import validate
            from .train import load_model
            given = {**_settings(a.config), **({"n_samples": a.n_samples} if a.n_samples is not None else {})}
            n_samples = validate({"preset": "cli", "report": given}, f"report settings {a.config or ''}")["report"][
                "n_samples"]
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
            from . import figures
            _threads(a.threads)
            figures.run_figures(a.model, a.out_fig7, a.out_interp, a.seed, data_dir=a.data_dir)
            print(f"wrote {' '.join(a.out_fig7 + a.out_interp)}")
        elif a.cmd == "schools":
            from . import schools
            from .config import validate
            _threads(a.threads)
            settings = validate({"preset": "cli", "schools": _settings(a.config)},
                                f"schools settings {a.config or ''}")["schools"]
            if a.schools_cmd == "fit":
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
                print(schools.report(a.gold_npz, a.gold_json, a.fits, settings, a.out_csv, a.out_md, a.out_fig,
                                     a.out_params, a.kl_curve))
        elif a.cmd == "toy":
            from .toy import run_cli
            _threads(getattr(a, "threads", None))
            print(run_cli(a))
        elif a.cmd == "paper":
            from .publish import paper
            written = paper(_settings(a.config), a.out, dict(item.split("=", 1) for item in a.inputs), a.stamp,
                            latex=a.latex)
            print(f"wrote {', '.join(str(p) for p in written) or 'nothing new'}")
        elif a.cmd == "claims":
            from . import claims
            df = claims.write(a.per_image, a.summary, a.toy, a.schools, a.out_csv, a.out_md)
            print(claims.markdown(df))
        elif a.cmd == "readme":
            from . import readme
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
        elif a.cmd == "check-config":
            from .config import load, rows
            cfg = load(a.config)
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
