"""GPU throughput of the paper preset's models against a naive PyTorch loop on the same card, in one process
(issue 15 item 6), and the measured rates that ``avb plan`` turns into GPU-hours.

Models: the ``config/paper.yaml`` rows at z = 8 (``avb.jobs.train_config``): VAE (conv1 nets, batch 64), AVB and
AVB + AC (conv0 nets, the inner-product adversary, batch 128). Images are random binary batches made on the device
up front: neither side reads data.

* naive: a plain eager step written here over the same modules (``model.encoder`` / ``decoder`` / ``adversary``):
  the method's losses inline, two default ``torch.optim.Adam``, the simultaneous update (adversary backward with
  ``retain_graph``, primal backward, both steps): the same arithmetic as the project's step, as a researcher writes
  it in an afternoon (no autocast, no compile, no fused optimiser, no channels-last), in fp32 and in tf32 (TF32
  matmuls and convolutions). The speedups are against naive tf32.
* project: the project's own training, ``avb.train.train`` on the row's run config (``setup`` + ``fit``: whatever
  they do to the model, the loop, checkpointing and the metrics), fed the synthetic batches. Runs: eager, each
  ``train.precision`` the schema allows with ``train.compile`` off (the row's other speed options as the preset sets
  them); then compiled, the row as the preset sets it and each other compile mode but max-autotune. Without these
  keys in the schema: the row as it is only. Its images/s are the loop's own (the ``images_per_s`` of
  ``train_metrics.csv``), median over the logged windows after the first (warm-up, compilation). The speedup and
  the rate ``avb plan`` uses are those of the row as the preset sets it ("as the preset"), else of the fastest run.
* AIS: ``avb.ais.estimate_log_likelihood`` on the row's decoder, called as ``avb.evaluate`` calls it with the row's
  eval settings (``ais_call_images`` images per call in whole batches of ``batch_size``, each batch adapting its own
  step; its chains, leapfrog, ``ais_memory_mb``; ``eval.precision``; where the project has these), a few transitions
  timed after a warm-up; the rate counts latent-gradient evaluations (rows through the decoder's log-likelihood).
  One paper-scale AIS run of a row = ``n_test x chains x (1 + (ais_steps - 1) x evaluations per transition)``
  evaluations; ``ais_paper_run_min`` is the longest of the three rows (ELBO, IWAE and BDMC not counted).

Order: naive, eager project runs, AIS (about 6 s per row), then compiled runs while the budget lasts (none starts
later than ``--budget-s`` less 60 s; default 200 s; a skipped one is recorded as such): on one GPU the whole script
stays under 5 minutes. Without CUDA it prints one line saying so and exits 0 (``--device cpu --smoke``: tiny sizes
on the CPU, to test the script). ``--out`` (default gpu_throughput.json) gets the measurements, rewritten after
each, which ``avb plan --throughput FILE`` reads. The last line printed is

    gpu train speedup vs naive: vae=<r> avb=<r> avb_ac=<r> ais_paper_run_min=<m>
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from avb import config as avb_config  # noqa: E402
from avb.jobs import eval_config, train_config  # noqa: E402
from naive_step import NaiveStep  # noqa: E402

METHODS = ("vae", "avb", "avb_ac")
Z_DIM, DATASET = 8, "mnist"
SCHEMA_VERSION = "avb-gpu-throughput/1"
BUDGET_S = 200.0          # seconds, the whole script's target (under 5 minutes with the last compilation)
COMPILE_RESERVE_S = 60.0  # a compiled run starts only with this much of the budget left


# ------------------------------------------------------------------------------------------------ the inputs
class SyntheticBatches:
    """Random binary images made once on the device, served in turn (an ``avb.train.BatchSource``)."""

    def __init__(self, batch_size: int, device: torch.device, n: int = 8, seed: int = 0):
        gen = torch.Generator(device="cpu").manual_seed(seed)
        self.pool = [torch.bernoulli(torch.full((batch_size, 784), 0.13), generator=gen).to(device) for _ in range(n)]
        self.pos = 0

    def __next__(self) -> torch.Tensor:
        x = self.pool[self.pos % len(self.pool)]
        self.pos += 1
        return x

    def __iter__(self):
        return self

    def state_dict(self) -> dict:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.pos = int(state["pos"])


def paper_rows(smoke: bool) -> dict[str, dict[str, Any]]:
    """Per method: the paper preset's training run config (z = 8, seed 0) and its eval settings."""
    cfg = avb_config.load(ROOT / "config" / "paper.yaml")
    rows = {}
    for m in METHODS:
        run, ev = train_config(cfg, DATASET, m, Z_DIM, 0), eval_config(cfg, DATASET, m, Z_DIM, 0)
        if smoke:  # CPU test sizes: a narrow adversary and a tiny batch; the conv nets stay as they are
            run["model"].update({k: 16 for k in ("adv_hidden", "adv_embed") if k in run["model"]})
            run["train"]["batch_size"] = 2
            ev = {**ev, "batch_size": 2, "ais_chains": 1, "leapfrog_steps": 1, "ais_call_images": None,
                  "ais_memory_mb": None}
        rows[m] = {"run": run, "eval": ev}
    return rows


def schema_options(section: str) -> dict[str, list]:
    """The values of ``<section>.precision`` / ``<section>.compile`` the schema allows (keys it lacks: absent)."""
    schema = yaml.safe_load(avb_config.SCHEMA_PATH.read_text())
    props = schema.get("$defs", {}).get(section, {}).get("properties", {})
    out = {}
    for key in ("precision", "compile"):
        p = props.get(key)
        if p is None:
            continue
        if "enum" in p:
            out[key] = list(p["enum"])
        elif p.get("type") == "boolean":
            out[key] = [False, True]
    return out


# ---------------------------------------------------------------------------------------------- timing aids
def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


NEW_TF32_API = hasattr(torch.backends.cuda.matmul, "fp32_precision")  # torch >= 2.9; never mixed with allow_tf32


@contextlib.contextmanager
def tf32(enabled: bool | None):
    """TF32 for matmuls and convolutions on (True) / off (False) inside; None: as torch has it. Whatever runs
    inside may change these flags (a precision option of the project): they and cudnn.benchmark are put back
    afterwards, so that each measurement starts from the same state. Uses torch's ``fp32_precision`` flags where
    it has them (reading the legacy ``allow_tf32`` after those were set is an error)."""
    if NEW_TF32_API:
        flags = (torch.backends.cuda.matmul, torch.backends.cudnn.conv)
        old = [f.fp32_precision for f in flags]
        if enabled is not None:
            for f in flags:
                f.fp32_precision = "tf32" if enabled else "ieee"
    else:
        old = [torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32]
        if enabled is not None:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    benchmark = torch.backends.cudnn.benchmark
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = benchmark
        if NEW_TF32_API:
            for f, v in zip(flags, old):
                f.fp32_precision = v
        else:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def timed(fn: Callable[[], None], dev: torch.device, warmup: int, reps: int, target_s: float) -> float:
    """Median seconds per call of ``fn`` over ``reps`` repeats, each of enough calls to last about ``target_s``."""
    for _ in range(warmup):
        fn()
    sync(dev)
    t0 = time.perf_counter()
    fn()
    sync(dev)
    calls = max(1, min(500, int(target_s / max(time.perf_counter() - t0, 1e-6))))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        sync(dev)
        times.append((time.perf_counter() - t0) / calls)
    return statistics.median(times)


# ------------------------------------------------------------------------------------------ the naive step
def naive_step(model, method: str, tr: dict[str, Any]) -> NaiveStep:
    """The shared naive step (``benchmarks/naive_step.py``) with the row's learning rates and beta1 (a VAE row has
    no adversary rate)."""
    return NaiveStep(model, method, tr["lr"], tr.get("lr_adversary", tr["lr"]), (tr["adam_beta1"], 0.999))


def naive_images_per_s(run: dict[str, Any], dev: torch.device, use_tf32: bool, smoke: bool) -> float:
    from avb.experiments import build
    torch.manual_seed(0)
    model = build(run).to(dev)
    step, batches = naive_step(model, run["method"], run["train"]), SyntheticBatches(run["train"]["batch_size"], dev)
    with tf32(use_tf32):
        t = timed(lambda: step(next(batches)), dev, warmup=1 if smoke else 3, reps=1 if smoke else 5,
                  target_s=0.0 if smoke else 0.3)
    return run["train"]["batch_size"] / t


# ---------------------------------------------------------------------------------------- the project's step
def project_images_per_s(run: dict[str, Any], dev: torch.device, log_every: int, windows: int) -> dict[str, Any]:
    """``avb.train.train`` on ``run`` (device, steps and logging set here) fed synthetic batches; the loop's own
    images/s, median over its logged windows after the first."""
    import pandas as pd
    from avb import train as avb_train

    run = json.loads(json.dumps(run))
    run["train"].update(device=str(dev), steps=log_every * (windows + 1), log_every=log_every,
                        checkpoint_every=10 ** 9)
    batches = lambda *a, **k: SyntheticBatches(run["train"]["batch_size"], dev)  # noqa: E731
    real = getattr(avb_train, "make_batches", None)  # what avb.train.setup draws its batches from
    if real is not None:
        avb_train.make_batches = batches
    route = "avb.train.train"
    try:
        with tempfile.TemporaryDirectory() as out, tf32(None):
            t0 = time.perf_counter()
            try:
                if real is None:
                    raise LookupError("avb.train has no make_batches to feed")
                avb_train.train(run, out, progress=False)
            except (LookupError, OSError, ValueError) as err:
                # a setup that reads its batches otherwise (it found no data): the loop itself, on the model
                # built as setup builds it
                from avb.experiments import build
                route = f"avb.train.fit ({type(err).__name__}: {str(err)[:120]})"
                torch.manual_seed(run["seed"])
                t0 = time.perf_counter()
                avb_train.fit(build(run).to(dev), batches(), torch.Generator().manual_seed(run["seed"] + 1), run,
                              Path(out) / "fit", progress=False)
                out = str(Path(out) / "fit")
            wall = time.perf_counter() - t0
            rows = pd.read_csv(Path(out) / "train_metrics.csv")
    finally:
        if real is not None:
            avb_train.make_batches = real
    rates = [float(v) for v in rows["images_per_s"].iloc[1:] if math.isfinite(v)]
    return {"images_per_s": statistics.median(rates) if rates else math.nan, "windows": len(rates),
            "log_every": log_every, "wall_s": wall, "route": route}


EAGER = {"compile": ("none", False)}  # the value of each compile-like key that means eager


def option_sets(tr: dict[str, Any], options: dict[str, list]) -> list[tuple[str, dict[str, Any]]]:
    """The project runs of one row, as (phase, changes to the row's train section): first ``eager``: each
    precision with compilation off (the row's other speed options kept); then ``compiled``: the row as the preset
    sets it, if it compiles, and each other compile mode but max-autotune (minutes of autotuning). A row of a
    preset that does not compile is measured as it is among the eager runs. Without the keys (a schema before
    them): the row as it is, only."""
    eager_off = {"compile": next(v for v in options["compile"] if v in EAGER["compile"])} \
        if "compile" in options else {}
    row_compiles = "compile" in options and tr.get("compile", eager_off.get("compile")) not in EAGER["compile"]
    sets: list[tuple[str, dict[str, Any]]] = []
    for p in options.get("precision", [None]):
        changes = {**({"precision": p} if p is not None else {}), **eager_off}
        if not row_compiles and all(tr.get(k) == v for k, v in changes.items()):
            changes = {}  # the row itself
        sets.append(("eager", changes))
    if row_compiles:
        sets.append(("compiled", {}))
    for mode in options.get("compile", []):
        if mode not in EAGER["compile"] and mode != "max-autotune" and mode != tr.get("compile"):
            sets.append(("compiled", {"compile": mode}))
    return sets


def label(changes: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in changes.items()) or "as the preset"


# -------------------------------------------------------------------------------------------------------- AIS
def ais_rate(run: dict[str, Any], ev: dict[str, Any], dev: torch.device, target_s: float,
             max_transitions: int) -> dict[str, Any]:
    """Latent-gradient evaluations per second of AIS on the row's decoder, called as the row's evaluation calls it
    (``avb.evaluate``: ``ais_call_images`` images per call, rounded up to whole batches of ``batch_size``, each
    batch adapting its own step where AIS takes ``adapt_group``; ``eval.precision``): one transition as warm-up,
    then as many as fit in about ``target_s`` (1 to ``max_transitions``), timed."""
    from avb import evaluate as avb_evaluate
    from avb.ais import estimate_log_likelihood
    from avb.experiments import build

    torch.manual_seed(0)
    model = build(run).to(dev).eval()
    bs = ev["batch_size"]
    per_call = min(-(-(ev.get("ais_call_images") or bs) // bs) * bs, -(-ev["n_test"] // bs) * bs)
    x = torch.cat(SyntheticBatches(bs, dev, n=per_call // bs).pool)
    precision = ev.get("precision", "fp32")
    project_ll = getattr(avb_evaluate, "log_likelihood", None)  # the evaluation's own (with eval.precision)
    if project_ll is not None:
        f = project_ll(model, dev, precision)
    elif precision == "bf16":
        def f(x_rep, z):
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
                return model.decoder.log_likelihood(x_rep, z).float()
    else:
        f = model.decoder.log_likelihood
    count = {"rows": 0}

    def log_lik(x_rep, z):
        count["rows"] += z.shape[0]
        return f(x_rep, z)

    kwargs = dict(n_chains=ev["ais_chains"], leapfrog_steps=ev["leapfrog_steps"], eps=ev["ais_eps"],
                  adapt=ev["ais_adapt"], leapfrog=ev["ais_leapfrog"], schedule=ev["ais_schedule"],
                  memory_mb=ev["ais_memory_mb"])
    if per_call > bs:
        kwargs["adapt_group"] = bs
    gen_device = [dev]  # the generator on the device where AIS takes one there, else (older AIS) on the CPU

    def once(n_transitions: int) -> None:
        gen = torch.Generator(device=gen_device[0]).manual_seed(1)
        estimate_log_likelihood(log_lik, x, run["z_dim"], n_steps=n_transitions + 1, generator=gen, **kwargs)
        sync(dev)

    with tf32(True if precision in ("tf32", "bf16") else False if precision == "fp32" else None):
        t0 = time.perf_counter()
        try:  # warm-up
            once(1)
        except TypeError:  # an AIS without adapt_group: one call per batch, as the evaluation then calls it
            if "adapt_group" not in kwargs:
                raise
            kwargs.pop("adapt_group")
            per_call, x = bs, x[:bs]
            t0 = time.perf_counter()
            once(1)
        except RuntimeError:
            if dev.type == "cpu":
                raise
            gen_device[0] = torch.device("cpu")
            t0 = time.perf_counter()
            once(1)
        transitions = max(1, min(max_transitions, round(target_s / max(time.perf_counter() - t0, 1e-6))))
        count["rows"] = 0
        t0 = time.perf_counter()
        once(transitions)
        seconds = time.perf_counter() - t0
    rows = per_call * ev["ais_chains"]
    per_transition = (count["rows"] - rows) / (rows * transitions)  # the initial evaluation aside
    run_evals = ev["n_test"] * ev["ais_chains"] * (1 + (ev["ais_steps"] - 1) * per_transition)
    rate = count["rows"] / seconds
    return {"latent_grad_evals_per_s": rate, "images_per_call": per_call, "rows_per_call": rows,
            "precision": precision, "transitions": transitions, "evals_per_transition": per_transition,
            "paper_run_evals": run_evals, "paper_run_min": run_evals / rate / 60, "n_test": ev["n_test"],
            "ais_steps": ev["ais_steps"], "ais_chains": ev["ais_chains"]}


# -------------------------------------------------------------------------------------------------------- main
def device_info(dev: torch.device) -> dict[str, Any]:
    info = {"device": str(dev), "torch": torch.__version__, "cuda": torch.version.cuda, "host": platform.node()}
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        info.update(name=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2 ** 30, 1))
    else:
        info.update(name=platform.processor() or platform.machine(), capability=None)
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cuda:N; cpu only with --smoke")
    ap.add_argument("--out", default="gpu_throughput.json", help="measurements for `avb plan --throughput`")
    ap.add_argument("--budget-s", type=float, default=BUDGET_S,
                    help=f"no compiled run starts after this many seconds less {COMPILE_RESERVE_S:.0f} s "
                         f"(default {BUDGET_S:.0f})")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (tests the script, e.g. on the CPU)")
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print(f"gpu_throughput: no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda}): "
              f"nothing measured")
        return 0
    if dev.type != "cuda" and not a.smoke:
        ap.error("--device cpu measures nothing worth keeping; use it with --smoke")
    t_start = time.monotonic()
    rows = paper_rows(a.smoke)
    options = {k: v for k, v in schema_options("train").items()}
    info = device_info(dev)
    print(f"device {info['name']} ({info['device']}, capability {info['capability']}), torch {info['torch']}, "
          f"CUDA {info['cuda']}; speed options in the schema: {options or 'none (the preset as it is only)'}",
          flush=True)
    result: dict[str, Any] = {"schema": SCHEMA_VERSION, "device": info, "smoke": a.smoke,
                              "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "train": {}, "ais": {}, "train_images_per_s": {}, "ais_latent_grad_evals_per_s": {}}

    def save() -> None:
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")

    # 1. naive steps, and the sizes of the project's runs from them
    sizes = {}
    for m in METHODS:
        run = rows[m]["run"]
        naive = {"fp32": naive_images_per_s(run, dev, False, a.smoke),
                 "tf32": naive_images_per_s(run, dev, True, a.smoke)}
        steps_per_s = naive["tf32"] / run["train"]["batch_size"]
        sizes[m] = (1, 1) if a.smoke else (max(20, int(steps_per_s * 0.4)), 4)  # log_every, timed windows
        result["train"][m] = {"arch": run["model"].get("arch"), "batch_size": run["train"]["batch_size"],
                              "preset_options": {k: run["train"].get(k) for k in options},
                              "naive_images_per_s": naive, "project": {}}
        print(f"{m:7s} {run['model'].get('arch')} batch {run['train']['batch_size']}: naive fp32 "
              f"{naive['fp32']:9.0f} img/s, tf32 {naive['tf32']:9.0f} img/s", flush=True)
    save()

    def project_phase(phase: str) -> None:
        for m in METHODS:
            run, project = rows[m]["run"], result["train"][m]["project"]
            for ph, changes in option_sets(run["train"], options):
                if ph != phase:
                    continue
                name = label(changes)
                if phase == "compiled" and a.smoke:
                    project[name] = {"changes": changes, "skipped": "smoke: no compilation"}
                    continue
                if phase == "compiled" and time.monotonic() - t_start > a.budget_s - COMPILE_RESERVE_S:
                    project[name] = {"changes": changes, "skipped": f"past the {a.budget_s:.0f} s budget"}
                    print(f"{m:7s} project {name}: skipped (budget)", flush=True)
                    continue
                r = json.loads(json.dumps(run))
                r["train"].update(changes)
                try:
                    project[name] = {"changes": changes, **project_images_per_s(r, dev, *sizes[m])}
                    print(f"{m:7s} project {name}: {project[name]['images_per_s']:9.0f} img/s "
                          f"({project[name]['wall_s']:.0f} s)", flush=True)
                except Exception as err:  # one option failing does not lose the others' numbers
                    project[name] = {"changes": changes, "error": f"{type(err).__name__}: {str(err)[:300]}"}
                    print(f"{m:7s} project {name}: {project[name]['error']}", flush=True)
                save()

    # 2. the project's eager runs; 3. AIS; 4. compiled runs while the budget lasts (AIS first: the last line needs it)
    project_phase("eager")
    for m in METHODS:
        r = ais_rate(rows[m]["run"], rows[m]["eval"], dev, target_s=0.0 if a.smoke else 6.0,
                     max_transitions=1 if a.smoke else 5)
        result["ais"][m] = r
        result["ais_latent_grad_evals_per_s"][m] = r["latent_grad_evals_per_s"]
        print(f"AIS {m:7s}: {r['images_per_call']} images x {r['ais_chains']} chains per call ({r['precision']}), "
              f"{r['latent_grad_evals_per_s']:10.0f} latent-gradient evaluations/s; a paper-scale run "
              f"({r['n_test']} images x {r['ais_chains']} chains x {r['ais_steps']} steps) = "
              f"{r['paper_run_min']:.1f} min", flush=True)
        save()
    project_phase("compiled")

    speedup = {}
    for m in METHODS:
        t = result["train"][m]
        measured = {k: v["images_per_s"] for k, v in t["project"].items()
                    if math.isfinite(v.get("images_per_s", math.nan))}
        best = max(measured, key=measured.get) if measured else None
        preset = "as the preset" if "as the preset" in measured else best  # what the preset runs, where measured
        t["best"] = {"option": best, "images_per_s": measured.get(best, math.nan)}
        t["preset"] = {"option": preset, "images_per_s": measured.get(preset, math.nan)}
        speedup[m] = t["preset"]["images_per_s"] / t["naive_images_per_s"]["tf32"]
        t["speedup_vs_naive_tf32"] = speedup[m]
        result["train_images_per_s"][m] = t["preset"]["images_per_s"]
        print(f"{m:7s}: the preset's settings ({preset}) {t['preset']['images_per_s']:9.0f} img/s = "
              f"{speedup[m]:.2f} x naive tf32; fastest measured: {best}", flush=True)
    run_min = max(result["ais"][m]["paper_run_min"] for m in METHODS)
    result["ais_paper_run_min"] = run_min
    result["wall_s"] = time.monotonic() - t_start
    save()
    print(f"wrote {a.out} ({result['wall_s']:.0f} s)")
    print("gpu train speedup vs naive: " + " ".join(f"{m}={speedup[m]:.2f}" for m in METHODS) +
          f" ais_paper_run_min={run_min:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
