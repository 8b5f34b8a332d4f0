"""Throughput of the batched AIS transition for the official full0 MLP decoder, on one CPU thread.

Three timings, all in this process, same decoder, same binary images and the same number of HMC transitions:

* batched: ``estimate_log_likelihood`` with all images x chains as one batch (128 images x 5 chains = 640 rows);
* sequential: the official scheme, one chain after another over the batch of images
  (``estimate_log_likelihood(n_chains=1)`` called once per chain, 128 rows at a time);
* bare: the minimal work of one latent-gradient evaluation at the batched row count: forward of
  ``decoder.log_likelihood`` on 640 rows and the backward pass to z (``torch.autograd.grad``), nothing else.

A latent-gradient evaluation is one row's d log p(x|z) / dz; rates count rows evaluated per second (counted by
wrapping the log-likelihood, so the initial evaluation of each run is included). Each configuration runs
``--rounds`` times, interleaved in a rotating order. Rates are per CPU-second of this process
(``time.process_time``; wall-clock rates are printed too): on a shared machine, time spent descheduled is not the
code's cost. The ratios are taken within each round (the three runs are adjacent in time) and the median over
rounds is reported. The last line is ``ais batched/sequential=<x> fraction_of_decoder=<y>`` with
x = batched / sequential and y = batched / bare.

    .venv/bin/python benchmarks/ais_throughput.py [--images 128 --chains 5 --transitions 10 --rounds 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from avb.ais import estimate_log_likelihood
from avb.nets import X_DIM, Decoder, mlp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--chains", type=int, default=5)
    ap.add_argument("--transitions", type=int, default=10, help="HMC transitions per AIS run (n_steps - 1)")
    ap.add_argument("--leapfrog-steps", type=int, default=10)
    ap.add_argument("--z-dim", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)
    dec = Decoder(mlp([a.z_dim, 300, 300, X_DIM], torch.nn.Softplus)).eval()  # the full0 decoder
    with torch.no_grad():  # binary images simulated from the decoder
        x = torch.bernoulli(torch.sigmoid(dec(torch.randn(a.images, a.z_dim))))
    n_steps = a.transitions + 1
    rows = a.images * a.chains
    counter = {"rows": 0}

    def log_lik(x_rep, z):
        counter["rows"] += z.shape[0]
        return dec.log_likelihood(x_rep, z)

    def batched():
        estimate_log_likelihood(log_lik, x, a.z_dim, n_steps=n_steps, n_chains=a.chains,
                                leapfrog_steps=a.leapfrog_steps, generator=torch.Generator().manual_seed(1))

    def sequential():
        gen = torch.Generator().manual_seed(1)
        for _ in range(a.chains):
            estimate_log_likelihood(log_lik, x, a.z_dim, n_steps=n_steps, n_chains=1,
                                    leapfrog_steps=a.leapfrog_steps, generator=gen)

    evals_per_run = 1 + a.transitions * (a.leapfrog_steps + 1)  # official leapfrog: L + 1 gradient evaluations
    x_rep = x.repeat_interleave(a.chains, dim=0)
    z_bare = torch.randn(rows, a.z_dim)

    def bare():
        for _ in range(evals_per_run):
            counter["rows"] += rows
            zg = z_bare.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(dec.log_likelihood(x_rep, zg).sum(), zg)

    runs = {"batched": batched, "sequential": sequential, "bare": bare}
    rates: dict[str, list[float]] = {name: [] for name in runs}
    walls: dict[str, list[float]] = {name: [] for name in runs}
    per_run: dict[str, int] = {}
    for fn in runs.values():  # warm-up (first-call costs: imports, allocator, thread pools)
        fn()
    names = list(runs)
    for r in range(a.rounds):
        for name in names[r % 3:] + names[:r % 3]:  # rotate the order from round to round
            counter["rows"] = 0
            t0, c0 = time.perf_counter(), time.process_time()
            runs[name]()
            cpu, wall = time.process_time() - c0, time.perf_counter() - t0
            per_run[name] = counter["rows"]
            rates[name].append(counter["rows"] / cpu)
            walls[name].append(counter["rows"] / wall)
            print(f"round {r} {name:10s} {counter['rows']:7d} grad-evals: cpu {cpu:6.2f} s = {rates[name][-1]:8.0f}/s, "
                  f"wall {wall:6.2f} s = {walls[name][-1]:8.0f}/s", flush=True)
    med = lambda v: float(statistics.median(v))  # noqa: E731
    ratio_x = [b / s for b, s in zip(rates["batched"], rates["sequential"])]
    ratio_y = [b / s for b, s in zip(rates["batched"], rates["bare"])]
    print(f"setting: {a.images} images x {a.chains} chains = {rows} rows, z_dim={a.z_dim}, {a.transitions} "
          f"transitions x {a.leapfrog_steps + 1} gradient evaluations (official leapfrog, L={a.leapfrog_steps}), "
          f"torch threads=1, {a.rounds} rounds")
    for name in runs:
        print(f"{name:10s} median {med(rates[name]):8.0f} latent-gradient evaluations per CPU-second "
              f"({med(walls[name]):8.0f} per wall-second; {per_run[name]} per run)")
    print("per-round ratios batched/sequential: " + " ".join(f"{v:.3f}" for v in ratio_x))
    print("per-round ratios batched/bare:       " + " ".join(f"{v:.3f}" for v in ratio_y))
    print(f"ais batched/sequential={med(ratio_x):.3f} fraction_of_decoder={med(ratio_y):.3f}")


if __name__ == "__main__":
    main()
