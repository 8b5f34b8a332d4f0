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
