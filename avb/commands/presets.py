"""``avb check-config | plan``: a preset validated and shown with its defaults, and its GPU cost before it runs."""
from __future__ import annotations

import argparse
import json


def add(sub) -> None:
    c = sub.add_parser("check-config", help="validate a preset config and print it with defaults filled in")
    c.add_argument("config", nargs="+", help="the preset file, then any override files merged over it in order (as "
                                             "snakemake --configfile PRESET MORE.yaml)")
    c.add_argument("--config", dest="cli_config", nargs="+", default=[], metavar="KEY=VALUE",
                   help="then these, as snakemake --config reads them (values YAML): 'train={steps: 100}'")
    c.add_argument("--rows", action="store_true", help="instead: one JSON object per line, one line per run of the "
                   "sweep, with its method, dataset, z_dim, seed and resolved model, train and eval sections")
    c.set_defaults(func=check_config)

    pl = sub.add_parser("plan", help="expected GPU-hours of a preset's jobs, from measured or given throughput")
    pl.add_argument("--configfile", required=True, help="the preset, e.g. config/paper.yaml")
    pl.add_argument("--throughput", help="JSON file of benchmarks/gpu_throughput.py --out (rates per method)")
    pl.add_argument("--img-per-s", type=float, help="training images per second, for every method (replaces the "
                                                    "file's)")
    pl.add_argument("--ais-evals-per-s", type=float, help="AIS latent-gradient evaluations per second, for every "
                                                          "method (replaces the file's)")
    pl.set_defaults(func=plan, parser=pl)


def check_config(a: argparse.Namespace) -> None:
    from ..config import load_merged, rows
    cfg = load_merged(a.config, a.cli_config)
    if a.rows:
        for row in rows(cfg):
            print(json.dumps(row, sort_keys=True))
    else:
        print(json.dumps(cfg, indent=2))


def plan(a: argparse.Namespace) -> None:
    from .. import plan as cost
    from ..config import load
    if a.throughput is None and a.img_per_s is None:
        a.parser.error("plan: give --throughput FILE (benchmarks/gpu_throughput.py --out) or --img-per-s N")
    cfg = load(a.configfile)
    rates = cost.read_rates(a.throughput) if a.throughput else None
    rates = cost.with_given(rates, a.img_per_s, a.ais_evals_per_s, list(cfg["methods"]))
    print(cost.render(cost.plan(cfg, rates), rates, f"avb plan: {a.configfile} (preset {cfg['preset']}), "
                      f"GPU-hours per job, each alone on one GPU"))
