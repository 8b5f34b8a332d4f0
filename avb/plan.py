"""The cost of a preset before it runs (``avb plan``): expected GPU-hours of each MNIST-type job and in total, from
measured throughput (``benchmarks/gpu_throughput.py --out FILE``) or rates given by hand.

Per run of the sweep, with its resolved settings (``avb.config.rows``: overrides applied):

* train: ``train.steps x train.batch_size / images_per_s[method]``;
* evaluate: AIS latent-gradient evaluations / ``ais_evals_per_s[method]``, where one AIS run over N images costs
  ``N x ais_chains x (1 + (ais_steps - 1) x P)`` evaluations, P = the position updates of one leapfrog trajectory
  (``avb.hmc.leapfrog_positions``: leapfrog_steps + 1 for the official leapfrog); the main estimate on ``n_test``
  images plus the BDMC sandwich (a forward and a reverse run on ``bdmc_images`` simulated images);
* ais_convergence (``convergence.enabled``): for each budget S of ``convergence.steps``, a forward run on
  ``convergence.n_images`` test images and the BDMC pair on as many simulated images, at S steps.

The ELBO and IWAE passes (forward passes only, no gradients) are left out: at the presets' sizes they are under 1 %
of the AIS work. A job's hours are those of one job running alone on one GPU of the measured kind; rates are per
method, measured on the paper preset's networks of that method (a row with other networks gets a note). Toy and
eight-schools jobs are not planned (no measured rate).
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from .config import ConfigError, rows

SCHEMA = "avb-gpu-throughput/1"  # what benchmarks/gpu_throughput.py writes


@dataclasses.dataclass(frozen=True)
class Rates:
    """Training images/s and AIS latent-gradient evaluations/s per method; ``arch``: the networks each method's
    rates were measured on (None: given by hand, valid for any)."""

    images_per_s: dict[str, float]
    ais_evals_per_s: dict[str, float]
    source: str
    arch: dict[str, str | None] = dataclasses.field(default_factory=dict)


def read_rates(path: str | Path) -> Rates:
    """The rates a ``benchmarks/gpu_throughput.py`` run wrote to ``path``; ``ConfigError`` naming the file where it
    is no such file."""
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"throughput file {path}: {err}") from None
    if not isinstance(d, dict) or d.get("schema") != SCHEMA:
        raise ConfigError(f"throughput file {path}: not written by benchmarks/gpu_throughput.py (expected "
                          f"schema {SCHEMA!r}, got {d.get('schema') if isinstance(d, dict) else type(d).__name__!r})")

    def positive(key: str) -> dict[str, float]:
        out = {}
        for m, v in (d.get(key) or {}).items():
            if isinstance(v, (int, float)) and math.isfinite(v) and v > 0:
                out[m] = float(v)
        return out

    dev = d.get("device", {})
    source = f"{path} ({dev.get('name', 'unknown device')}, torch {dev.get('torch')}, measured {d.get('measured')}" \
             + (", SMOKE sizes: not a measurement" if d.get("smoke") else "") + ")"
    arch = {m: t.get("arch") for m, t in (d.get("train") or {}).items() if isinstance(t, dict)}
    return Rates(positive("train_images_per_s"), positive("ais_latent_grad_evals_per_s"), source, arch)


def with_given(rates: Rates | None, images_per_s: float | None, ais_evals_per_s: float | None,
               methods: list[str]) -> Rates:
    """``rates`` with the training and/or AIS rate of every method replaced by a given one."""
    base = rates or Rates({}, {}, "")
    img, ais, arch = dict(base.images_per_s), dict(base.ais_evals_per_s), dict(base.arch)
    parts = [base.source] if base.source else []
    for value, target, what in ((images_per_s, img, "img/s"), (ais_evals_per_s, ais, "AIS evaluations/s")):
        if value is None:
            continue
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"the given {what} must be a positive number, got {value}")
        target.update({m: float(value) for m in methods})
        parts.append(f"{what} = {value:g} for every method (given)")
        if what == "img/s":
            arch.update({m: None for m in methods})
    return Rates(img, ais, "; ".join(parts), arch)


def ais_evals(n_images: int, ev: dict[str, Any], n_steps: int | None = None) -> float:
    """Latent-gradient evaluations of one AIS run over ``n_images`` images with the eval settings ``ev`` (at
    ``n_steps`` annealing steps instead of ``ev['ais_steps']`` where given)."""
    from .hmc import leapfrog_positions

    steps = ev["ais_steps"] if n_steps is None else n_steps
    return n_images * ev["ais_chains"] * (1 + (steps - 1) * leapfrog_positions(ev["leapfrog_steps"],
                                                                               ev["ais_leapfrog"]))


@dataclasses.dataclass(frozen=True)
class JobCost:
    job: str                  # train, evaluate, ais_convergence
    run: str                  # dataset/method/z<z>/seed<s>
    work: str                 # what it does, in numbers
    amount: float             # images (train) or latent-gradient evaluations (AIS)
    rate: float | None        # per second
    note: str = ""

    @property
    def hours(self) -> float | None:
        return None if self.rate is None else self.amount / self.rate / 3600


def plan(cfg: dict[str, Any], rates: Rates) -> list[JobCost]:
    """The GPU jobs of the validated preset ``cfg`` with their expected hours under ``rates``."""
    jobs = []
    conv = cfg["convergence"]
    for r in rows(cfg):
        m, tr, ev = r["method"], r["train"], r["eval"]
        name = f"{r['dataset']}/{m}/z{r['z_dim']}/seed{r['seed']}"
        arch, measured = r["model"].get("arch"), rates.arch.get(m)
        note = f"rate measured on {measured} nets, this run has {arch}" if measured and measured != arch else ""
        img, ais = rates.images_per_s.get(m), rates.ais_evals_per_s.get(m)
        jobs.append(JobCost("train", name, f"{tr['steps']} steps x {tr['batch_size']} images",
                            tr["steps"] * tr["batch_size"], img, note))
        main, bdmc = ais_evals(ev["n_test"], ev), 2 * ais_evals(ev["bdmc_images"], ev)
        jobs.append(JobCost("evaluate", name, f"AIS {ev['n_test']} images x {ev['ais_chains']} chains x "
                            f"{ev['ais_steps']} steps" + (f" + BDMC on {ev['bdmc_images']}" if bdmc else ""),
                            main + bdmc, ais, note))
        if conv["enabled"]:
            work = sum(3 * ais_evals(conv["n_images"], ev, s) for s in conv["steps"])
            jobs.append(JobCost("ais_convergence", name, f"AIS + BDMC on {conv['n_images']} images at steps "
                                f"{','.join(map(str, conv['steps']))}", work, ais, note))
    return jobs


def render(jobs: list[JobCost], rates: Rates, title: str) -> str:
    """The plan as text: one line per job, then the totals per kind of job and overall."""
    w_run = max([len(j.run) for j in jobs] + [3])
    w_work = max([len(j.work) for j in jobs] + [4])
    lines = [title, f"rates: {rates.source}",
             f"{'job':16s} {'run':{w_run}s} {'work':{w_work}s} {'rate /s':>12s} {'GPU-hours':>10s}"]
    for j in jobs:
        rate = f"{'n/a':>12s}" if j.rate is None else f"{j.rate:12.0f}" if j.rate >= 10 else f"{j.rate:12.3g}"
        hours = f"{j.hours:10.3f}" if j.hours is not None else f"{'n/a':>10s}"
        lines.append(f"{j.job:16s} {j.run:{w_run}s} {j.work:{w_work}s} {rate} {hours}"
                     + (f"   ({j.note})" if j.note else ""))
    kinds = list(dict.fromkeys(j.job for j in jobs))
    parts, missing = [], 0
    for k in kinds:
        hs = [j.hours for j in jobs if j.job == k]
        missing += sum(h is None for h in hs)
        parts.append(f"{k} {sum(h for h in hs if h is not None):.1f} GPU-h ({len(hs)} jobs)")
    total = sum(j.hours for j in jobs if j.hours is not None)
    lines.append(f"total: {total:.1f} GPU-hours = " + " + ".join(parts)
                 + (f"; {missing} jobs without a rate are not counted" if missing else ""))
    return "\n".join(lines)
