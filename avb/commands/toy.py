"""``avb toy train | evaluate | report``: the four-image toy experiment (Table 1, the latent-space figure)."""
from __future__ import annotations

import argparse
import json

from .common import TOY_SECTIONS, add_run_settings, gpu_slot, job, run_config, runs_curves, settings, threads


def add(sub) -> None:
    toy = sub.add_parser("toy", help="four-image toy: train, evaluate (exact log p(x)), report")
    ts = toy.add_subparsers(dest="toy_cmd", required=True)
    tt = job(ts, "train", "train one toy run from its run config (JSON), optionally changed")
    add_run_settings(tt)
    tt.add_argument("--out", required=True, help="run folder: model.pt, checkpoint.pt, train_metrics.csv")
    te = job(ts, "evaluate", "exact log p(x) by quadrature, posteriors, ELBO and KL estimates", model=True,
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
    toy.set_defaults(func=run)


def run(a: argparse.Namespace) -> None:
    threads(getattr(a, "threads", None))
    if a.toy_cmd == "train":
        from ..train import train
        cfg = run_config(a.run_config, a.settings, a.device, TOY_SECTIONS)
        gpu_slot(cfg["train"]["device"])
        print(train(cfg, a.out))
    elif a.toy_cmd == "evaluate":
        from ..config import section
        from ..toy_eval import evaluate, write_eval
        ev = section("toy.eval", settings(a.config), f"toy eval settings {a.config or ''}")
        gpu_slot(ev["device"])
        summary, arrays = evaluate(a.model, ev)
        write_eval(summary, arrays, a.out_json, a.out_npz)
        print(json.dumps(summary, indent=2))
    else:
        if len(a.evals) != len(a.npz):
            raise ValueError("--evals and --npz need one file per method each")
        from ..report.toy import report
        md = report(a.evals, a.npz, a.out_csv, a.out_md, a.out_png, a.out_pdf, a.out_table1)
        runs_curves(a.metrics, a.out_curves, "Toy experiment: training curves")
        print(md)
