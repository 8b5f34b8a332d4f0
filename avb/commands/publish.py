"""``avb paper | claims | readme``: what a preset's results are published as (paper/, the claims, README's block)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import settings


def add(sub) -> None:
    pp = sub.add_parser("paper", help="render paper/replication.md and paper/main.tex from a preset's results")
    pp.add_argument("--config", required=True, help="JSON file of the validated preset config (paper_config.json); "
                                                    "the results are read from its results_dir/preset "
                                                    "(avb.layout.paper_inputs)")
    pp.add_argument("--out", default="paper", help="folder to render into; replaced file by file only once all of "
                                                    "it rendered (a failed render leaves it as it was)")
    pp.add_argument("--stamp", help="JSON file written last: the files written into --out and their sha256")
    pp.add_argument("--latex", action="store_true", help="also build main.pdf with latexmk, where installed")
    pp.set_defaults(func=paper)

    cl = sub.add_parser("claims", help="the paper's claims checked against a preset's results")
    cl.add_argument("--per-image", nargs="*", default=[], help="eval_per_image.csv files of the MNIST runs")
    cl.add_argument("--summary", help="summary.csv of the MNIST runs (BDMC caveats)")
    cl.add_argument("--toy", nargs="?", help="toy/summary.csv (none: the toy claims are left out)")
    cl.add_argument("--schools", nargs="?", help="schools/summary.csv (none: the schools claims are left out)")
    cl.add_argument("--out-csv", required=True)
    cl.add_argument("--out-md", required=True)
    cl.set_defaults(func=claims)

    rd = sub.add_parser("readme", help="rewrite README.md's results block from a published run's files")
    rd.add_argument("run_dir", help="the run's results folder, e.g. results/cpu")
    rd.add_argument("--readme", default="README.md")
    rd.add_argument("--check", action="store_true", help="only check that the block is up to date (exit 1 if not)")
    rd.set_defaults(func=readme)


def paper(a: argparse.Namespace) -> None:
    from ..layout import paper_reads
    from ..report.publish import paper as render
    cfg = settings(a.config)
    written = render(cfg, a.out, paper_reads(cfg), a.stamp, latex=a.latex)
    print(f"wrote {', '.join(str(p) for p in written) or 'nothing new'}")


def claims(a: argparse.Namespace) -> None:
    from ..report import claims as check
    df = check.write(a.per_image, a.summary, a.toy, a.schools, a.out_csv, a.out_md)
    print(check.markdown(df))


def readme(a: argparse.Namespace) -> int:
    from ..report import readme as block
    if a.check:
        if block.block(a.run_dir) not in Path(a.readme).read_text():
            print(f"{a.readme}: its results block is out of date; run `avb readme {a.run_dir}`", file=sys.stderr)
            return 1
        print(f"{a.readme}: results block up to date with {a.run_dir}")
    else:
        changed = block.update(a.readme, a.run_dir)
        print(f"{a.readme}: results block {'rewritten' if changed else 'already up to date'} from {a.run_dir}")
    return 0
