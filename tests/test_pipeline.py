"""The Snakemake pipeline end to end on a tiny config, config validation, the default profile, every rule's
resources from the config, `make`'s command line, and the workflow imported into another one as a module."""
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
import yaml

from avb import config as avb_config
from snakemake_helpers import job_stats
from snakemake_helpers import snakemake as run_snakemake

ROOT = Path(__file__).resolve().parent.parent
# Where the tests' MNIST comes from (the same folder avb.data finds without a data_dir)
DATA_ROOT = Path(os.environ.get("AVB_DATA_DIR") or ROOT.parent / "shared" / "data")
TINY = {
    "preset": "tiny", "methods": ["vae", "avb", "avb_ac"], "z_dims": [2], "seeds": [0],
    "model": {"hidden": 32, "eps_dim": 4, "eps_nbasis": 2, "adv_hidden": 16, "adv_embed": 16, "adv_layers": 1},
    "train": {"steps": 20, "batch_size": 32, "checkpoint_every": 10, "log_every": 5, "device": "cpu"},
    "eval": {"n_test": 8, "batch_size": 8, "ais_steps": 3, "ais_chains": 2, "elbo_samples": 1, "device": "cpu"},
    "report": {"n_samples": 4},
    "toy": {"enabled": False},      # the toy and eight-schools pipelines have their own tests
    "schools": {"enabled": False},
    "convergence": {"steps": [2, 4], "n_images": 4},
}


def snakemake(workdir: Path, *args: str):
    return run_snakemake(workdir, "--cores", "2", *args)


@pytest.mark.slow
def test_pipeline_produces_summary_and_reruns_nothing(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    r = snakemake(tmp_path, "--configfile", str(cfg))
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "results" / "tiny"
    df = pd.read_csv(out / "summary.csv")
    assert sorted(df.method) == ["avb", "avb_ac", "vae"]
    for col in ("method", "dataset", "z_dim", "seed", "log_px_ais", "elbo"):
        assert col in df.columns
    assert df[["log_px_ais", "elbo"]].notna().all().all()
    assert (df.log_px_ais < 0).all() and (df.dataset == "mnist").all()
    assert "| VAE (2-dim" in (out / "summary.md").read_text()
    assert (out / "samples_and_curves.png").stat().st_size > 1000
    # The invocation left its provenance record: commit, machine, the rules it ran, its wall time.
    records = json.loads((out / "provenance.json").read_text())
    assert len(records) == 1 and records[0]["status"] == "success" and records[0]["wall_s"] > 0
    assert {"train", "evaluate", "report"} <= set(records[0]["rules"]) and records[0]["jobs"] > 10
    assert len(records[0]["commit"]) >= 40 and "cores" in records[0]["machine"]
    # A completed pipeline has nothing left to do.
    dry = snakemake(tmp_path, "--configfile", str(cfg), "-n")
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr
    # Changing the main evaluation's budgets reruns the evaluations and the report: not the training, and not the
    # AIS-budget study, which runs budgets of its own.
    cfg2 = tmp_path / "tiny2.yaml"
    cfg2.write_text(yaml.safe_dump({**TINY, "eval": {**TINY["eval"], "ais_steps": 4, "n_test": 6}}))
    dry = snakemake(tmp_path, "--configfile", str(cfg2), "-n")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert job_stats(dry.stdout + dry.stderr) == {"eval_config": 3, "evaluate": 3, "report": 1, "claims": 1,
                                                  "all": 1, "total": 9}
    # Each training tracks only what it reads: adversary and encoder-noise settings never retrain the VAE ...
    per_run = ("run_config", "train", "evaluate", "ais_convergence", "run_figures")
    adv = {**TINY, "model": {**TINY["model"], "adv_hidden": 12, "adv_embed": 12, "adv_layers": 2, "eps_dim": 3,
                             "eps_nbasis": 3},
           "train": {**TINY["train"], "lr_adversary": 3e-4, "adversary_steps": 2}}
    assert dry_jobs(tmp_path, adv) == {(rule, m) for rule in per_run for m in ("avb", "avb_ac")}
    # ... and the noise-basis size only AVB + AC.
    nbasis = {**TINY, "model": {**TINY["model"], "eps_nbasis": 3}}
    assert dry_jobs(tmp_path, nbasis) == {(rule, "avb_ac") for rule in per_run}
    # Data are tracked by their checksum, not by their folder: data found elsewhere retrain nothing.
    moved = tmp_path / "moved data"
    moved.symlink_to(DATA_ROOT, target_is_directory=True)
    assert dry_jobs(tmp_path, {**TINY, "data_dir": str(moved)}) == set()
    # The Table 2 replica and the convergence figure are part of the report.
    assert "not yet compared with the PMLR version" in (out / "table2.md").read_text() and r"\toprule" in (out / "table2.tex").read_text()
    conv = pd.concat(pd.read_csv(p) for p in out.glob("runs/*/*/*/*/ais_convergence.csv"))
    assert sorted(conv.n_steps.unique()) == [2, 4] and set(conv.estimate) == {"ais_test", "bdmc_lower", "bdmc_upper"}
    assert (out / "ais_convergence.pdf").stat().st_size > 1000
    # `snakemake paper` renders paper/ from the results, stating the commit and the config.
    r = snakemake(tmp_path, "paper", "--configfile", str(cfg))
    assert r.returncode == 0, r.stderr[-3000:]
    md = (tmp_path / "paper" / "replication.md").read_text()
    assert "preset `tiny`" in md and "at commit `" in md and '"preset": "tiny"' in md and "| VAE (2-dim)" in md
    tex = (tmp_path / "paper" / "main.tex").read_text()
    assert r"\section{MNIST: Table 2 replica}" in tex and r"\begin{longtable}" in tex   # pandoc, from replication.md
    # The report names the invocation that produced the numbers (not the paper render itself, not the dry runs) ...
    provenance_rows = [line for line in md.splitlines() if line.startswith(f"| {records[0]['started']} |")]
    assert len(provenance_rows) == 1 and "success" in provenance_rows[0]
    assert len(json.loads((out / "provenance.json").read_text())) == 2   # + the paper invocation
    # ... and the paper invocation's own record does not make paper/ outdated.
    dry = snakemake(tmp_path, "paper", "--configfile", str(cfg), "-n")
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr
    # A failed render (here: latexmk fails) leaves the previous paper/ as it was (Snakemake deletes only the stamp).
    before = {p: (tmp_path / "paper" / p).read_bytes() for p in ("replication.md", "main.tex")}
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "latexmk").write_text("#!/bin/sh\necho 'latexmk: simulated failure' >&2\nexit 1\n")
    (fake / "latexmk").chmod(0o755)
    r = run_snakemake(tmp_path, "--cores", "1", "paper", "--forcerun", "paper", "--configfile", str(cfg),
                      path_first=fake)
    assert r.returncode != 0 and "simulated failure" in (out / "logs/paper.log").read_text()
    assert {p: (tmp_path / "paper" / p).read_bytes() for p in before} == before
    assert not (out / "paper.json").exists() and not list(tmp_path.glob(".paper.staging-*"))


def dry_jobs(workdir: Path, cfg: dict) -> set[tuple[str, str]]:
    """(rule, method) of every per-run job a dry run of ``cfg`` (in place of the completed tiny run) would run."""
    path = workdir / "changed.yaml"
    path.write_text(yaml.safe_dump(cfg))
    dry = snakemake(workdir, "--configfile", str(path), "-n")
    assert dry.returncode == 0, dry.stderr[-3000:]
    text = dry.stdout + dry.stderr
    return {(m.group(1), m.group(2)) for m in
            re.finditer(r"^(?:local)?rule (\w+):\n(?:    .*\n)*?    wildcards: .*?method=(\w+)", text, re.M)}


@pytest.mark.slow
def test_odd_paths_reach_jobs_quoted(tmp_path):
    """results_dir and data_dir with spaces, quotes and `$(...)`: the outputs land at the literal paths, the data are
    read from the literal folder, and no command hidden in a path runs."""
    data = tmp_path / "da ta $(touch DATA_PWNED) 'x\"y"
    data.symlink_to(DATA_ROOT, target_is_directory=True)
    results = "res ults/$(touch PWNED) it's \"q\""
    cfg = tmp_path / "odd.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "methods": ["avb_ac"], "results_dir": results, "data_dir": str(data)}))
    run = Path(results) / "tiny/runs/mnist/avb_ac/z2/seed0"
    r = snakemake(tmp_path, str(run / "eval.json"), str(run / "ais_convergence.csv"), "--configfile", str(cfg))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / run / "eval.json").is_file() and (tmp_path / run / "ais_convergence.csv").is_file()
    assert json.loads((tmp_path / run / "config.json").read_text())["dataset"] == "mnist"
    assert str(data) in (tmp_path / run / "logs/train.log").read_text()  # the data came from data_dir
    assert [p for p in tmp_path.rglob("*") if p.name in ("PWNED", "DATA_PWNED")] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".snakemake", "odd.yaml", data.name, "res ults"])


def test_unknown_config_key_fails_naming_it_and_writes_nothing(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "train": {**TINY["train"], "stpes": 5}}))
    r = snakemake(tmp_path, "--configfile", str(cfg), "-n")
    assert r.returncode != 0
    assert "stpes" in r.stdout + r.stderr
    assert not (tmp_path / "results").exists()


def test_schema_fills_defaults_and_rejects_bad_values():
    cfg = avb_config.validate({"preset": "x"})
    assert cfg["train"]["adam_beta1"] == 0.5 and cfg["eval"]["ais_steps"] == 1000 and cfg["eval"]["ais_chains"] == 5
    with pytest.raises(avb_config.ConfigError, match=r"z_dims\[0\]"):
        avb_config.validate({"preset": "x", "z_dims": [0]})
    with pytest.raises(avb_config.ConfigError, match=r"methods\[0\]"):
        avb_config.validate({"preset": "x", "methods": ["iwae"]})
    run = avb_config.run_config(avb_config.validate(
        {"preset": "x", "overrides": [{"match": {"method": "vae"}, "train": {"lr": 1e-4, "batch_size": 64}}]}),
        "mnist", "vae", 8, 0)
    assert run["train"]["lr"] == 1e-4 and run["train"]["batch_size"] == 64 and run["train"]["adam_beta1"] == 0.5


@pytest.mark.parametrize("preset", sorted(p.name for p in (ROOT / "config").glob("*.yaml")))
def test_shipped_presets_are_valid(preset):
    avb_config.load(ROOT / "config" / preset)


# ------------------------------------------------------------------------- profiles/default, loaded by Snakemake
@pytest.mark.slow
def test_default_profile_is_loaded_a_killed_job_reruns_under_a_plain_call(tmp_path):
    """profiles/default (beside the Snakefile) applies without --profile: after a hard kill, the plain call reruns the
    incomplete job (its rerun-incomplete), where the same call without the profile refuses to trust it."""
    cfg = tmp_path / "prof.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "preset": "prof", "methods": ["vae"], "convergence": {"enabled": False},
                                   "train": {**TINY["train"], "steps": 1500, "checkpoint_every": 100}}))
    run = Path("results/prof/runs/mnist/vae/z2/seed0")
    target = str(run / "model.pt")
    bin_dir = Path(sys.executable).parent
    p = subprocess.Popen([str(bin_dir / "snakemake"), "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "--cores",
                          "1", target, "--configfile", str(cfg)], cwd=tmp_path, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.monotonic()   # a deadline only: the kill waits for the first checkpoint, whenever it comes
        while not ((tmp_path / run / "checkpoint.pt").exists() and (tmp_path / run / "train_metrics.csv").exists()) \
                and p.poll() is None and time.monotonic() - t0 < 120:
            time.sleep(0.05)
        assert (tmp_path / run / "checkpoint.pt").exists(), "training never wrote a checkpoint"
    finally:  # a crash: snakemake and its job die at once, nothing cleans up
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    assert not (tmp_path / target).exists()
    assert run_snakemake(tmp_path, "--unlock", "--configfile", str(cfg)).returncode == 0
    # Without the profile (--workflow-profile none) the incomplete outputs are refused ...
    r = run_snakemake(tmp_path, "--cores", "1", target, "--configfile", str(cfg))
    assert r.returncode != 0 and "IncompleteFilesException" in r.stdout + r.stderr
    # ... a plain call (no --profile, no --cores: both from profiles/default) reruns the job, which resumes.
    r = run_snakemake(tmp_path, target, "--configfile", str(cfg), default_profile=True)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert f"Using workflow specific profile {ROOT / 'profiles/default'}" in out
    assert re.search(r"resuming \S+ from step [1-9]\d*", (tmp_path / run / "logs/train.log").read_text())
    assert (tmp_path / target).exists()


def test_slurm_profile_replaces_the_default_one(tmp_path):
    """--workflow-profile profiles/slurm is the SLURM entry point: it replaces profiles/default (which would else
    override its settings key by key), so the dry run uses the SLURM profile alone."""
    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "preset": "s"}))
    r = run_snakemake(tmp_path, "-n", "--workflow-profile", str(ROOT / "profiles/slurm"), "--executor", "local",
                      "--cores", "1", "--configfile", str(cfg))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert f"workflow specific profile {ROOT / 'profiles/slurm'}" in out and "profiles/default" not in out


def test_make_runs_snakemake_with_the_profile_and_args():
    # Under `make test` this runs as a sub-make: without MAKELEVEL/MAKEFLAGS it prints no "make[1]: ..." lines.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    make = ["make", "--no-print-directory", "-n"]
    r = subprocess.run(make + ["quick", "ARGS=--dry-run --forceall"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    cmd = r.stdout.strip().splitlines()[-1].split()
    assert cmd[0].endswith("bin/snakemake") and cmd[1:3] == ["--workflow-profile", "profiles/default"]
    assert cmd[3:] == ["--configfile", "config/quick.yaml", "--dry-run", "--forceall"]
    r = subprocess.run(make + ["replicate", "PRESET=paper", "PROFILE=slurm", "CORES=8"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60, env=env)
    cmd = r.stdout.strip().splitlines()[-1].split()
    assert cmd[1:] == ["--workflow-profile", "profiles/slurm", "--cores", "8", "--configfile", "config/paper.yaml"]


# ---------------------------------------------------------------------------------- resources, from the config
# Each rule and the `resources` stage it reads (every rule of a preset with all experiments on, plus `paper`).
STAGES = {"run_config": "settings", "eval_config": "settings", "convergence_config": "settings",
          "report_config": "settings", "toy_run_config": "settings", "toy_eval_config": "settings",
          "schools_settings": "settings", "paper_config": "settings", "train": "train", "evaluate": "evaluate",
          "ais_convergence": "evaluate", "report": "report", "run_figures": "report", "claims": "claims",
          "paper": "paper", "toy_train": "toy_train", "toy_evaluate": "toy_evaluate", "toy_report": "toy_report",
          "schools_gold": "schools_gold", "schools_fit": "schools_fit", "schools_kl": "schools_kl",
          "schools_report": "schools_report"}


def test_every_rule_reads_its_resources_from_the_config(tmp_path):
    stages = sorted(set(STAGES.values()))
    gpu_stages = {"train", "evaluate", "toy_train", "toy_evaluate", "schools_fit"}
    resources = {st: {"mem_mb": 1000 + 10 * i, "runtime": 100 + i, **({"gpu": 2 + i} if st in gpu_stages else {})}
                 for i, st in enumerate(stages)}
    cfg = tmp_path / "res.yaml"
    cfg.write_text(yaml.safe_dump({
        **TINY, "preset": "res", "methods": ["avb"], "resources": resources,
        "train": {**TINY["train"], "device": "auto"}, "eval": {**TINY["eval"], "device": "cuda"},
        "toy": {"enabled": True, "methods": ["avb"], "train": {"device": "auto"}, "eval": {"device": "cuda:0"}},
        "schools": {"enabled": True, "methods": ["avb"], "device": "auto"}}))
    r = snakemake(tmp_path, "-n", "all", "paper", "--configfile", str(cfg))
    assert r.returncode == 0, r.stderr[-3000:]
    seen = set()
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", r.stdout + r.stderr):
        m = re.match(r"(?:local)?rule (\w+):\n", block)
        if not m or m.group(1) == "all":
            continue
        rule = m.group(1)
        res = dict(kv.split("=", 1) for kv in re.search(r"resources: (.*)", block).group(1).split(", "))
        want = resources[STAGES[rule]]
        assert (int(res["mem_mb"]), int(res["runtime"])) == (want["mem_mb"], want["runtime"]), (rule, res)
        assert int(res.get("gpu", 0)) == want.get("gpu", 0), (rule, res)   # every job's device here is a GPU's
        seen.add(rule)
    assert seen == set(STAGES)


# ------------------------------------------------------------------------------------ imported as a module
HOST = """\
rule host:
    output: "host_env.txt"
    shell: "env | grep -v '^_=' | sort > {output}; echo \\"shell options: $-\\" >> {output}"
"""
IMPORTING = """\
module avb_pipeline:
    snakefile: "%s"
    config: %r

use rule * from avb_pipeline as avb_*

""" + HOST


def test_workflow_imported_as_a_module_leaves_the_host_rules_alone(tmp_path):
    """A host workflow that imports this one (Snakemake `module` / `use rule *`) gets its rules, which still run the
    avb package of this checkout, while the host's own rules run in the shell and environment they would have without
    it: no shell.prefix, no environment variable set."""
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain/Snakefile").write_text(HOST)
    (tmp_path / "host").mkdir()
    cfg = {**TINY, "preset": "hosted", "methods": ["vae"], "convergence": {"enabled": False}}
    (tmp_path / "host/Snakefile").write_text(IMPORTING % (ROOT / "Snakefile", cfg))
    envs = {}
    for name in ("plain", "host"):
        d = tmp_path / name
        r = run_snakemake(d, "--cores", "1", "host_env.txt", snakefile=d / "Snakefile")
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        envs[name] = (d / "host_env.txt").read_text()
    assert envs["host"] == envs["plain"].replace(str(tmp_path / "plain"), str(tmp_path / "host"))
    assert "AVB" not in envs["host"] and "shell options:" in envs["host"]
    # The imported rules are there and run: a settings job for real, a training job's command (dry run) with the
    # checkout's package on PYTHONPATH.
    run = "results/hosted/runs/mnist/vae/z2/seed0"
    d = tmp_path / "host"
    r = run_snakemake(d, "--cores", "1", f"{run}/config.json", snakefile=d / "Snakefile")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert json.loads((d / run / "config.json").read_text())["method"] == "vae"
    r = run_snakemake(d, "-n", "-p", f"{run}/model.pt", snakefile=d / "Snakefile")
    assert r.returncode == 0 and "rule avb_train:" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"export PYTHONPATH={ROOT}" in r.stdout and "exec python -m avb.cli train" in r.stdout
