"""Several runs per GPU and one GPU per job (issue 15 item 5), on the CPU with fake device lists.

* avb.gpus: concurrent job processes never share a device slot, a killed job's slot is free at once, K jobs per
  device spread over the devices first, a waiting job gets the first slot that frees;
* the CLI takes the slot for the job's device before it runs;
* the resources the workflow gives GPU jobs: gpu_slots (the local cap) and, in a SLURM job group, a gpu count that
  the group does not multiply by its K jobs (Snakemake's own group arithmetic and the SLURM plugin's own sbatch
  flag, fed the values the rules give).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from avb import cli, gpus, jobs
from snakemake_helpers import snakemake

ROOT = Path(__file__).resolve().parent.parent

# A job process: takes a slot for device auto, writes the device it got to <dir>/<name>.dev, then holds the slot
# until <dir>/stop exists (or it is killed).
HOLDER = """
import os, sys, time
from pathlib import Path
from avb import gpus
folder, name = Path(sys.argv[1]), sys.argv[2]
slot = gpus.claim("auto")
tmp = folder / (name + ".tmp")
tmp.write_text(os.environ["CUDA_VISIBLE_DEVICES"] + " " + str(slot.index))
os.replace(tmp, folder / (name + ".dev"))
while not (folder / "stop").exists():
    time.sleep(0.02)
"""


def _env(lock_dir: Path, devices: str, per_gpu: int = 1) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    env.update({"AVB_GPUS": devices, "AVB_JOBS_PER_GPU": str(per_gpu), "AVB_GPU_LOCK_DIR": str(lock_dir),
                "PYTHONPATH": str(ROOT)})
    return env


def _start(folder: Path, name: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), name], env=env, stderr=subprocess.PIPE,
                            text=True)


def _got(folder: Path, name: str, timeout: float = 30.0) -> tuple[str, int] | None:
    """The (device, slot index) job ``name`` got, waiting up to ``timeout`` s; None if it got none by then."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        f = folder / f"{name}.dev"
        if f.exists():
            dev, idx = f.read_text().split()
            return dev, int(idx)
        time.sleep(0.02)
    return None


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


def test_concurrent_jobs_never_share_a_device_and_a_killed_jobs_slot_is_freed(tmp_path, procs):
    locks = tmp_path / "locks"
    env = _env(locks, "3,7")
    procs += [_start(tmp_path, "a", env), _start(tmp_path, "b", env)]
    got = {name: _got(tmp_path, name) for name in ("a", "b")}
    assert None not in got.values(), [p.stderr.read() for p in procs if p.poll() is not None]
    assert {got["a"][0], got["b"][0]} == {"3", "7"}           # two jobs at once: one device each
    assert gpus.try_acquire(["3", "7"], 1, locks) is None      # both slots are held: no third holder gets one

    # A third job waits while both slots are held ...
    procs.append(_start(tmp_path, "c", env))
    assert _got(tmp_path, "c", timeout=1.5) is None
    # ... and gets the slot of a job killed with SIGKILL (no clean-up ran: the kernel drops the lock).
    victim = procs[0] if got["a"][0] == "3" else procs[1]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    assert _got(tmp_path, "c") == ("3", 0)
    assert "busy" in procs[2].stderr.readline()                 # it said that it waited
    assert gpus.try_acquire(["3", "7"], 1, locks) is None
    (tmp_path / "stop").touch()
    for p in procs:
        p.wait(timeout=10)
    slot = gpus.try_acquire(["3", "7"], 1, locks)                # every job gone: every slot free again
    assert slot is not None and slot.device == "3"
    slot.release()


def test_k_jobs_per_device_spread_over_devices_first(tmp_path, procs):
    locks = tmp_path / "locks"
    env = _env(locks, "0,1", per_gpu=2)
    got = []
    for name in "abcd":  # one after the other, so that the order of slot-taking is known
        procs.append(_start(tmp_path, name, env))
        got.append(_got(tmp_path, name))
    assert got == [("0", 0), ("1", 0), ("0", 1), ("1", 1)]     # slot 0 of each device before slot 1 of any
    assert gpus.try_acquire(["0", "1"], 2, locks) is None       # at most K = 2 jobs per device
    (tmp_path / "stop").touch()


def test_claim_only_for_auto_or_cuda_and_only_with_a_device_list(tmp_path):
    said: list[str] = []
    base = {"AVB_GPU_LOCK_DIR": str(tmp_path)}
    assert gpus.claim("auto", dict(base), say=said.append) is None                 # no AVB_GPUS: nothing done
    env = {**base, "AVB_GPUS": "5"}
    assert gpus.claim("cpu", env, say=said.append) is None
    assert gpus.claim("cuda:1", env, say=said.append) is None                      # an explicit device is kept
    assert gpus.claim("auto", {**env, "SLURM_JOB_ID": "12"}, say=said.append) is None   # SLURM assigns its GPUs
    assert "CUDA_VISIBLE_DEVICES" not in env
    slot = gpus.claim("cuda", env, say=said.append)
    try:
        assert slot.device == "5" and env["CUDA_VISIBLE_DEVICES"] == "5"
        assert "device 5" in said[-1]
    finally:
        slot.release()
        gpus._held.remove(slot)


@pytest.mark.parametrize("bad", ["0,,1", "0,0", "a b"])
def test_bad_device_list_is_an_error_naming_the_variable(bad):
    with pytest.raises(ValueError, match="AVB_GPUS"):
        gpus.devices_from_env({"AVB_GPUS": bad})


@pytest.mark.parametrize("bad", ["0", "-1", "two"])
def test_bad_jobs_per_gpu_is_an_error_naming_the_variable(bad):
    with pytest.raises(ValueError, match="AVB_JOBS_PER_GPU"):
        gpus.per_device_from_env({"AVB_JOBS_PER_GPU": bad})


class _Claimed(Exception):
    pass


@pytest.mark.parametrize("command,device", [("train", "cuda"), ("evaluate", "auto"), ("toy_train", "auto"),
                                            ("schools_fit", "cuda")])
def test_cli_takes_the_slot_of_the_jobs_device_before_running(command, device, tmp_path, monkeypatch, capsys):
    seen = []

    def fake_claim(dev, *args, **kwargs):
        seen.append(dev)
        raise _Claimed("slot taken; stop here")

    monkeypatch.setattr(gpus, "claim", fake_claim)
    settings = tmp_path / "settings.json"
    if command in ("train", "toy_train"):
        settings.write_text(json.dumps({"train": {"device": device}}))
        argv = ["train", str(settings), "--out", str(tmp_path)] if command == "train" else \
            ["toy", "train", str(settings), "--out", str(tmp_path)]
    elif command == "evaluate":
        settings.write_text(json.dumps({"device": device}))
        argv = ["evaluate", str(tmp_path / "model.pt"), "--config", str(settings), "--out-csv", "x.csv",
                "--out-json", "x.json"]
    else:
        settings.write_text(json.dumps({"device": device}))
        argv = ["schools", "fit", "--config", str(settings), "--method", "avb", "--out", str(tmp_path)]
    assert cli.main(argv) == 1
    assert seen == [device]
    assert "slot taken" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- resources
def test_gpu_resources_of_a_job():
    assert [jobs.gpu_request(1, d) for d in ("auto", "cuda", "cuda:2", "cpu")] == [1, 1, 1, 0]
    assert jobs.gpu_request(2, "auto", grouped=True) == "2" and jobs.gpu_request(2, "cpu", grouped=True) == 0
    assert [jobs.gpu_slots(n, d) for n, d in ((1, "auto"), (2, "cuda"), (0, "auto"), (1, "cpu"))] == [1, 1, 0, 0]


class _Job:
    """What Snakemake's group arithmetic and the SLURM plugin read of a job."""

    def __init__(self, resources: dict):
        self.resources = _Res(resources)
        self.pipe_group = None


class _Res(dict):
    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


@pytest.mark.parametrize("k", [2, 4])
def test_a_group_of_k_gpu_jobs_asks_slurm_for_one_jobs_gpus(k):
    """K jobs of one rule in a group (side by side: one toposort level): the group asks for one GPU with the
    values the rules give grouped jobs, where plain integers would have asked for K."""
    from snakemake.resources import GroupResources, Resources
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    def group(grouped: bool):
        members = [_Job({"gpu": jobs.gpu_request(1, "auto", grouped), "gpu_slots": jobs.gpu_slots(1, "auto"),
                         "mem_mb": 1000, "runtime": 30}) for _ in range(k)]
        res = GroupResources.basic_layered([members], Resources(), run_local=False, additive_resources=["runtime"],
                                           sortby=["runtime"])
        return res, set_gres_string(_Job(res))

    res, flag = group(grouped=True)
    assert flag.strip() == "--gpus=1"
    assert res["gpu_slots"] == k and res["mem_mb"] == k * 1000 and res["runtime"] == 30   # side by side
    _, flag = group(grouped=False)
    assert flag.strip() == f"--gpus={k}"   # why the rules give grouped jobs a string


def _dry_jobs(text: str) -> dict[str, dict[str, str]]:
    out = {}
    for block in text.split("rule ")[1:]:
        name = block.split(":", 1)[0]
        for line in block.splitlines():
            if line.strip().startswith("resources:"):
                out[name] = dict(kv.split("=", 1) for kv in line.split(":", 1)[1].strip().split(", ") if "=" in kv)
    return out


TINY = {
    "preset": "slots", "methods": ["vae"], "z_dims": [2], "seeds": [0],
    "model": {"hidden": 32}, "train": {"steps": 20, "batch_size": 32, "device": "auto"},
    "eval": {"n_test": 8, "batch_size": 8, "ais_steps": 3, "ais_chains": 2, "elbo_samples": 1, "device": "cpu"},
    "resources": {"train": {"gpu": 1}, "evaluate": {"gpu": 1}},
    "toy": {"enabled": False}, "schools": {"enabled": False}, "convergence": {"enabled": False},
}


def test_gpu_jobs_hold_one_gpu_slot_and_the_default_profile_caps_them(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    r = snakemake(tmp_path, "-n", "--cores", "2", "--configfile", str(cfg))
    assert r.returncode == 0, r.stderr[-3000:]
    res = _dry_jobs(r.stdout + r.stderr)
    assert res["train"]["gpu_slots"] == "1" and res["train"]["gpu"] == "1"        # device auto: may be a GPU
    assert res["evaluate"]["gpu_slots"] == "0" and res["evaluate"]["gpu"] == "0"  # device cpu: holds none
    profile = yaml.safe_load((ROOT / "profiles/default/config.yaml").read_text())
    assert profile["resources"] == {"gpu_slots": 1}   # one GPU job at a time unless --resources gpu_slots=N


@pytest.mark.slow
def test_a_pipeline_job_takes_its_device_slot_from_the_environment(tmp_path, monkeypatch):
    """AVB_GPUS reaches the jobs through Snakemake's environment: the training job takes a slot and starts with
    CUDA_VISIBLE_DEVICES set to its device. On this CPU machine the id is fake, so no CUDA device exists: the job,
    whose resources asked for a GPU (AVB_REQUIRE_GPU=1, issue 15 item 1), then fails saying so instead of training
    on the CPU, and its slot is released."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    monkeypatch.setenv("AVB_GPUS", "fake7")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("AVB_GPU_LOCK_DIR", str(tmp_path / "locks"))
    target = "results/slots/runs/mnist/vae/z2/seed0/model.pt"
    r = snakemake(tmp_path, target, "--cores", "1", "--configfile", str(cfg))
    log = (tmp_path / "results/slots/runs/mnist/vae/z2/seed0/logs/train.log").read_text()
    assert "GPU slot 1 of 1 on device fake7" in log and "CUDA_VISIBLE_DEVICES=fake7" in log, log[-2000:]
    if not torch.cuda.is_available():
        assert r.returncode != 0 and "AVB_REQUIRE_GPU=1" in log and "NoCudaDevice" in log, log[-2000:]
        assert not (tmp_path / target).exists()
    assert gpus.try_acquire(["fake7"], 1, tmp_path / "locks") is not None   # released when the job ended
