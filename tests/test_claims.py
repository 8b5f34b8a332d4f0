"""The claims table: verdicts from the sign of a difference and its 95 % interval, paired over test images."""
import math

import numpy as np
import pandas as pd
import pytest

from avb.report import claims, published


def test_verdict_is_inconclusive_when_the_interval_covers_both_answers():
    assert claims.verdict(1.0, 0.5) == "replicated"
    assert claims.verdict(-1.0, 0.5) == "not replicated"
    assert claims.verdict(0.3, 0.5) == "inconclusive" and claims.verdict(-0.3, 0.5) == "inconclusive"
    assert claims.verdict(math.nan, 0.1) == "inconclusive"


def _write_run(root, method, z, seed, log_px, elbo):
    d = root / "mnist" / method / f"z{z}" / f"seed{seed}"
    d.mkdir(parents=True)
    pd.DataFrame({"image": np.arange(len(log_px)), "log_px_ais": log_px, "elbo": elbo}).to_csv(
        d / "eval_per_image.csv", index=False)
    return str(d / "eval_per_image.csv")


def test_mnist_claims_are_paired_over_images(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.normal(-100, 20, size=400)          # image difficulty: huge, shared by both models
    noise = rng.normal(0, 0.5, size=400)
    files = [_write_run(tmp_path, "vae", 8, 0, base, base - 7.0),
             _write_run(tmp_path, "avb_ac", 8, 0, base + 1.0 + noise, base + 1.0 + noise - 3.0),
             _write_run(tmp_path, "avb", 8, 0, base - 2.0, base + 5.0)]
    df = claims.table(files).set_index("claim")
    row = df.loc["AVB + AC above the VAE on AIS log p(x), 8-dim"]
    # paired: the shared image difficulty cancels; the interval is 1.96 x SE of the per-image differences
    assert math.isclose(row.ours_value, 1.0 + noise.mean(), rel_tol=1e-9)
    assert math.isclose(row.ours_ci95, 1.959964 * noise.std(ddof=1) / 20, rel_tol=1e-6)
    assert row.verdict == "replicated"
    assert "−89.6 vs −90.9: +1.3" == row.paper  # from avb.report.published, not typed
    assert df.loc["Plain AVB's adversarial bound above its own AIS estimate, 8-dim"].verdict == "replicated"
    gap = df.loc["ELBO-to-AIS gap of AVB + AC below the VAE's, 8-dim"]
    assert math.isclose(gap.ours_value, 7.0 - 3.0) and gap.verdict == "replicated"
    assert df.loc["AVB + AC above the VAE on AIS log p(x), 32-dim"].verdict == "not run"


def test_mnist_claims_refuse_runs_on_different_images(tmp_path):
    files = [_write_run(tmp_path, "vae", 8, 0, np.zeros(5), np.zeros(5)),
             _write_run(tmp_path, "avb_ac", 8, 0, np.zeros(4), np.zeros(4))]
    with pytest.raises(ValueError, match="different test images"):
        claims.table(files)


def test_several_seeds_use_the_student_t_interval_over_seeds(tmp_path):
    from scipy import stats
    files = []
    for seed, shift in enumerate((0.5, 1.5, 1.0)):
        x = np.linspace(-120, -80, 50)
        files += [_write_run(tmp_path, "vae", 32, seed, x, x - 5), _write_run(tmp_path, "avb_ac", 32, seed, x + shift,
                                                                               x + shift - 1)]
    row = claims.table(files).set_index("claim").loc["AVB + AC above the VAE on AIS log p(x), 32-dim"]
    assert math.isclose(row.ours_value, 1.0)
    assert math.isclose(row.ours_ci95, stats.t.ppf(0.975, 2) * 0.5 / math.sqrt(3), rel_tol=1e-9)


def test_toy_and_schools_claims():
    toy = pd.DataFrame({"method": ["vae", "avb"], "log_px_exact": [-1.6, -1.39], "optimum": [-math.log(4)] * 2,
                        "recon_error": [0.4, 0.05], "quad_error_est": [1e-7, 1e-7], "n_samples": [100, 100]})
    schools = pd.DataFrame({"method": ["advi_meanfield", "advi_fullrank", "avb", "avb_ac"],
                            "kl_hmc": [1.1, 0.3, 0.5, 0.1], "kl_hmc_se": [0.01, 0.01, 0.01, 0.01]})
    df = claims.table([], toy, schools).set_index("claim")
    assert df.loc["AVB closer to the optimum −log 4 than the VAE (exact log-likelihood)"].verdict == "replicated"
    assert df.loc["AVB's reconstruction error below the VAE's"].verdict == "replicated"
    lowest = df.loc["AVB + AC has the lowest KL to the HMC posterior"]
    assert math.isclose(lowest.ours_value, 0.2) and lowest.verdict == "replicated"  # margin over full rank
    assert df.loc["AVB below full-rank VB in KL to the HMC posterior"].verdict == "not replicated"
    assert published.SOURCE in claims.markdown(df.reset_index())


def test_bdmc_caveat_names_unconverged_ais(tmp_path):
    files = [_write_run(tmp_path, "avb", 8, 0, np.zeros(10) - 100, np.zeros(10) - 95)]
    summary = pd.DataFrame({"method": ["avb"], "z_dim": [8], "bdmc_width": [4.1]})
    row = claims.table(files, summary=summary).set_index("claim").loc[
        "Plain AVB's adversarial bound above its own AIS estimate, 8-dim"]
    assert "not converged" in row.caveat and "4.1" in row.caveat
