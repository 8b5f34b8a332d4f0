"""The training loop: determinism, bit-identical resume after SIGKILL, the NaN guard, one loop for all methods."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from avb import train as tr

BIN = Path(sys.executable).parent


def run_config(method="avb_ac", steps=40, **train):
    return {
        "method": method, "dataset": "mnist", "z_dim": 3, "seed": 7, "data_dir": None,
        "model": {"arch": "mlp", "hidden": 32, "eps_dim": 4, "eps_nbasis": 2, "adv_hidden": 16, "adv_embed": 16,
                  "adv_layers": 1},
        "train": {"steps": steps, "batch_size": 16, "lr": 1e-3, "lr_adversary": 1e-3, "adam_beta1": 0.5,
                  "adversary_steps": 1, "checkpoint_every": 5, "log_every": 5, "device": "cpu", **train},
    }


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", ["vae", "avb", "avb_ac"])
def test_runs_are_deterministic_and_learn(tmp_path, method):
    run = run_config(method, steps=30)
    a, b = tr.train(run, tmp_path / "a", progress=False), tr.train(run, tmp_path / "b", progress=False)
    assert same(weights(a), weights(b))
    import pandas as pd
    m = pd.read_csv(tmp_path / "a" / "train_metrics.csv")
    assert list(m.step) == [5, 10, 15, 20, 25, 30]
    assert m.elbo.iloc[-1] > m.elbo.iloc[0] + 50  # from ~-543 (random decoder) upwards


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(tmp_path):
    run = run_config("avb_ac", steps=300, checkpoint_every=20)
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps(run))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}

    def cmd(out):  # both runs in the same kind of process: one thread, so float reductions agree
        return [str(BIN / "avb"), "train", str(cfg), "--out", str(out), "--threads", "1"]

    subprocess.run(cmd(tmp_path / "ref"), env=env, check=True, capture_output=True)
    out = tmp_path / "killed"
    proc = subprocess.Popen(cmd(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model.pt").exists(), "the run finished before it was killed; make it longer"
    step = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    assert 0 < step < 300
    subprocess.run(cmd(out), env=env, check=True, capture_output=True)
    assert same(weights(out / "model.pt"), weights(tmp_path / "ref" / "model.pt"))


def test_nan_guard_names_step_and_loss_and_keeps_checkpoint(tmp_path, monkeypatch):
    run = run_config("vae", steps=30)
    orig = tr.build

    def poisoned(r):
        model = orig(r)
        calls = {"n": 0}
        fwd = model.decoder.forward

        def forward(z):
            calls["n"] += 1
            out = fwd(z)
            return out * float("nan") if calls["n"] == 13 else out
        model.decoder.forward = forward
        return model

    monkeypatch.setattr(tr, "build", poisoned)
    with pytest.raises(tr.TrainingDiverged, match=r"step 13: loss_primal = nan"):
        tr.train(run, tmp_path, progress=False)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 10
    assert not (tmp_path / "model.pt").exists()


def test_checkpoint_of_another_config_is_not_resumed(tmp_path):
    tr.train(run_config("vae", steps=5), tmp_path / "x", progress=False)
    (tmp_path / "x" / "model.pt").unlink()
    changed = run_config("vae", steps=10, lr=5e-4)
    a = tr.train(changed, tmp_path / "x", progress=False)
    b = tr.train(changed, tmp_path / "fresh", progress=False)
    assert same(weights(a), weights(b))


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["vae", "avb", "avb_ac"])
def test_cuda_training_matches_cpu_start(tmp_path, method):
    """device: cuda trains, and its first logged losses agree with the CPU run's up to float noise."""
    import pandas as pd
    tr.train(run_config(method, steps=5, device="cpu"), tmp_path / "cpu", progress=False)
    tr.train(run_config(method, steps=5, device="cuda"), tmp_path / "cuda", progress=False)
    a, b = (pd.read_csv(tmp_path / d / "train_metrics.csv") for d in ("cpu", "cuda"))
    assert abs(a.recon.iloc[0] - b.recon.iloc[0]) < 0.05 * abs(a.recon.iloc[0])


# ------------------------------------------------------------------------------------ host reads (issue 15 item 2)
AVB_DIR = str(Path(tr.__file__).resolve().parent)
READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


def count_host_reads(monkeypatch) -> dict[str, int]:
    """Patch the Tensor methods that read a value back to the host; count the calls made from the project's code
    (the caller's file in avb/: torch's own internals, e.g. Adam's CPU step counters, are no device read)."""
    counts = {name: 0 for name in READS}
    for name in READS:
        orig = getattr(torch.Tensor, name)

        def wrapper(self, *a, _orig=orig, _name=name, **k):
            if sys._getframe(1).f_code.co_filename.startswith(AVB_DIR):
                counts[_name] += 1
            return _orig(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, wrapper)
    return counts


@pytest.mark.parametrize("method, data_path", [("vae", "host"), ("avb_ac", "device")])
def test_loop_reads_the_device_once_per_log_every(tmp_path, monkeypatch, method, data_path):
    """300 steps, a row every 50: the loop reads metrics and the divergence check back once per row (plus a
    constant: the end), not once or twice per step. ``device``: the batches drawn and binarised as on CUDA
    (``avb.data.Batches(on_device=True)``), on the CPU."""
    if data_path == "device":
        from avb import data
        orig = data.Batches

        def on_device(*a, **k):
            return orig(*a, **{**k, "on_device": True})
        monkeypatch.setattr(data, "Batches", on_device)
    run = run_config(method, steps=300, log_every=50, checkpoint_every=10 ** 6)
    counts = count_host_reads(monkeypatch)
    tr.train(run, tmp_path, progress=False)
    monkeypatch.undo()
    total = sum(counts.values())
    assert total <= 300 // 50 + 3, counts
    assert counts["tolist"] >= 300 // 50, counts  # the rows were read (the count is not blind)
    import pandas as pd
    assert list(pd.read_csv(tmp_path / "train_metrics.csv").step) == [50, 100, 150, 200, 250, 300]
