"""Eight schools: model density, exact reference, gold-standard HMC, diagnostics, ADVI, AVB models, pipeline CLI."""
import json
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

from avb import diagnostics, hmc
from avb import schools as S
from avb.hmc import log_density_and_grad
from avb.report import schools as schools_report
from avb.experiments import build
from avb.objectives import GaussianVI, log_normal


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # the CI machine is shared; these tests are latency-bound anyway
    yield


def linear_gaussian(seed=0, d=3, n_obs=4, noise=0.7):
    """y = A z + N(0, noise^2 I), z ~ N(0, I): the exact posterior N(m, S) and log p(y|z)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n_obs, d, generator=g, dtype=torch.float64)
    y = torch.randn(n_obs, generator=g, dtype=torch.float64) * 2
    prec = torch.eye(d, dtype=torch.float64) + a.T @ a / noise ** 2
    cov = torch.linalg.inv(prec)
    mean = cov @ a.T @ y / noise ** 2

    def loglik(z):
        r = (y - z @ a.T) / noise
        return (-0.5 * r * r - math.log(noise) - 0.5 * math.log(2 * math.pi)).sum(-1)

    return loglik, mean.numpy(), cov.numpy()


# ------------------------------------------------------------------------------------------------ model and exact
def test_data_are_the_notebooks():
    assert S.Y == (2.8, 0.8, -0.3, 0.7, -0.1, 0.1, 1.8, 1.2)
    assert S.SIGMA == (0.8, 0.5, 0.8, 0.6, 0.5, 0.6, 0.5, 0.4)
    assert S.DIM == 10 and S.PARAM_NAMES[:3] == ["mu", "tau", "eta_1"]


def test_log_density_matches_scipy_and_its_gradient_matches_autograd():
    z = torch.randn(7, 10, dtype=torch.float64) * 1.5
    zn = z.numpy()
    theta = zn[:, :1] + zn[:, 1:2] * zn[:, 2:]
    want = stats.norm.logpdf(np.asarray(S.Y), theta, np.asarray(S.SIGMA)).sum(1) + stats.norm.logpdf(zn).sum(1)
    lp, grad = S.log_joint_and_grad(z)
    np.testing.assert_allclose(S.log_joint(z).numpy(), want, rtol=0, atol=1e-10)
    np.testing.assert_allclose(lp.numpy(), want, rtol=0, atol=1e-10)
    _, g_auto = log_density_and_grad(S.log_joint)(z)
    np.testing.assert_allclose(grad.numpy(), g_auto.numpy(), rtol=1e-10, atol=1e-10)
    like = S.SchoolsLikelihood().double()
    np.testing.assert_allclose((like.log_likelihood(torch.empty(7, 0), z) + log_normal(z)).numpy(), want, atol=1e-10)


def test_exact_posterior_is_converged_symmetric_and_its_marginal_likelihood_is_right():
    r, fine = S.exact_posterior(301), S.exact_posterior(801, 10.0)
    np.testing.assert_allclose(r["mean"], fine["mean"], atol=1e-8)
    np.testing.assert_allclose(r["sd"], fine["sd"], atol=1e-8)
    assert abs(r["log_evidence"] - fine["log_evidence"]) < 1e-8
    np.testing.assert_allclose(r["mean"][1:], 0.0, atol=1e-10)  # (tau, eta) -> (-tau, -eta) symmetry
    assert 0.5 < r["mean"][0] < 1.0 and (r["sd"] > 0.2).all()
    # the closed forms behind the quadrature, checked by Monte Carlo over eta at one (mu, tau)
    g = torch.Generator().manual_seed(1)
    mu, tau = 0.6, -0.9
    eta = torch.randn(400_000, 8, generator=g, dtype=torch.float64)
    z = torch.cat([torch.full((len(eta), 1), mu, dtype=torch.float64),
                   torch.full((len(eta), 1), tau, dtype=torch.float64), eta], 1)
    ll = S.log_likelihood(z)
    mc = torch.logsumexp(ll, 0).item() - math.log(len(eta))
    exact = stats.norm.logpdf(np.asarray(S.Y), mu, np.sqrt(tau ** 2 + np.asarray(S.SIGMA) ** 2)).sum()
    assert abs(mc - exact) < 0.02
    w = torch.softmax(ll, 0)
    s2 = np.asarray(S.SIGMA) ** 2
    m = tau * (np.asarray(S.Y) - mu) / s2 / (1 + tau ** 2 / s2)
    np.testing.assert_allclose((w[:, None] * eta).sum(0).numpy(), m, atol=0.02)


# --------------------------------------------------------------------------------------------------- diagnostics
def test_split_rhat_and_ess_on_iid_shifted_and_autocorrelated_chains():
    rng = np.random.default_rng(0)
    iid = rng.standard_normal((4, 2000, 3))
    assert np.abs(diagnostics.split_rhat(iid) - 1).max() < 0.01
    assert np.abs(diagnostics.rank_split_rhat(iid) - 1).max() < 0.01
    shifted = iid + np.arange(4)[:, None, None] * 0.5
    assert (diagnostics.split_rhat(shifted) > 1.1).all() and (diagnostics.rank_split_rhat(shifted) > 1.1).all()
    trend = iid + np.linspace(0, 2, 2000)[None, :, None]  # non-stationary within chains: caught by the split
    assert (diagnostics.split_rhat(trend) > 1.1).all()
    ess = diagnostics.ess(iid)
    assert ((ess > 0.85 * 8000) & (ess < 1.15 * 8000)).all()
    rho, ar = 0.8, np.empty((4, 4000))
    ar[:, 0] = rng.standard_normal(4) / math.sqrt(1 - rho ** 2)
    for t in range(1, 4000):
        ar[:, t] = rho * ar[:, t - 1] + rng.standard_normal(4)
    want = 16000 * (1 - rho) / (1 + rho)
    assert 0.75 * want < diagnostics.ess(ar) < 1.25 * want


def test_energy_distance_is_zero_for_equal_sets_and_detects_a_shift():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((500, 4)), rng.standard_normal((500, 4))
    assert diagnostics.energy_distance(a, a) == pytest.approx(0.0, abs=1e-12)
    same = diagnostics.energy_distance(a, b)
    shifted = diagnostics.energy_distance(a, b + np.array([0.5, 0, 0, 0]))
    assert 0 < same < 0.03 < shifted
    assert diagnostics.energy_distance(b, a) == pytest.approx(same, rel=1e-9)


# ------------------------------------------------------------------------------------------------- gold standard
@pytest.mark.slow
def test_hmc_recovers_a_conjugate_gaussian_posterior_within_its_reported_mc_error():
    loglik, mean, cov = linear_gaussian()
    target = log_density_and_grad(lambda z: loglik(z) + log_normal(z))
    res = hmc.sample_hmc(target, 3, chains=8, warmup=200, draws=1000, leapfrog_steps=8, seed=0)
    d = res.draws
    assert diagnostics.split_rhat(d).max() < 1.01
    ess = diagnostics.ess(d)
    flat = d.reshape(-1, 3)
    sd = np.sqrt(np.diag(cov))
    z_mean = (flat.mean(0) - mean) / (sd / np.sqrt(ess))          # in units of the reported MC standard error
    assert np.abs(z_mean).max() < 4, z_mean
    # covariance: each element is the mean of the draws' products (z_i - m_i)(z_j - m_j); its MC error uses the
    # ESS of those products (HMC mixes second moments more slowly than means)
    prod = (d - mean)[..., :, None] * (d - mean)[..., None, :]               # [chains, draws, 3, 3]
    se_cov = prod.reshape(-1, 3, 3).std(0) / np.sqrt(diagnostics.ess(prod.reshape(*d.shape[:2], 9)).reshape(3, 3))
    c = prod.reshape(-1, 3, 3).mean(0)
    assert np.abs((c - cov) / se_cov).max() < 4, (c, cov)
    assert ((res.accept_prob > 0.6) & (res.accept_prob < 0.99)).all()


@pytest.mark.slow
def test_eight_schools_hmc_matches_the_exact_quadrature_moments():
    ref = S.exact_posterior(401)
    res = hmc.sample_hmc(S.log_joint_and_grad, 10, chains=8, warmup=200, draws=1500, seed=1)
    d = res.draws
    flat = d.reshape(-1, 10)
    mcse = flat.std(0) / np.sqrt(diagnostics.ess(d))
    assert np.abs((flat.mean(0) - ref["mean"]) / mcse).max() < 4.5
    assert np.abs(flat.std(0) / ref["sd"] - 1).max() < 0.1
    assert diagnostics.split_rhat(d).max() < 1.05


# ---------------------------------------------------------------------------------------------------- ADVI and AVB
class _Lik(torch.nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f = f

    def log_likelihood(self, x, z):
        return self.f(z.double()).to(z.dtype)


def _advi_run(method, steps, lr, batch):
    return {"method": method, "seed": 0, "z_dim": 3, "model": {"init_range": 2.0}, "n_samples": 100,
            "train": {"steps": steps, "batch_size": batch, "lr": lr, "lr_adversary": lr, "adam_beta1": 0.9,
                      "adversary_steps": 1, "checkpoint_every": 10 ** 6, "log_every": 100, "device": "cpu"}}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["advi_fullrank", "advi_meanfield"])
def test_advi_through_fit_recovers_the_exact_gaussian_optimum(method, tmp_path):
    """Full-rank: q = the exact posterior N(m, S). Mean-field: mean m and variances 1 / diag(S^-1) (the optimum of
    KL(q || p) over factorised Gaussians)."""
    from avb.train import fit

    loglik, mean, cov = linear_gaussian()
    run = _advi_run(method, steps=800, lr=0.05, batch=256)
    torch.manual_seed(0)
    model = GaussianVI(run["z_dim"], _Lik(loglik), method == "advi_fullrank", run["model"]["init_range"])
    fit(model, S.DummyBatches(256, torch.device("cpu")), torch.Generator().manual_seed(1), run, tmp_path,
        progress=False)
    with torch.no_grad():
        loc = model.loc.double().numpy()
        lt = model.scale_tril().double()
        q_cov = (lt @ lt.T).numpy()
    want = cov if method == "advi_fullrank" else np.diag(1.0 / np.diag(np.linalg.inv(cov)))
    np.testing.assert_allclose(loc, mean, atol=0.03)
    np.testing.assert_allclose(q_cov, want, atol=0.03)
    metrics = (tmp_path / "train_metrics.csv").read_text().splitlines()
    assert metrics[0].startswith("step,") and len(metrics) == 1 + 800 // 100


def test_avb_networks_and_adaptive_contrast_moments():
    run = S.run_config({"seed": 0, "device": "cpu", "n_samples": 10,
                        "avb": {"steps": 1, "batch_size": 8, "lr": 1e-4, "lr_adversary": 2e-4, "adam_beta1": 0.5,
                                "adversary_steps": 2, "hidden": 128, "noise_dim": 10, "adv_hidden": 256,
                                "adv_blocks": 5, "ac_floor": 1e-6, "ac_floor_mode": "std", "checkpoint_every": 1,
                                "log_every": 1}}, "avb_ac")
    model = build(run)
    assert model.loss_scale == 1.0 and model.ac and model.name == "avb_ac"
    sizes = [tuple(m.weight.shape) for m in model.encoder.net if isinstance(m, torch.nn.Linear)]
    assert sizes == [(128, 10), (128, 128), (10, 128)]
    adv = model.adversary
    assert len(adv.res0) == 5 and all((r.weight == 0).all() for r in adv.res1) and (adv.out.weight == 0).all()
    z = torch.randn(6, 10)
    # at initialisation A = 0, so the logit is T = A - log N(z; 0, I) = -log N(z; 0, I)
    np.testing.assert_allclose(adv(None, z).detach().numpy(), (-log_normal(z)).numpy(), rtol=1e-6)
    x = torch.empty(512, 0)
    torch.manual_seed(3)
    zs, mu, sigma = model.encode(x)
    assert zs.shape == (512, 10) and not mu.requires_grad and not sigma.requires_grad
    torch.testing.assert_close(sigma, zs.detach().std(0, unbiased=False, keepdim=True) + 1e-6)
    model.ac_floor, model.ac_floor_mode = 1e-4, "var"
    torch.manual_seed(3)
    zs, _, sigma = model.encode(x)
    torch.testing.assert_close(sigma, torch.sqrt(zs.detach().var(0, unbiased=False, keepdim=True) + 1e-4))
    step = model(x)
    assert step.adversary is not None and torch.isfinite(step.primal) and step.kl.shape == (512,)


# ------------------------------------------------------------------------------------------------------ pipeline
@pytest.mark.slow
def test_cli_gold_fit_kl_report_end_to_end(tmp_path):
    from avb.cli import main
    from avb.schools_kl import CURVE_COLUMNS

    settings = {"seed": 0, "n_samples": 400, "kl_every": 20, "kl_samples": 300,
                "gold": {"chains": 4, "warmup": 50, "draws": 300},
                "advi": {"steps": 40, "batch_size": 16, "log_every": 10},
                "avb": {"steps": 6, "batch_size": 32, "adv_hidden": 16, "adv_blocks": 1, "hidden": 16,
                        "checkpoint_every": 3, "log_every": 2},
                "metrics": {"divergence_samples": 100, "divergence_repeats": 2, "quad_grid": 201, "kl_repeats": 3}}
    js = tmp_path / "settings.json"
    js.write_text(json.dumps(settings))
    cfg = ["--config", str(js)]
    gold = tmp_path / "gold"
    assert main(["schools", "gold", *cfg, "--out-npz", str(gold / "draws.npz"),
                 "--out-json", str(gold / "diag.json")]) == 0
    fits = []
    for method in ("advi_meanfield", "avb_ac"):
        fits.append(str(tmp_path / method))
        assert main(["schools", "fit", "--method", method, *cfg, "--out", fits[-1]]) == 0
    out = tmp_path / "report"
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        warnings.simplefilter("error", FutureWarning)
        assert main(["schools", "kl", "--gold-npz", str(gold / "draws.npz"), "--snapshots",
                     *[f"{f}/snapshots.npz" for f in fits[::-1]], *cfg, "--out-csv", str(out / "kl_curve.csv"),
                     "--out-png", str(out / "kl_iterations.png"), "--out-pdf", str(out / "kl_iterations.pdf")]) == 0
        assert main(["schools", "report", "--gold-npz", str(gold / "draws.npz"), "--gold-json", str(gold / "diag.json"),
                     "--fits", *fits, *cfg, "--out-csv", str(out / "summary.csv"),
                     "--out-md", str(out / "summary.md"), "--out-params", str(out / "per_parameter.csv"),
                     "--out-fig", str(out / "mu_tau.png"), "--kl-curve", str(out / "kl_curve.csv")]) == 0
    import pandas as pd

    df = pd.read_csv(out / "summary.csv")
    assert list(df.method) == ["hmc", "advi_meanfield", "avb_ac"]
    assert list(df.columns) == schools_report.SUMMARY_COLUMNS
    assert df.divergence_noise_floor.nunique() == 1 and np.isfinite(df.divergence).all()
    assert df.rhat_max.notna().tolist() == [True, False, False]
    assert len(pd.read_csv(out / "per_parameter.csv")) == 3 * 10
    assert (out / "mu_tau.png").stat().st_size > 0 and (out / "mu_tau.pdf").stat().st_size > 0
    assert "HMC (gold)" in (out / "summary.md").read_text()
    assert (tmp_path / "avb_ac" / "checkpoint.pt").exists()
    assert np.load(tmp_path / "avb_ac" / "samples.npz")["samples"].shape == (400, 10)
    # the KL curve: snapshots at 0, every kl_every and the last iteration; n = kl_samples / kl_repeats per estimate
    curve = pd.read_csv(out / "kl_curve.csv")
    assert list(curve.columns) == CURVE_COLUMNS and list(curve.method.unique()) == ["advi_meanfield", "avb_ac"]
    assert curve[curve.method == "advi_meanfield"].iteration.tolist() == [0, 20, 40]
    assert curve[curve.method == "avb_ac"].iteration.tolist() == [0, 6]
    assert (curve.n == 100).all() and (curve.k == 3).all() and np.isfinite(curve.kl).all() and (curve.kl_se > 0).all()
    assert curve[curve.method == "avb_ac"].kl_gaussian.isna().all()
    assert np.isfinite(curve[curve.method == "advi_meanfield"].kl_gaussian).all()
    # the summary's KL columns are the curve's last iteration; the HMC row holds the noise floor
    s = df.set_index("method")
    last = curve[curve.method == "avb_ac"].iloc[-1]
    assert s.loc["avb_ac", "kl_hmc"] == pytest.approx(last.kl)
    assert s.loc["avb_ac", "kl_hmc_se"] == pytest.approx(last.kl_se)
    assert s.loc["hmc", "kl_hmc"] == pytest.approx(last.kl_noise_floor) == s.loc["advi_meanfield", "kl_hmc_noise_floor"]
    assert np.isnan(s.loc["avb_ac", "kl_gaussian"]) and np.isfinite(s.loc["advi_meanfield", "kl_gaussian"])
    # ADVI's exact KL is log p(y) - ELBO (up to Monte-Carlo error and the plug-in bias of a Gaussian fitted to 300
    # draws in 10-D, about d (d + 3) / (4 N) = 0.11)
    r = s.loc["advi_meanfield"]
    assert abs(r.kl_gaussian - (r.log_evidence - r.elbo)) < 4 * math.hypot(r.kl_gaussian_se, r.elbo_se) + 0.11
    assert "KL to HMC" in (out / "summary.md").read_text()
    assert (out / "kl_iterations.png").stat().st_size > 5000 and (out / "kl_iterations.pdf").stat().st_size > 0
