"""Command line: ``avb train``, ``avb evaluate``, ``avb report``, ``avb check-config``."""
from __future__ import annotations

import argparse
import json
import logging
import sys

import torch


def _threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="avb", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train one run from its resolved run config (JSON)")
    t.add_argument("run_config")
    t.add_argument("--out", required=True, help="run folder: model.pt, checkpoint.pt, train_metrics.csv")
    t.add_argument("--threads", type=int)

    e = sub.add_parser("evaluate", help="AIS log-likelihood and ELBO of a trained model on test images")
    e.add_argument("model")
    e.add_argument("--settings", default="{}",
                   help="JSON of eval settings (the eval section of a config); unset keys take the schema defaults, "
                        "i.e. the paper's 1000 AIS steps x 5 chains on 2048 test images")
    e.add_argument("--n-test", type=int, help="overrides settings n_test")
    e.add_argument("--ais-steps", type=int, help="overrides settings ais_steps")
    e.add_argument("--ais-chains", type=int, help="overrides settings ais_chains")
    e.add_argument("--out-csv", required=True, help="per-image CSV (written atomically)")
    e.add_argument("--out-json", required=True, help="summary JSON (written atomically)")
    e.add_argument("--threads", type=int)

    v = sub.add_parser("convergence", help="AIS log p(x) against the number of annealing steps, with BDMC bounds")
    v.add_argument("model")
    v.add_argument("--settings", default="{}", help="JSON of eval settings (as for evaluate)")
    v.add_argument("--steps", type=int, nargs="+", required=True, help="annealing budgets")
    v.add_argument("--n-images", type=int, required=True)
    v.add_argument("--out-csv", required=True)
    v.add_argument("--threads", type=int)

    r = sub.add_parser("report", help="summary CSV, Markdown table and figure from evaluated runs")
    r.add_argument("--evals", nargs="+", required=True)
    r.add_argument("--models", nargs="+", required=True)
    r.add_argument("--metrics", nargs="+", required=True)
    r.add_argument("--out-csv", required=True)
    r.add_argument("--out-md", required=True)
    r.add_argument("--out-png", required=True)
    r.add_argument("--n-samples", type=int, default=64)
    r.add_argument("--out-pdf", help="the samples figure as PDF too")
    r.add_argument("--table2", nargs=3, metavar=("CSV", "MD", "TEX"),
                   help="write the Table 2 replica (mean ± 95%% CI over seeds, published values beside)")
    r.add_argument("--convergence", nargs="*", default=[], help="ais_convergence.csv files of the runs")
    r.add_argument("--out-convergence", nargs=2, metavar=("PNG", "PDF"), help="the AIS convergence / BDMC figure")

    s = sub.add_parser("schools", help="eight-schools experiment: gold-standard HMC, ADVI / AVB fits, report")
    ss = s.add_subparsers(dest="schools_cmd", required=True)
    sg = ss.add_parser("gold", help="gold-standard HMC chains and their diagnostics")
    sg.add_argument("--settings", default="{}", help="JSON of the config's schools section (unset keys: defaults)")
    sg.add_argument("--out-npz", required=True)
    sg.add_argument("--out-json", required=True)
    sg.add_argument("--threads", type=int)
    sf = ss.add_parser("fit", help="train one method (avb.train.fit) and draw its posterior samples")
    sf.add_argument("--method", required=True, choices=["advi_meanfield", "advi_fullrank", "avb", "avb_ac"])
    sf.add_argument("--settings", default="{}", help="JSON of the config's schools section (unset keys: defaults)")
    sf.add_argument("--out", required=True, help="run folder: model.pt, checkpoint.pt, train_metrics.csv, "
                    "samples.npz, fit.json")
    sf.add_argument("--threads", type=int)
    sr = ss.add_parser("report", help="summary CSV / Markdown, per-parameter CSV and the (mu, tau) figure")
    sr.add_argument("--gold-npz", required=True)
    sr.add_argument("--gold-json", required=True)
    sr.add_argument("--fits", nargs="*", default=[], help="run folders of `avb schools fit`")
    sr.add_argument("--settings", default="{}")
    sr.add_argument("--out-csv", required=True)
    sr.add_argument("--out-md", required=True)
    sr.add_argument("--out-params", required=True)
    sr.add_argument("--out-fig", required=True, help="figure path; written as .png and .pdf")
    sr.add_argument("--threads", type=int)

    from .toy import add_cli_arguments as _toy_arguments
    _toy_arguments(sub.add_parser("toy", help="four-image toy experiment: train / evaluate (exact log p(x)) / report"))

    pp = sub.add_parser("paper", help="render paper/replication.md and paper/main.tex from a preset's results")
    pp.add_argument("--config", required=True, help="JSON of the validated preset config")
    pp.add_argument("--out", default="paper")
    pp.add_argument("--inputs", nargs="+", required=True, help="name=path pairs of result files (per_image=a,b,...: a comma-separated list)")

    c = sub.add_parser("check-config", help="validate a preset config and print it with defaults filled in")
    c.add_argument("config")

    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    try:
        if a.cmd == "train":
            from .train import read_run_config, train
            _threads(a.threads)
            print(train(read_run_config(a.run_config), a.out))
        elif a.cmd == "evaluate":
            from .config import validate
            from .evaluate import evaluate
            _threads(a.threads)
            given = json.loads(a.settings)
            for key in ("n_test", "ais_steps", "ais_chains"):
                if getattr(a, key) is not None:
                    given[key] = getattr(a, key)
            settings = validate({"preset": "cli", "eval": given}, "evaluate settings")["eval"]
            s = evaluate(a.model, settings, a.out_csv, a.out_json)
            print(json.dumps(s, indent=2))
        elif a.cmd == "convergence":
            from .config import validate
            from .evaluate import ais_convergence
            _threads(a.threads)
            settings = validate({"preset": "cli", "eval": json.loads(a.settings)}, "convergence settings")["eval"]
            print(ais_convergence(a.model, settings, a.steps, a.n_images, a.out_csv).to_string(index=False))
        elif a.cmd == "report":
            from . import figures, tables
            from .train import load_model
            df = tables.write(a.evals, a.out_csv, a.out_md)
            runs = [{"label": figures.run_label(load_model(m)[1]), "model": m, "metrics": x}
                    for m, x in zip(a.models, a.metrics)]
            figures.samples_and_curves(runs, a.out_png, a.n_samples, a.out_pdf)
            if a.table2:
                tables.write_table2(df, *a.table2)
            if a.convergence and a.out_convergence:
                figures.ais_convergence(a.convergence, *a.out_convergence)
            print(tables.markdown(df))
        elif a.cmd == "schools":
            from . import schools
            from .config import validate
            _threads(a.threads)
            settings = validate({"preset": "cli", "schools": json.loads(a.settings)}, "schools settings")["schools"]
            if a.schools_cmd == "fit":
                info = schools.fit_method(schools.run_config(settings, a.method), a.out)
                print(json.dumps({k: v for k, v in info.items() if k != "run"}))
            elif a.schools_cmd == "gold":
                d = schools.gold_standard(settings, a.out_npz, a.out_json)
                print(json.dumps({k: d[k] for k in ("rhat_max", "rank_rhat_max", "ess_min", "seconds")}))
            else:
                print(schools.report(a.gold_npz, a.gold_json, a.fits, settings, a.out_csv, a.out_md, a.out_fig,
                                     a.out_params))
        elif a.cmd == "toy":
            from .toy import run_cli
            _threads(getattr(a, "threads", None))
            print(run_cli(a))
        elif a.cmd == "paper":
            from .paper import render
            render(json.loads(a.config), a.out, dict(item.split("=", 1) for item in a.inputs))
            print(f"wrote {a.out}/replication.md and {a.out}/main.tex")
        elif a.cmd == "check-config":
            from .config import load
            print(json.dumps(load(a.config), indent=2))
    except Exception as err:  # one clear line for users; the traceback stays available with AVB_DEBUG=1
        import os
        if os.environ.get("AVB_DEBUG"):
            raise
        print(f"avb {a.cmd}: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
