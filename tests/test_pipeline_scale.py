"""The pipeline at scale, locally: resources and GPU caps, reruns that are cheap and safe (only affected jobs, killed
jobs never trusted, failed jobs' logs kept and named), the captioned report, lint, and the presets' full sweeps.

One tiny two-method pipeline run (module fixture) serves the rerun, resource and report tests.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from avb import config as avb_config
from snakemake_helpers import job_stats, snakemake

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RUN = "runs/mnist/{method}/z2/seed0"
OFF = {"toy": {"enabled": False}, "schools": {"enabled": False}, "convergence": {"enabled": False}}  # this file tests the image-model sweep only
TINY = {
    "preset": "scale", "methods": ["vae", "avb"], "z_dims": [2], "seeds": [0],
    "model": {"hidden": 32, "eps_dim": 4, "eps_nbasis": 2, "adv_hidden": 16, "adv_embed": 16, "adv_layers": 1},
    # device auto + one GPU per job: on this CPU machine the jobs run on the CPU but still hold the `gpu` resource
    # and one `gpu_slots`, so `--resources gpu_slots=1` (profiles/default's cap) must run them one at a time.
    "train": {"steps": 20, "batch_size": 32, "checkpoint_every": 10, "log_every": 5, "device": "auto"},
    "eval": {"n_test": 8, "batch_size": 8, "ais_steps": 3, "ais_chains": 2, "elbo_samples": 1, "device": "auto"},
    "report": {"n_samples": 4},
    "resources": {"train": {"gpu": 1, "mem_mb": 1000, "runtime": 10}, "evaluate": {"gpu": 1, "mem_mb": 1000}},
    **OFF,
}


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def jobs(text: str) -> list[dict]:
    """The jobs a Snakemake (dry) run printed: rule, jobid, wildcards and resources of each."""
    out = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", text):
        m = re.match(r"(?:local)?rule (\w+):\n", block)
        if not m:
            continue
        job = {"rule": m.group(1)}
        for key in ("jobid", "wildcards", "resources"):
            km = re.search(rf"^\s+{key}: (.*)$", block, re.M)
            job[key] = km.group(1) if km else ""
        job["res"] = dict(kv.split("=", 1) for kv in job["resources"].split(", ") if "=" in kv)
        out.append(job)
    return out


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """The tiny sweep run to completion with `--cores 2 --resources gpu_slots=1`; returns (workdir, config, output)."""
    work = tmp_path_factory.mktemp("scale")
    cfg = write_config(work / "scale.yaml", TINY)
    t0 = time.monotonic()
    # the jobs ask for a GPU this machine lacks: AVB_ALLOW_NO_GPU lets them fall back to the CPU (avb.device)
    os.environ["AVB_ALLOW_NO_GPU"] = "1"
    try:
        r = snakemake(work, "--cores", "2", "--resources", "gpu_slots=1", "--configfile", str(cfg))
    finally:
        del os.environ["AVB_ALLOW_NO_GPU"]
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    print(f"tiny pipeline: {time.monotonic() - t0:.0f} s")
    return work, cfg, r.stdout + r.stderr


@pytest.mark.slow
def test_every_job_declares_resources_and_gpu_cap_serialises(pipeline):
    work, cfg, out = pipeline
    run = jobs(out)
    assert {j["rule"] for j in run} >= {"run_config", "train", "evaluate", "report", "all"}
    for j in run:
        if j["rule"] != "all":
            assert "mem_mb" in j["res"] and "runtime" in j["res"], j
        if j["rule"] in ("train", "evaluate"):
            assert j["res"]["gpu"] == "1" and j["res"]["gpu_slots"] == "1" and j["res"]["mem_mb"] == "1000", j
    # Replay the log: never more than one job holding the GPU at a time.
    gpu_jobs = {j["jobid"] for j in run if j["rule"] in ("train", "evaluate")}
    running, peak = set(), 0
    for m in re.finditer(r"^\s+jobid: (\d+)$|^Finished jobid: (\d+)", out, re.M):
        if m.group(1) in gpu_jobs:
            running.add(m.group(1))
        elif m.group(2) in gpu_jobs:
            running.discard(m.group(2))
        peak = max(peak, len(running))
    assert peak == 1 and len(gpu_jobs) == 4
    # The measured use of each job is kept beside it (for sizing resources).
    bench = pd.read_csv(work / "results/scale" / RUN.format(method="vae") / "benchmarks/train.tsv", sep="\t")
    assert bench["max_rss"].iloc[0] > 0


@pytest.mark.slow
def test_reruns_only_what_a_change_affects(pipeline, tmp_path):
    work, cfg, _ = pipeline
    dry = snakemake(work, "-n", "--configfile", str(cfg))
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr
    # A training value of one method: that method's run is retrained and re-evaluated, and the report redone.
    over = write_config(tmp_path / "over.yaml", {**TINY, "overrides": [{"match": {"method": "avb"},
                                                                         "train": {"lr": 3e-4}}]})
    dry = snakemake(work, "-n", "--configfile", str(over))
    assert dry.returncode == 0, dry.stderr[-3000:]
    text = dry.stdout + dry.stderr
    assert job_stats(text) == {"run_config": 1, "train": 1, "evaluate": 1, "run_figures": 1, "report": 1, "claims": 1,
                               "all": 1, "total": 7}
    assert all("method=avb" in j["wildcards"] for j in jobs(text) if j["rule"] in ("run_config", "train", "evaluate"))
    # Resources are not results: changing them reruns nothing.
    res = write_config(tmp_path / "res.yaml", {**TINY, "resources": {"train": {"mem_mb": 3000, "runtime": 99}}})
    dry = snakemake(work, "-n", "--configfile", str(res))
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr


def report_items(html: str) -> tuple[dict, dict]:
    """The items (path -> name, labels, caption, ...) and categories of a Snakemake HTML report."""
    found = {}
    for var in ("results", "categories"):
        m = re.search(rf"\b{var} = (\{{.*?\}});\n", html, re.S)
        assert m, f"no `{var} = {{...}};` in the report (Snakemake's report format changed?)"
        found[var] = json.loads(m.group(1))
    return found["results"], found["categories"]


@pytest.mark.slow
def test_report_has_captioned_figures_and_tables_by_stage(pipeline):
    work, cfg, _ = pipeline
    r = snakemake(work, "--configfile", str(cfg), "--report", "results/scale/report.html")
    assert r.returncode == 0, r.stderr[-3000:]
    html = (work / "results/scale/report.html").read_text()
    items, categories = report_items(html)
    run = "results/scale/" + RUN
    assert categories == {
        "1. Training": {"mnist, z = 2": [run.format(method=m) + f"/{f}" for f in ("curves.png", "train_metrics.csv")
                                         for m in ("vae", "avb")]},
        "2. Evaluation": {"mnist, z = 2": [run.format(method=m) + "/eval_per_image.csv" for m in ("vae", "avb")]},
        "3. Summary": {"Other": [f"results/scale/{f}" for f in ("claims.md", "samples_and_curves.png", "summary.csv",
                                                                 "summary.md", "table2.md")]},
        "4. Figures": {"mnist, z = 2": [run.format(method=m) + f"/{f}" for f in ("fig7.png", "interpolations.png")
                                        for m in ("vae", "avb")]},
    }
    captions = {path: " ".join(re.sub(r"<[^>]+>", "", item["caption"]).split()) for path, item in items.items()}
    assert set(captions) == {f for cat in categories.values() for files in cat.values() for f in files}
    assert all(len(c) > 80 for c in captions.values()), captions
    # Rendered with the run's wildcards and the config.
    assert captions[run.format(method="avb") + "/train_metrics.csv"].startswith(
        "Training curve of avb on mnist, z = 2, seed 0: one row every 5 steps (of 20)")
    assert "(8 images) with its AIS estimate of log p(x) (3 steps x 2 chains)" in captions[
        run.format(method="vae") + "/eval_per_image.csv"]
    assert captions["results/scale/samples_and_curves.png"].startswith("Left panels: Bernoulli means of each model")
    assert captions[run.format(method="vae") + "/curves.png"].startswith(
        "Training and validation curves of vae on mnist, z = 2, seed 0, against the training step: (a) the ELBO, "
        "during training the mean over each 5-step window")
    assert items["results/scale/samples_and_curves.png"]["mime_type"] == "image/png"
    assert "All runs of preset scale" in captions["results/scale/summary.csv"]
    assert "Adversarial Variational Bayes" in html and "<strong>scale</strong>" in html  # the workflow description


@pytest.mark.slow
def test_killed_training_is_not_trusted_and_resumes(tmp_path):
    cfg = write_config(tmp_path / "kill.yaml", {
        **TINY, "preset": "kill", "methods": ["vae"], "resources": {},
        "train": {**TINY["train"], "device": "cpu", "steps": 1500, "checkpoint_every": 100, "log_every": 50},
        "eval": {**TINY["eval"], "device": "cpu"}})
    run = tmp_path / "results/kill" / RUN.format(method="vae")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    p = subprocess.Popen([str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "--cores", "1",
                          "--configfile", str(cfg)], cwd=tmp_path, env=env, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.monotonic()
        # both files of the first checkpoint (written one after the other) must exist before the kill
        while not ((run / "checkpoint.pt").exists() and (run / "train_metrics.csv").exists()) and p.poll() is None \
                and time.monotonic() - t0 < 120:
            time.sleep(0.05)
        assert (run / "checkpoint.pt").exists(), "training never wrote a checkpoint"
    finally:  # a crash: snakemake and its jobs die at once, nothing cleans up
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    assert not (run / "model.pt").exists()
    # The partial outputs are not trusted: a plain rerun refuses, naming the incomplete output ...
    r = snakemake(tmp_path, "--cores", "1", "--configfile", str(cfg))
    assert r.returncode != 0 and "IncompleteFilesException" in r.stdout + r.stderr
    assert f"{run.relative_to(tmp_path)}/train_metrics.csv" in r.stdout + r.stderr
    # ... the crashed run's lock is found (Snakemake asks for --unlock) ...
    r = snakemake(tmp_path, "--cores", "1", "--configfile", str(cfg), "--rerun-incomplete")
    assert r.returncode != 0 and "cannot be locked" in r.stdout + r.stderr
    assert snakemake(tmp_path, "--unlock", "--configfile", str(cfg)).returncode == 0
    # ... and --rerun-incomplete (set in both profiles) reruns the job, which resumes from its checkpoint.
    r = snakemake(tmp_path, "--cores", "1", "--configfile", str(cfg), "--rerun-incomplete")
    assert r.returncode == 0, r.stderr[-3000:]
    log = (run / "logs/train.log").read_text()
    assert re.search(r"resuming \S+ from step [1-9]\d*", log), log[-2000:]
    assert torch.load(run / "model.pt", weights_only=True)["step"] == 1500
    metrics = pd.read_csv(run / "train_metrics.csv")
    assert list(metrics.step) == list(range(50, 1501, 50)) and metrics.elbo.notna().all()
    assert (tmp_path / "results/kill/summary.csv").exists()
    dry = snakemake(tmp_path, "-n", "--configfile", str(cfg))
    assert "Nothing to be done" in dry.stdout + dry.stderr


@pytest.mark.slow
def test_failed_job_keeps_its_log_and_names_it(tmp_path):
    cfg = write_config(tmp_path / "fail.yaml", {
        **TINY, "preset": "fail", "methods": ["vae"], "resources": {},
        "train": {**TINY["train"], "device": "cpu"},
        "overrides": [{"match": {"method": "vae"},
                       "train": {"batch_size": 100000}}]})  # more than the 55k training images
    r = snakemake(tmp_path, "--cores", "1", "--configfile", str(cfg), "--show-failed-logs")
    out = r.stdout + r.stderr
    assert r.returncode != 0
    log = Path("results/fail") / RUN.format(method="vae") / "logs/train.log"
    assert (tmp_path / log).exists()
    assert "batch_size 100000 exceeds" in (tmp_path / log).read_text()
    assert str(log) in out                          # the path, in the error report
    assert "batch_size 100000 exceeds" in out       # and the log itself (--show-failed-logs)
    assert not (tmp_path / log.parent.parent / "model.pt").exists()
    assert not (tmp_path / log.parent.parent / "train_metrics.csv").exists()


def test_lint_is_clean():
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    r = subprocess.run([str(BIN / "snakemake"), "--lint"], cwd=ROOT, capture_output=True, text=True, env=env,
                       timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Congratulations, your workflow is in a good condition!" in out, out[-4000:]


@pytest.mark.parametrize("preset", ["quick", "cpu", "paper"])
def test_preset_dry_run_lists_the_full_sweep(preset, tmp_path):
    cfg = avb_config.load(ROOT / "config" / f"{preset}.yaml")
    n = len(cfg["datasets"]) * len(cfg["methods"]) * len(cfg["z_dims"]) * len(cfg["seeds"])
    r = snakemake(tmp_path, "-n", "--configfile", str(ROOT / "config" / f"{preset}.yaml"), timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    text = r.stdout + r.stderr
    stats = job_stats(text)
    assert {k: stats[k] for k in ("run_config", "train", "evaluate", "report", "all")} == {
        "run_config": n, "train": n, "evaluate": n, "report": 1, "all": 1}
    for j in jobs(text):
        if j["rule"] in ("train", "evaluate"):
            res = cfg["resources"][j["rule"]]
            gpu = res["gpu"] if cfg["train" if j["rule"] == "train" else "eval"]["device"] != "cpu" else 0
            assert j["res"]["gpu"] == str(gpu) and j["res"]["mem_mb"] == str(res["mem_mb"]), j
            assert j["res"]["runtime"] == str(res["runtime"]), j
    assert not (tmp_path / "results").exists()
