"""Evaluation of a trained model: AIS, ELBO, IWAE and the BDMC sandwich land in the per-image CSV and summary."""
import json
import math

import pandas as pd
import pytest

from avb import config as avb_config
from avb import train as tr
from avb.evaluate import evaluate


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    paths = {}
    for method in ("vae", "avb"):
        run = {"method": method, "dataset": "mnist", "z_dim": 2, "seed": 3, "data_dir": None,
               "model": {"arch": "mlp", "hidden": 32, "eps_dim": 4, "eps_nbasis": 2, "adv_hidden": 16,
                         "adv_embed": 16, "adv_layers": 1},
               "train": {"steps": 60, "batch_size": 32, "lr": 1e-3, "lr_adversary": 1e-3, "adam_beta1": 0.5,
                         "adversary_steps": 1, "checkpoint_every": 60, "log_every": 20, "device": "cpu"}}
        paths[method] = tr.train(run, out / method, progress=False)
    return paths


def settings(**kw):
    base = {"n_test": 16, "batch_size": 8, "ais_steps": 100, "ais_chains": 4, "elbo_samples": 2, "iwae_samples": 50,
            "bdmc_images": 24, "device": "cpu", **kw}
    return avb_config.validate({"preset": "t", "eval": base})["eval"]


def test_vae_bounds_are_ordered_and_bdmc_sandwich_is_tight(trained, tmp_path):
    s = evaluate(trained["vae"], settings(), tmp_path / "e.csv", tmp_path / "e.json", progress=False)
    per = pd.read_csv(tmp_path / "e.csv")
    assert len(per) == 16 and json.loads((tmp_path / "e.json").read_text()) == pytest.approx(s, nan_ok=True)
    # ELBO <= IWAE_50 <= AIS (up to noise), per the estimators' nesting, on average over the images.
    se = per.log_px_ais.std() / math.sqrt(16)
    assert s["elbo"] <= s["iwae"] + 3 * se and s["iwae"] <= s["log_px_ais"] + 3 * se
    # On data simulated from a 2-d model, 100 AIS steps x 4 chains make the sandwich narrow.
    assert s["bdmc_lower"] <= s["bdmc_upper"] + 3 * s["bdmc_width_se"]
    assert abs(s["bdmc_width"]) < 1.0
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_avb_has_no_iwae_and_says_why(trained, tmp_path):
    s = evaluate(trained["avb"], settings(bdmc_images=0), tmp_path / "e.csv", tmp_path / "e.json", progress=False)
    assert math.isnan(s["iwae"]) and s["iwae_note"] == "implicit encoder has no density"
    assert s["ais_init"] == "prior" and not s["elbo_is_bound"] and math.isnan(s["bdmc_width"])
    assert math.isfinite(s["log_px_ais"])


def test_ais_call_size_changes_no_number(trained, tmp_path):
    """eval.ais_call_images puts several batches in one AIS call, each batch as by its own call (avb.ais, 'Groups'):
    the per-image numbers are those of one call per batch (AIS up to the float rounding of other decoder chunks;
    the ELBO and IWAE streams untouched). eval.json says which call size and device ran."""
    small = dict(ais_steps=20, ais_chains=2, elbo_samples=1, iwae_samples=5, bdmc_images=0)
    s1 = evaluate(trained["vae"], settings(**small), tmp_path / "a.csv", tmp_path / "a.json", progress=False)
    s2 = evaluate(trained["vae"], settings(**small, ais_call_images=13), tmp_path / "b.csv", tmp_path / "b.json",
                  progress=False)
    a, b = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    assert (s1["ais_call_images"], s2["ais_call_images"]) == (8, 16)  # rounded up to whole batches of 8
    assert s1["device_type"] == "cpu" and s1["precision"] == "fp32" and s1["device_torch"]
    assert a.elbo.tolist() == b.elbo.tolist() and a.iwae.tolist() == b.iwae.tolist()
    assert a.log_px_ais.tolist() == pytest.approx(b.log_px_ais.tolist(), abs=1e-4)
    assert a.final_accept_rate.tolist() == pytest.approx(b.final_accept_rate.tolist())
    assert (b.groupby(b.image // 8).final_accept_rate.nunique() == 1).all()  # one rate per batch, not per call


def test_bf16_ais_is_within_0_1_nat_of_fp32(trained):
    """eval.precision bf16 (the decoder under bfloat16 autocast, its output layer and the sum in fp32) on a trained
    model: log p(x|z) per row and the mean AIS log p(x) stay within 0.1 nat of fp32 (CPU autocast; the GPU check is
    tests/test_gpu_eval.py)."""
    import torch

    from avb.ais import estimate_log_likelihood
    from avb.evaluate import log_likelihood, test_images
    from avb.experiments import load_model

    model, run = load_model(trained["vae"], "cpu")
    x = test_images(run, 32, 1234)
    cpu = torch.device("cpu")
    f32, f16 = log_likelihood(model, cpu, "fp32"), log_likelihood(model, cpu, "bf16")
    z = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        rows = (f16(x.repeat(8, 1), z) - f32(x.repeat(8, 1), z)).abs()
    assert 0 < rows.mean() < 0.1  # bf16 did run (not fp32), and close; a bf16 sum over 784 pixels is ~0.25 off
    with torch.no_grad():
        init = model.proposal(x, None)
    est = {p: estimate_log_likelihood(f, x, 2, n_steps=100, n_chains=4, init=init,
                                      generator=torch.Generator().manual_seed(7)).log_px.mean().item()
           for p, f in (("fp32", f32), ("bf16", f16))}
    print(f"AIS mean log p(x): fp32 {est['fp32']:.4f}, bf16 {est['bf16']:.4f}")
    assert abs(est["bf16"] - est["fp32"]) < 0.1


def test_atomic_writes_honour_the_umask(tmp_path):
    import os
    import stat

    from avb import io
    old = os.umask(0o022)
    try:
        io.write_text("x", tmp_path / "a.txt")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
