"""``avb schools gold | fit | kl | report``: eight schools' gold-standard HMC, the fits, Figure 3 and the report."""
from __future__ import annotations

import argparse
import json
import os

from .common import SCHOOLS_CONFIG_HELP, gpu_slot, job, runs_curves, settings, threads


def add(sub) -> None:
    s = sub.add_parser("schools", help="eight schools: gold-standard HMC, ADVI / AVB fits, Figure 3, report")
    ss = s.add_subparsers(dest="schools_cmd", required=True)
    sg = job(ss, "gold", "gold-standard HMC chains and their diagnostics", config=SCHOOLS_CONFIG_HELP)
    sg.add_argument("--out-npz", required=True)
    sg.add_argument("--out-json", required=True)
    sf = job(ss, "fit", "train one method (avb.train.fit) and draw its posterior samples", config=SCHOOLS_CONFIG_HELP)
    sf.add_argument("--method", required=True, choices=["advi_meanfield", "advi_fullrank", "avb", "avb_ac"])
    sf.add_argument("--out", required=True, help="run folder: model.pt, checkpoint.pt, train_metrics.csv, "
                    "samples.npz, fit.json")
    sr = job(ss, "report", "summary CSV / Markdown, per-parameter CSV and the (mu, tau) figure",
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
    sk = job(ss, "kl", "Figure 3 replica: kNN KL(method || HMC) of the training snapshots, CSV + figure",
             config=SCHOOLS_CONFIG_HELP)
    sk.add_argument("--gold-npz", required=True)
    sk.add_argument("--snapshots", nargs="+", required=True, help="snapshots.npz files of `avb schools fit`")
    sk.add_argument("--out-csv", required=True)
    sk.add_argument("--out-png", required=True)
    sk.add_argument("--out-pdf", required=True)
    s.set_defaults(func=run)


def run(a: argparse.Namespace) -> None:
    from .. import schools
    from ..config import section
    threads(a.threads)
    cfg = section("schools", settings(a.config), f"schools settings {a.config or ''}")
    if a.schools_cmd == "fit":
        from ..schools_fit import fit_method
        gpu_slot(cfg["device"])
        info = fit_method(schools.run_config(cfg, a.method), a.out)
        print(json.dumps({k: v for k, v in info.items() if k != "run"}))
    elif a.schools_cmd == "gold":
        d = schools.gold_standard(cfg, a.out_npz, a.out_json)
        print(json.dumps({k: d[k] for k in ("rhat_max", "rank_rhat_max", "ess_min", "seconds")}))
    elif a.schools_cmd == "kl":
        from .. import schools_kl
        df = schools_kl.write(a.gold_npz, a.snapshots, cfg, a.out_csv, a.out_png, a.out_pdf)
        print(df.to_string(index=False))
    else:
        from ..report.schools import report
        fits = [os.path.dirname(f) if f.endswith(".json") else f for f in a.fits]  # fit.json -> its folder
        print(report(a.gold_npz, a.gold_json, fits, cfg, a.out_csv, a.out_md, a.out_fig, a.out_params, a.kl_curve))
        runs_curves(a.metrics, a.out_curves, "Eight schools: training curves")
