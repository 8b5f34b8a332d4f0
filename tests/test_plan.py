"""`avb plan` (issue 15 item 7): expected GPU-hours per job and in total, from a throughput file or given rates,
checked against numbers worked out by hand from the formula (avb/plan.py), on a preset with per-row overrides."""
from __future__ import annotations

import json
import re

import pytest
import yaml

from avb import cli, plan
from avb.config import ConfigError, load

# Two methods, two seeds; the VAE row overrides its batch, AIS chains / steps and leapfrog.
PRESET = {
    "preset": "plantest", "methods": ["vae", "avb"], "z_dims": [8], "seeds": [0, 1],
    "model": {"arch": "conv0"},
    "train": {"steps": 1000000, "batch_size": 128},
    "eval": {"n_test": 1000, "ais_steps": 1000, "ais_chains": 5, "leapfrog_steps": 10, "ais_leapfrog": "official",
             "bdmc_images": 10},
    "overrides": [{"match": {"method": "vae"}, "model": {"arch": "conv1"}, "train": {"batch_size": 64},
                   "eval": {"ais_chains": 8, "ais_steps": 2001, "leapfrog_steps": 4, "ais_leapfrog": "standard",
                            "bdmc_images": 0}}],
    "convergence": {"enabled": True, "steps": [11, 101], "n_images": 20},
    "toy": {"enabled": False}, "schools": {"enabled": False},
}
THROUGHPUT = {
    "schema": "avb-gpu-throughput/1", "device": {"name": "Test GPU", "torch": "x"}, "measured": "then",
    "train_images_per_s": {"vae": 16000.0, "avb": 8000.0, "avb_ac": 1.0},
    "ais_latent_grad_evals_per_s": {"vae": 100000.0, "avb": 50000.0},
    "train": {"vae": {"arch": "conv1"}, "avb": {"arch": "conv0"}},
}

# By hand. Training: steps x batch / img/s.
VAE_TRAIN_H = 1_000_000 * 64 / 16000 / 3600            # 1.1111 h
AVB_TRAIN_H = 1_000_000 * 128 / 8000 / 3600            # 4.4444 h
# AIS: images x chains x (1 + (steps - 1) x positions per leapfrog trajectory); official: L + 1, standard: L.
VAE_AIS = 1000 * 8 * (1 + 2000 * 4)                    # no BDMC
AVB_AIS = 1000 * 5 * (1 + 999 * 11) + 2 * 10 * 5 * (1 + 999 * 11)   # + BDMC forward and reverse on 10 images
VAE_EVAL_H, AVB_EVAL_H = VAE_AIS / 100000 / 3600, AVB_AIS / 50000 / 3600
# Convergence study: per budget S, forward on 20 test images + BDMC pair on 20 simulated images, at S steps.
VAE_CONV_H = sum(3 * 20 * 8 * (1 + (s - 1) * 4) for s in (11, 101)) / 100000 / 3600
AVB_CONV_H = sum(3 * 20 * 5 * (1 + (s - 1) * 11) for s in (11, 101)) / 50000 / 3600


@pytest.fixture
def files(tmp_path):
    cfg = tmp_path / "plantest.yaml"
    cfg.write_text(yaml.safe_dump(PRESET))
    tp = tmp_path / "throughput.json"
    tp.write_text(json.dumps(THROUGHPUT))
    return cfg, tp


def test_plan_hours_per_job_from_a_throughput_file(files):
    cfg, tp = files
    jobs = plan.plan(load(cfg), plan.read_rates(tp))
    hours = {(j.job, j.run): j.hours for j in jobs}
    assert len(jobs) == 2 * 2 * 3
    for seed in (0, 1):
        assert hours[("train", f"mnist/vae/z8/seed{seed}")] == pytest.approx(VAE_TRAIN_H, rel=1e-12)
        assert hours[("train", f"mnist/avb/z8/seed{seed}")] == pytest.approx(AVB_TRAIN_H, rel=1e-12)
        assert hours[("evaluate", f"mnist/vae/z8/seed{seed}")] == pytest.approx(VAE_EVAL_H, rel=1e-12)
        assert hours[("evaluate", f"mnist/avb/z8/seed{seed}")] == pytest.approx(AVB_EVAL_H, rel=1e-12)
        assert hours[("ais_convergence", f"mnist/vae/z8/seed{seed}")] == pytest.approx(VAE_CONV_H, rel=1e-12)
        assert hours[("ais_convergence", f"mnist/avb/z8/seed{seed}")] == pytest.approx(AVB_CONV_H, rel=1e-12)
    assert all(not j.note for j in jobs)   # each method's rate was measured on the networks its rows use


def test_cli_prints_each_job_and_the_total(files, capsys):
    cfg, tp = files
    assert cli.main(["plan", "--configfile", str(cfg), "--throughput", str(tp)]) == 0
    out = capsys.readouterr().out
    assert "Test GPU" in out
    assert len([line for line in out.splitlines() if re.match(r"(train|evaluate|ais_convergence) +mnist/", line)]) == 12
    total = float(re.search(r"^total: ([\d.]+) GPU-hours", out, re.M).group(1))
    want = 2 * (VAE_TRAIN_H + AVB_TRAIN_H + VAE_EVAL_H + AVB_EVAL_H + VAE_CONV_H + AVB_CONV_H)
    assert total == pytest.approx(want, abs=0.05)
    assert f"train {2 * (VAE_TRAIN_H + AVB_TRAIN_H):.1f} GPU-h (4 jobs)" in out


def test_given_img_per_s_replaces_the_training_rate(files, capsys):
    cfg, tp = files
    assert cli.main(["plan", "--configfile", str(cfg), "--throughput", str(tp), "--img-per-s", "3200"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("train") and "mnist/avb/z8/seed0" in x)
    assert float(line.split()[-1]) == pytest.approx(1_000_000 * 128 / 3200 / 3600, abs=5e-4)
    # without a file: training hours only, AIS jobs are listed without a rate and left out of the total
    assert cli.main(["plan", "--configfile", str(cfg), "--img-per-s", "3200"]) == 0
    out = capsys.readouterr().out
    assert "8 jobs without a rate are not counted" in out
    assert float(re.search(r"^total: ([\d.]+)", out, re.M).group(1)) == pytest.approx(
        2 * (1_000_000 * 64 + 1_000_000 * 128) / 3200 / 3600, abs=0.05)


def test_a_rate_measured_on_other_networks_is_flagged(files):
    cfg, tp = files
    other = {**THROUGHPUT, "train": {"vae": {"arch": "mlp"}, "avb": {"arch": "conv0"}}}
    tp.write_text(json.dumps(other))
    jobs = plan.plan(load(cfg), plan.read_rates(tp))
    assert all(("measured on mlp" in j.note) == ("vae" in j.run) for j in jobs)


def test_a_file_not_from_the_benchmark_is_an_error_naming_it(tmp_path, files):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": 3}))
    with pytest.raises(ConfigError, match="bad.json.*gpu_throughput"):
        plan.read_rates(bad)
    cfg, _ = files
    assert cli.main(["plan", "--configfile", str(cfg), "--throughput", str(bad)]) == 1
    with pytest.raises(SystemExit):
        cli.main(["plan", "--configfile", str(cfg)])   # no rate at all
