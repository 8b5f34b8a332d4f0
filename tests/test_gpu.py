"""Training on CUDA (issue 15 item 8, training half; marked gpu, skipped without a CUDA device): the conv nets end
to end on a tiny config, each train.precision, the compiled step, the fused / foreach Adam, channels-last with
cudnn.benchmark, and the device-side binarisation against the CPU's statistics. Evaluation on CUDA:
tests/test_gpu_eval.py. No GPU has run these yet where they were written: they are the checks a lent GPU runs."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from avb import data, speed, train as tr
from test_data import binarised_rate_bounds
from test_train import run_config, weights

pytestmark = pytest.mark.gpu

CONV = {"vae": "conv1", "avb": "conv0", "avb_ac": "conv0"}  # the paper preset's nets per method


def conv_run(method: str, steps: int = 20, **train) -> dict:
    run = run_config(method, steps=steps, **{"device": "cuda", "log_every": 5, "checkpoint_every": 10, **train})
    run["model"].update(arch=CONV[method], adv_hidden=64, adv_embed=64)
    run["z_dim"] = 8
    return run


def metrics(path) -> pd.DataFrame:
    return pd.read_csv(path / "train_metrics.csv")


@pytest.mark.parametrize("method", ["vae", "avb", "avb_ac"])
def test_conv_nets_train_end_to_end_on_cuda_and_resume(tmp_path, method):
    """20 steps of the method's conv nets on CUDA: four rows of finite losses; a run stopped at 10 and continued
    to 20 gives the same weights as 20 in one go (same device, same kernels)."""
    tr.train(conv_run(method), tmp_path / "full", progress=False)
    m = metrics(tmp_path / "full")
    assert list(m.step) == [5, 10, 15, 20] and np.isfinite(m.loss_primal).all() and np.isfinite(m.elbo).all()
    tr.train(conv_run(method, steps=10), tmp_path / "split", progress=False)
    (tmp_path / "split" / "model.pt").unlink()
    tr.train(conv_run(method), tmp_path / "split", progress=False)
    a, b = weights(tmp_path / "full" / "model.pt"), weights(tmp_path / "split" / "model.pt")
    assert all(torch.allclose(a[k].float(), b[k].float(), rtol=1e-4, atol=1e-6) for k in a)


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
@pytest.mark.parametrize("method", ["vae", "avb"])
def test_each_precision_trains_close_to_fp32(tmp_path, method, precision):
    tr.train(conv_run(method, steps=10), tmp_path / "ref", progress=False)
    tr.train(conv_run(method, steps=10, precision=precision), tmp_path / "p", progress=False)
    ref, got = metrics(tmp_path / "ref"), metrics(tmp_path / "p")
    assert np.isfinite(got.loss_primal).all()
    assert abs(got.recon.iloc[0] - ref.recon.iloc[0]) < 0.05 * abs(ref.recon.iloc[0])
    assert not torch.backends.cudnn.benchmark  # the job's flags are put back


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
@pytest.mark.parametrize("method", ["vae", "avb_ac"])
def test_compiled_step_on_cuda(tmp_path, method, mode, monkeypatch):
    """The compiled loop trains with finite losses; with eager's random numbers (fallback_random) its first row
    matches the eager run's within float tolerance."""
    import torch._inductor.config as inductor_config
    monkeypatch.setattr(inductor_config, "fallback_random", True)
    torch._dynamo.reset()
    tr.train(conv_run(method, steps=10), tmp_path / "eager", progress=False)
    tr.train(conv_run(method, steps=10, compile=mode), tmp_path / "compiled", progress=False)
    e, c = metrics(tmp_path / "eager"), metrics(tmp_path / "compiled")
    assert np.isfinite(c.loss_primal).all()
    assert abs(c.loss_primal.iloc[0] - e.loss_primal.iloc[0]) < 1e-3 * abs(e.loss_primal.iloc[0])


@pytest.mark.parametrize("adam", ["auto", "for", "foreach", "fused"])
def test_adam_kernels_and_conv_layout_options(tmp_path, adam):
    run = conv_run("avb", steps=10, adam=adam, channels_last=True, cudnn_benchmark=True)
    tr.train(run, tmp_path, progress=False)
    assert np.isfinite(metrics(tmp_path).loss_primal).all()
    assert not torch.backends.cudnn.benchmark


def test_divergence_on_cuda_names_the_first_step(tmp_path, monkeypatch):
    """The device-side check: a NaN from step 7 on is named at the next read (step 10) as step 7."""
    orig = tr.build

    def poisoned(r):
        model = orig(r)
        calls, fwd = {"n": 0}, model.decoder.forward

        def forward(z, *a):
            calls["n"] += 1
            out = fwd(z, *a)
            return out * float("nan") if calls["n"] >= 7 else out
        model.decoder.forward = forward
        return model
    monkeypatch.setattr(tr, "build", poisoned)
    with pytest.raises(tr.TrainingDiverged, match=r"step 7: loss_primal = nan"):
        tr.train(conv_run("vae", steps=20, log_every=10, checkpoint_every=5), tmp_path, progress=False)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 5


def test_device_binarisation_matches_the_cpu_statistics():
    """Batches on CUDA (images on the device, its own generator): the mean pixel rate of the binarised batches is
    the images' mean intensity within 5 binomial standard deviations, as the CPU binarisation's is; its state
    restores the stream."""
    s = data.load("mnist")
    n, reads = 5000, 4
    sub = data.Splits(train=s.test[:n], val=s.val, test=s.test, static=False, source=s.source)
    cuda = data.Batches(sub, "train", n, torch.Generator().manual_seed(0), device="cuda")
    assert cuda.on_device and cuda.images.is_cuda and cuda.images.dtype == torch.uint8
    target, tol = binarised_rate_bounds(sub.train, reads)
    rates = [next(cuda).mean().item() for _ in range(reads)]
    cpu = data.Batches(sub, "train", n, torch.Generator().manual_seed(0))
    cpu_rates = [next(cpu).mean().item() for _ in range(reads)]
    assert abs(np.mean(rates) - target) < tol and abs(np.mean(cpu_rates) - target) < tol
    state = cuda.state_dict()
    want = next(cuda)
    again = data.Batches(sub, "train", n, torch.Generator().manual_seed(5), device="cuda")
    again.load_state_dict(state)
    assert torch.equal(next(again), want)
    assert set(torch.unique(want).tolist()) == {0.0, 1.0} and not math.isnan(want.mean().item())


def test_speed_options_reach_the_job():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3)).cuda()
    opts = speed.options({"precision": "tf32", "cudnn_benchmark": True, "channels_last": True})
    with speed.job_flags(opts, torch.device("cuda"), model):
        assert torch.backends.cudnn.benchmark
    speed.prepare(model, opts, torch.device("cuda"))
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
