"""The SLURM profile against a real SLURM: a single-node slurmctld + slurmd on localhost
(scripts/slurm/start-local-slurm.sh installs slurm-wlm and munge from the distribution where missing, and starts
them). A tiny preset goes through `snakemake --workflow-profile profiles/slurm`; the test checks that its jobs ran
as SLURM jobs and that the results equal those of a local run of the same config.

The daemons are left running (a second run finds them up: the script is idempotent). Stop them with
`scripts/slurm/start-local-slurm.sh --stop`. Skipped, with the script's reason, where the cluster cannot start
(not root and no SLURM, no apt-get, ...).
"""
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SCRIPT = ROOT / "scripts/slurm/start-local-slurm.sh"
TINY = {
    "preset": "slurm", "methods": ["avb"], "z_dims": [2], "seeds": [0], "threads": 1,
    "model": {"hidden": 32, "eps_dim": 4, "eps_nbasis": 2, "adv_hidden": 16, "adv_embed": 16, "adv_layers": 1},
    "train": {"steps": 20, "batch_size": 32, "checkpoint_every": 10, "log_every": 5, "device": "cpu"},
    "eval": {"n_test": 8, "batch_size": 8, "ais_steps": 3, "ais_chains": 2, "elbo_samples": 1, "device": "cpu"},
    "report": {"n_samples": 4},
    "resources": {"train": {"mem_mb": 1000, "runtime": 10}, "evaluate": {"mem_mb": 1000, "runtime": 10},
                  "report": {"mem_mb": 1000, "runtime": 10}},
    "toy": {"enabled": False}, "schools": {"enabled": False}, "convergence": {"enabled": False},
}
RUN = "results/slurm/runs/mnist/avb/z2/seed0"
SLURM_RULES = {"train", "evaluate", "run_figures", "report"}  # config and claims rules are local, `all` has nothing to run


@pytest.fixture(scope="module")
def cluster():
    t0 = time.monotonic()
    r = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        reason = [line for line in r.stderr.splitlines() if "cannot start" in line] or r.stderr.splitlines()[-1:]
        pytest.skip(f"no local SLURM: {' '.join(reason) or 'start-local-slurm.sh failed'}")
    print(f"\n{r.stdout}(cluster up in {time.monotonic() - t0:.0f} s)")
    return r.stdout


def snakemake(workdir: Path, *args: str) -> subprocess.Popen:
    """Snakemake started in the background; its output (stdout and stderr) goes to workdir/snakemake.out."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    with open(workdir / "snakemake.out", "w") as out:
        return subprocess.Popen([str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "-d", str(workdir), *args],
                                cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)


def finish(p: subprocess.Popen, workdir: Path, timeout: float) -> str:
    try:
        p.wait(timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill()
    return (workdir / "snakemake.out").read_text()


@pytest.mark.slow
def test_tiny_preset_through_slurm_profile_matches_local_run(cluster, tmp_path):
    t0 = time.monotonic()
    local_dir, slurm_dir = tmp_path / "local", tmp_path / "slurm"
    for d in (local_dir, slurm_dir):
        d.mkdir()
        (d / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    # The same config, locally (in the background) and through the SLURM profile.
    local = snakemake(local_dir, "--cores", "1", "--configfile", "tiny.yaml")
    slurm = snakemake(slurm_dir, "--workflow-profile", str(ROOT / "profiles/slurm"), "--configfile", "tiny.yaml",
                      # test speed: first status check 2 s after submission (the profile: 40 s); keep the SLURM
                      # logs of successful jobs (the profile deletes them) to inspect them here.
                      "--slurm-init-seconds-before-status-checks", "2", "--slurm-keep-successful-logs")
    out = finish(slurm, slurm_dir, timeout=420)
    local_out = finish(local, local_dir, timeout=420)
    print(f"SLURM run: {time.monotonic() - t0:.0f} s")
    assert slurm.returncode == 0, out[-5000:]
    assert local.returncode == 0, local_out[-5000:]

    # The jobs went through SLURM: submitted with sbatch (job ids and logs named by the plugin), ...
    submitted = re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.", out)
    assert len(submitted) == len(SLURM_RULES), out[-5000:]
    slurm_ids = [jid for _, jid, _ in submitted]
    rules = set()
    for _, jid, log in submitted:
        log = Path(log)
        assert log.is_relative_to(slurm_dir / ".snakemake/slurm_logs") and log.name == f"{jid}.log"
        text = log.read_text()
        rule = log.relative_to(slurm_dir / ".snakemake/slurm_logs").parts[0].removeprefix("rule_")
        rules.add(rule)
        # ... each SLURM job ran Snakemake's job step for its rule (executor slurm-jobstep, inside the allocation)
        assert "--executor slurm-jobstep" in text and f"rule {rule}:" in text, text[-3000:]
        assert f"Finished jobid: 0 (Rule: {rule})" in text, text[-3000:]
    assert rules == SLURM_RULES
    # ... and slurmctld knows them as completed jobs of this run (squeue --states=all keeps finished jobs for
    # MinJobAge; this cluster has no accounting, sacct has nothing).
    sq = subprocess.run(["squeue", "--states=all", "--noheader", "--format=%i|%T|%j", "--jobs", ",".join(slurm_ids)],
                        capture_output=True, text=True, timeout=30)
    states = dict(line.split("|", 1) for line in sq.stdout.split() if "|" in line)
    assert sorted(states) == sorted(slurm_ids), sq.stdout + sq.stderr
    assert all(s.startswith("COMPLETED|avb_") for s in states.values()), states
    # The plugin learnt that they had completed from squeue: sacct, where installed, has no record of them.
    sacct = subprocess.run(["sacct", "--noheader", "-X", "--format=JobIdRaw", "--jobs", ",".join(slurm_ids)],
                           capture_output=True, text=True, timeout=30) if shutil.which("sacct") else None
    assert sacct is None or sacct.returncode != 0 or not sacct.stdout.split(), sacct.stdout

    # The results equal the local run's: training and evaluation are deterministic on the CPU with one thread.
    def summary(d):
        return pd.read_csv(d / "results/slurm/summary.csv").drop(columns=["eval_seconds"])
    pd.testing.assert_frame_equal(summary(slurm_dir), summary(local_dir))
    for d in (local_dir, slurm_dir):
        assert (d / "results/slurm/samples_and_curves.png").stat().st_size > 1000
    metrics = [pd.read_csv(d / RUN / "train_metrics.csv").drop(columns=["images_per_s"]) for d in (local_dir, slurm_dir)]
    pd.testing.assert_frame_equal(*metrics)
    models = [torch.load(d / RUN / "model.pt", weights_only=True)["model"] for d in (local_dir, slurm_dir)]
    assert models[0].keys() == models[1].keys()
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])
    assert (slurm_dir / RUN / "eval_per_image.csv").read_text() == (local_dir / RUN / "eval_per_image.csv").read_text()

    # A completed run has nothing left to do under the profile either.
    again = snakemake(slurm_dir, "--workflow-profile", str(ROOT / "profiles/slurm"), "--configfile", "tiny.yaml", "-n")
    dry = finish(again, slurm_dir, timeout=120)
    assert again.returncode == 0 and "Nothing to be done" in dry, dry[-3000:]


def grouped_profile(folder: Path, k: int) -> Path:
    """A copy of profiles/slurm with its opt-in job-group block uncommented, K = ``k`` jobs per group."""
    lines, out, on = (ROOT / "profiles/slurm/config.yaml").read_text().splitlines(), [], False
    for line in lines:
        if line.startswith(("# groups:", "# group-components:")):
            on = True
        elif not line.startswith("#   - "):
            on = False
        out.append(re.sub(r"=4$", f"={k}", line[2:]) if on else line)
    folder.mkdir()
    (folder / "config.yaml").write_text("\n".join(out) + "\n")
    return folder


@pytest.mark.slow
def test_k_runs_share_one_slurm_allocation_through_job_groups(cluster, tmp_path):
    """profiles/slurm's job-group block (issue 15 item 5), K = 2: the training jobs of two runs go to SLURM as one
    job, and so do their evaluations; the runs finish as they would alone."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "tiny.yaml").write_text(yaml.safe_dump({**TINY, "seeds": [0, 1]}))
    profile = grouped_profile(tmp_path / "profile", 2)
    assert "gpu_train=2" in (profile / "config.yaml").read_text()
    p = snakemake(work, "--workflow-profile", str(profile), "--configfile", "tiny.yaml",
                  "--slurm-init-seconds-before-status-checks", "2", "--slurm-keep-successful-logs")
    out = finish(p, work, timeout=420)
    assert p.returncode == 0, out[-5000:]
    submitted = re.findall(r"Job (\S+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.", out)
    by_dir: dict[str, list[str]] = {}
    for _, jid, log in submitted:
        top = Path(log).relative_to(work / ".snakemake/slurm_logs").parts[0]
        # the SLURM plugin names a group's log folder group_<group id>_<its rules>: group_gpu_train_train
        top = re.sub(r"^(group_gpu_(?:train|eval))_.*$", r"\1", top)
        by_dir.setdefault(top, []).append(Path(log).read_text())
    # one SLURM job per group of two runs, one per run for the ungrouped per-run figures, one report
    assert {d: len(t) for d, t in by_dir.items()} == {"group_gpu_train": 1, "group_gpu_eval": 1,
                                                      "rule_run_figures": 2, "rule_report": 1}, out[-5000:]
    for group, rule in (("group_gpu_train", "train"), ("group_gpu_eval", "evaluate")):
        text = by_dir[group][0]
        assert f"rule {rule}:" in text, text[-3000:]
        assert re.search(r"\b2 of 2 steps \(100%\) done", text), text[-3000:]  # both runs' jobs in the one job
        assert "seed=0" in text and "seed=1" in text, text[-3000:]
    summary = pd.read_csv(work / "results/slurm/summary.csv")
    assert sorted(summary["seed"]) == [0, 1]


class _Resources(dict):
    """A job's resources as the plugin reads them: .get() and attribute access."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


@pytest.mark.parametrize("preset,gpus", [("paper", 1), ("quick", 0)])
def test_preset_jobs_become_sbatch_requests(preset, gpus, tmp_path):
    """Without a cluster: the resources of the preset's jobs (from a dry run) turned into the sbatch call by the
    plugin's own code: --mem, --time, --cpus-per-task and, for GPU presets, --gpus."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    cfg = yaml.safe_load((ROOT / "config" / f"{preset}.yaml").read_text())
    r = subprocess.run([str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "-n",
                        "--cores", "64",  # a local dry run scales threads down to --cores; a cluster does not
                        "--configfile", str(ROOT / "config" / f"{preset}.yaml")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    seen = set()
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", r.stdout + r.stderr):
        m = re.match(r"rule (train|evaluate):\n", block)
        if not m or m.group(1) in seen:
            continue
        seen.add(m.group(1))
        res = _Resources((k, int(v) if v.isdigit() else v) for k, v in
                         (kv.split("=", 1) for kv in re.search(r"resources: (.*)", block).group(1).split(", ")))
        threads = re.search(r"^\s+threads: (\d+)$", block, re.M)
        job = type("Job", (), {"resources": res, "threads": int(threads.group(1)) if threads else 1,
                               "name": m.group(1), "is_group": lambda self: False})()
        settings = type("Settings", (), {"requeue": False, "no_requeue": False, "qos": None, "reservation": None})()
        params = {"run_uuid": "avb_test", "slurm_logfile": "log/%j.log", "comment_str": f"rule_{m.group(1)}",
                  "account": "", "partition": "", "workdir": str(tmp_path)}
        call = get_submit_command(job, params, settings) + set_gres_string(job)
        want = cfg["resources"][m.group(1)]
        assert f"--mem {want['mem_mb']}" in call and f"-t {want['runtime']}" in call, call
        assert f"--cpus-per-task={cfg.get('threads', 1)}" in call, call
        assert (f"--gpus={gpus}" in call) == bool(gpus) and ("--gpus" in call) == bool(gpus), call
    assert seen == {"train", "evaluate"}
