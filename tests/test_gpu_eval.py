"""Evaluation on CUDA (issue 15 item 8, evaluation half; marked gpu: skipped without a CUDA device).

* conv0 (AVB) and conv1 (VAE) models trained a few hundred steps on the GPU, evaluated end to end there (AIS, ELBO,
  IWAE, BDMC), with the device recorded in eval.json and the AIS call size changing no number;
* AIS's random numbers drawn on the device (a CUDA generator; the CPU stream untouched), and two runs with the same
  seed identical;
* eval.precision bf16 within 0.1 nat of fp32 in mean AIS log p(x) on both trained models.
"""
import json
import math

import pandas as pd
import pytest
import torch

from avb import config as avb_config
from avb import jobs
from avb import train as tr
from avb.evaluate import evaluate

pytestmark = pytest.mark.gpu
ROWS = {"conv0": "avb", "conv1": "vae"}  # the paper preset's architectures for AVB and the VAE


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_runs")
    paths = {}
    for arch, method in ROWS.items():
        cfg = avb_config.validate({"preset": "gpu-eval", "model": {"arch": arch},
                                   "train": {"steps": 300, "batch_size": 64, "checkpoint_every": 300,
                                             "log_every": 100, "device": "cuda"}})
        paths[arch] = tr.train(jobs.train_config(cfg, "mnist", method, 8, 0), out / arch, progress=False)
    return paths


def settings(**kw):
    base = {"n_test": 32, "batch_size": 16, "ais_steps": 50, "ais_chains": 4, "elbo_samples": 2, "iwae_samples": 20,
            "bdmc_images": 16, "device": "cuda", **kw}
    return avb_config.validate({"preset": "t", "eval": base})["eval"]


@pytest.fixture
def deterministic_cudnn(monkeypatch):
    """cuDNN's deterministic algorithms (reproducibility is about our random numbers, not cuDNN's atomics)."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)


@pytest.mark.parametrize("arch", list(ROWS))
def test_evaluation_end_to_end_on_cuda(trained, tmp_path, arch, deterministic_cudnn):
    s = evaluate(trained[arch], settings(), tmp_path / "e.csv", tmp_path / "e.json", progress=False)
    per = pd.read_csv(tmp_path / "e.csv")
    assert len(per) == 32 and per.log_px_ais.notna().all() and per.elbo.notna().all()
    assert math.isfinite(s["log_px_ais"]) and math.isfinite(s["bdmc_lower"]) and math.isfinite(s["bdmc_upper"])
    assert s["log_px_ais"] < 0 and s["arch"] == arch
    saved = json.loads((tmp_path / "e.json").read_text())
    assert saved["device_type"] == "cuda" and saved["device_name"] == torch.cuda.get_device_name(0)
    assert saved["device_capability"] and saved["device_torch_cuda"] == torch.version.cuda
    if ROWS[arch] == "vae":
        assert s["elbo"] <= s["iwae"] + 1.0 and math.isfinite(s["iwae"])
    # the same seed on the same device: identical numbers; all images in one AIS call: the same up to rounding
    evaluate(trained[arch], settings(), tmp_path / "f.csv", tmp_path / "f.json", progress=False)
    again = pd.read_csv(tmp_path / "f.csv")
    assert again.log_px_ais.tolist() == per.log_px_ais.tolist() and again.elbo.tolist() == per.elbo.tolist()
    evaluate(trained[arch], settings(ais_call_images=32), tmp_path / "g.csv", tmp_path / "g.json", progress=False)
    grouped = pd.read_csv(tmp_path / "g.csv")
    assert grouped.log_px_ais.tolist() == pytest.approx(per.log_px_ais.tolist(), abs=1e-3)


def test_ais_draws_on_the_device_and_repeats_with_the_seed(trained, deterministic_cudnn):
    """A CUDA generator: AIS draws there (the generator advances, the CPU stream is untouched), and the same seed
    gives the same log weights, bit for bit."""
    from avb.ais import estimate_log_likelihood
    from avb.evaluate import test_images
    from avb.experiments import load_model

    model, run = load_model(trained["conv1"], "cuda")
    x = test_images(run, 16, 1234).cuda()
    with torch.no_grad():
        init = model.proposal(x, None)
    cpu_state = torch.random.get_rng_state()
    out = []
    for _ in range(2):
        gen = torch.Generator(device="cuda").manual_seed(11)
        start = gen.get_state()
        out.append(estimate_log_likelihood(model.decoder.log_likelihood, x, model.z_dim, n_steps=30, n_chains=3,
                                           init=init, generator=gen))
        assert not torch.equal(gen.get_state(), start)
    assert torch.equal(torch.random.get_rng_state(), cpu_state)
    assert out[0].log_weights.is_cuda and torch.equal(out[0].log_weights, out[1].log_weights)


@pytest.mark.parametrize("arch", list(ROWS))
def test_bf16_ais_is_within_0_1_nat_of_fp32_on_cuda(trained, arch):
    from avb.ais import estimate_log_likelihood
    from avb.evaluate import log_likelihood, test_images
    from avb.experiments import load_model

    model, run = load_model(trained[arch], "cuda")
    x = test_images(run, 128, 1234).cuda()
    with torch.no_grad():
        init = model.proposal(x, None)
    dev = torch.device("cuda")
    est = {}
    for precision in ("fp32", "bf16"):
        f = log_likelihood(model, dev, precision)
        res = estimate_log_likelihood(f, x, model.z_dim, n_steps=200, n_chains=4, init=init,
                                      generator=torch.Generator(device="cuda").manual_seed(3))
        est[precision] = res.log_px.mean().item()
    print(f"{arch}: AIS mean log p(x) fp32 {est['fp32']:.4f}, bf16 {est['bf16']:.4f}")
    assert abs(est["bf16"] - est["fp32"]) < 0.1
