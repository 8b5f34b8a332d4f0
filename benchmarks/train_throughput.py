"""Training throughput: the project's step (``avb.step.train_step``) against a bare hand-written PyTorch loop.

Both sides train the same networks (``avb.experiments.build``: arch mlp, the official full0 sizes, hidden 300,
eps_dim 32, 16 basis vectors; adversary widths of ``config/quick.yaml``, adv_hidden 256, adv_embed 256, 3 layers),
z = 8, batch 128, on random binary batches made up front (no dataset I/O on either side), one CPU thread.

* project: each iteration is the body of the loop in ``avb.train.train``: ``train_step`` (one forward through the
  method's ``Step``, adversary backward with ``retain_graph``, primal backward, both Adam steps) and the loop's
  ``StepMeter`` (the per-step metrics and the NaN / inf check, summed on the device; read once per 100 steps here,
  the default ``log_every``); drawing the batch, the progress bar and the periodic logging/checkpointing are left
  out (no I/O on either side).
* bare: the same forward math written inline over the same modules (encoder, decoder, adversary), the same two
  Adam optimisers and the same simultaneous update, and nothing else.

Each side trains its own copy of the networks (same initial weights) with its own optimisers. The two sides run in
alternating chunks of about ``--chunk`` seconds (which side goes first alternates too) for ``--rounds`` rounds after a
warm-up, so that both see the same machine load; a method's overhead is the median over rounds of the paired ratio
(project chunk time / bare chunk time) minus 1, and images/s come from the median chunk time of each side.

Run: ``python benchmarks/train_throughput.py`` (about 30 s on one core). The last line printed is
``train overhead vs bare loop: vae=<r> avb=<r> avb_ac=<r>``.
"""
from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from avb.experiments import build  # noqa: E402
from avb.step import StepMeter, step_metrics, train_step  # noqa: E402
from naive_step import NaiveStep  # noqa: E402

METHODS = ("vae", "avb", "avb_ac")
MODEL = {"arch": "mlp", "hidden": 300, "eps_dim": 32, "eps_nbasis": 16, "adv_hidden": 256, "adv_embed": 256,
         "adv_layers": 3}
Z_DIM, BATCH, X_DIM = 8, 128, 784
LR, LR_ADV, BETAS = 1e-4, 1e-4, (0.5, 0.999)


class Project:
    """The project's iteration: ``train_step`` + the ``StepMeter``, as in ``avb.train.train``."""

    LOG_EVERY = 100

    def __init__(self, model):
        self.model = model.train()
        self.params_p, self.params_a = model.primal_parameters(), model.adversary_parameters()
        self.params = list(model.parameters())
        self.opt_p = torch.optim.Adam(self.params_p, lr=LR, betas=BETAS)
        self.opt_a = torch.optim.Adam(self.params_a, lr=LR_ADV, betas=BETAS) if self.params_a else None
        self.meter, self.n = StepMeter(0, torch.device("cpu")), 0

    def step(self, x):
        train_step(self.model, x, self.opt_p, self.opt_a, self.params_p, self.params_a, 1, None, check=False,
                   record=self.meter.record)
        self.meter.add(self.params)
        self.n += 1
        if self.n % self.LOG_EVERY == 0:
            self.meter.read()
            self.meter.reset()


def chunk(side, xs, n):
    t = time.perf_counter()
    for i in range(n):
        side.step(xs[i % len(xs)])
    return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15, help="timed rounds per method (default 15)")
    ap.add_argument("--chunk", type=float, default=0.25,
                    help="seconds per timed chunk (default 0.25); the iteration count is set from the warm-up")
    ap.add_argument("--warmup", type=int, default=20, help="untimed iterations per side first (default 20)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    xs = [torch.bernoulli(torch.full((BATCH, X_DIM), 0.5)) for _ in range(4)]
    print(f"torch {torch.__version__}, 1 thread; batch {BATCH}, z {Z_DIM}, {MODEL}; "
          f"{a.rounds} rounds of ~{a.chunk} s chunks per side", flush=True)
    overhead = {}
    for method in a.methods:
        torch.manual_seed(1)
        model = build({"method": method, "z_dim": Z_DIM, "model": MODEL})
        proj, bare = Project(model), NaiveStep(copy.deepcopy(model), method, LR, LR_ADV, BETAS)
        chunk(proj, xs, a.warmup)
        steps = max(3, round(a.chunk * a.warmup / chunk(bare, xs, a.warmup)))
        t_proj, t_bare = [], []
        for r in range(a.rounds):
            order = (("p", proj), ("b", bare)) if r % 2 == 0 else (("b", bare), ("p", proj))
            for tag, side in order:
                (t_proj if tag == "p" else t_bare).append(chunk(side, xs, steps))
        ratio = statistics.median(p / b for p, b in zip(t_proj, t_bare))
        overhead[method] = ratio - 1.0
        ips_p = steps * BATCH / statistics.median(t_proj)
        ips_b = steps * BATCH / statistics.median(t_bare)
        print(f"{method:7s} ({steps} steps/chunk) project {ips_p:8.1f} images/s   bare {ips_b:8.1f} images/s   "
              f"median paired time ratio {ratio:.3f} (min/max {min(p / b for p, b in zip(t_proj, t_bare)):.3f}/"
              f"{max(p / b for p, b in zip(t_proj, t_bare)):.3f})", flush=True)
        assert all(math.isfinite(v) for v in step_metrics(proj.model(xs[0])).values())
    print("train overhead vs bare loop: " + " ".join(f"{m}={overhead[m]:.2f}" for m in a.methods), flush=True)


if __name__ == "__main__":
    main()
