"""AVB + AC's moments of q(z|x): the official in-batch estimate in training, a fixed number of noise draws at
evaluation, so that r(z|x) (the AIS start, the IWAE proposal) does not depend on how many images are passed."""
import math

import pytest
import torch

from avb import evaluate as ev
from avb import experiments as ex
from avb import io
from avb import objectives as ob
from avb.nets import X_DIM

Z, K, R = 3, 128, 200   # z_dim, moment draws (the training batch size), replicates for the estimator's spread
SMALL = dict(arch="mlp", hidden=16, eps_dim=4, eps_nbasis=5, adv_hidden=8, adv_embed=8, adv_layers=1)
FLOOR_STD = math.sqrt(ob.AC_VAR_FLOOR)  # 0.01: sigma of a zero variance estimate


def ac_model() -> ob.Method:
    """A small AVB + AC model whose a_i(x) are shifted up, so Var[z|x] lies well above the 1e-4 floor (sigma ~ 0.1-0.2,
    trained full-size models: 0.04-0.07); at initialisation a_i ~ exp(-5) and sigma would be ~ 0.01 anyway."""
    torch.manual_seed(0)
    model = ex.build({"method": "avb_ac", "z_dim": Z, "model": SMALL}).eval()
    with torch.no_grad():
        model.encoder.a.bias.add_(3.0)
    return model


def images(n: int, seed: int = 0) -> torch.Tensor:
    return (torch.rand(n, X_DIM, generator=torch.Generator().manual_seed(seed)) < 0.3).float()


@torch.no_grad()
def spread(model: ob.Method, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard deviations of the (mu, sigma) estimates of one image over R independent sets of K draws."""
    reps = [model.proposal(x1, ob.MomentDraws(K, torch.Generator().manual_seed(1000 + r))) for r in range(R)]
    return torch.stack([m for m, _ in reps]).std(0), torch.stack([s for _, s in reps]).std(0)


@torch.no_grad()
def test_proposal_of_one_image_agrees_with_it_inside_a_batch():
    """The same image alone and among 128 others gets the same r(z|x) up to Monte-Carlo error: the two estimates are
    independent, so their difference has sd sqrt(2) x the estimator's; 4 of those is the tolerance."""
    model, x = ac_model(), images(128)
    mu1, s1 = model.proposal(x[:1], ob.MomentDraws(K, torch.Generator().manual_seed(1)))
    mu_b, s_b = model.proposal(x, ob.MomentDraws(K, torch.Generator().manual_seed(2)))
    sd_mu, sd_s = spread(model, x[:1])
    tol_mu, tol_s = 4 * math.sqrt(2) * sd_mu[0], 4 * math.sqrt(2) * sd_s[0]
    assert (tol_s < 0.5 * s_b[0]).all()                       # the tolerance is not vacuous ...
    assert (s_b[0] > 5 * FLOOR_STD).all()                     # ... and sigma is not the floor
    assert ((mu1[0] - mu_b[0]).abs() <= tol_mu).all()
    assert ((s1[0] - s_b[0]).abs() <= tol_s).all()
    # The official in-batch estimate (training) differs by far more: one image gives Var = 0, sigma = 0.01.
    _, s_official = model.proposal(x[:1])
    assert torch.allclose(s_official, torch.full_like(s_official, FLOOR_STD))
    assert ((s_official[0] - s_b[0]).abs() > 2 * tol_s).all()


@torch.no_grad()
def test_moment_draws_are_reproducible_and_the_official_estimator():
    model, x = ac_model(), images(16)
    a = model.proposal(x, ob.MomentDraws(K, torch.Generator().manual_seed(7)))
    b = model.proposal(x, ob.MomentDraws(K, torch.Generator().manual_seed(7)))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # Given the batch's own noise as the moment draws, the estimate is exactly the in-batch one (training's).
    enc, eps = model.encoder, torch.randn(5, 16, SMALL["eps_dim"])
    for own, separate in zip(enc(x, eps), enc(x, eps, moment_eps=eps)):
        assert torch.allclose(own, separate, atol=1e-6)
    with pytest.raises(ValueError, match="2 noise draws"):
        model.proposal(x, ob.MomentDraws(1))


@pytest.mark.parametrize("arch", ["conv0", "conv1"])
@torch.no_grad()
def test_conv_ac_encoders_take_separate_moment_draws(arch):
    """The official conv0_ac / conv1_ac encoders share the noise-basis head: the batch's own noise given as moment
    draws reproduces the in-batch moments, and K draws give one image a non-degenerate sigma."""
    model = ex.build({"method": "avb_ac", "z_dim": Z, "model": {**SMALL, "arch": arch}}).eval()
    x, eps = images(4), torch.randn(5, 4, SMALL["eps_dim"])
    for own, separate in zip(model.encoder(x, eps), model.encoder(x, eps, moment_eps=eps)):
        assert torch.allclose(own, separate, atol=1e-6)
    _, var = model.encoder(x[:1], moment_eps=model.encoder.moment_noise(K, torch.Generator().manual_seed(0)))[1:]
    assert (var > 0).all() and model.encoder(x[:1])[2].eq(0).all()


def test_training_keeps_the_in_batch_moments():
    """forward() without MomentDraws (the training loop's call) uses the batch's own noise, as coded."""
    model, x = ac_model(), images(32)
    torch.manual_seed(3)
    z, mu, sigma = model.encode(x)
    torch.manual_seed(3)
    eps = torch.randn(5, 32, SMALL["eps_dim"])
    z_ref, mean_ref, var_ref = model.encoder(x, eps)
    assert torch.allclose(z, z_ref) and torch.allclose(mu, mean_ref)
    assert torch.allclose(sigma, torch.sqrt(var_ref + ob.AC_VAR_FLOOR))


@pytest.fixture(scope="module")
def ac_model_file(tmp_path_factory):
    run = {"method": "avb_ac", "dataset": "mnist", "z_dim": Z, "seed": 0, "data_dir": None, "model": SMALL,
           "train": {"steps": 0, "batch_size": K}}
    path = tmp_path_factory.mktemp("ac") / "model.pt"
    io.save_torch({"run": run, "step": 0, "model": ac_model().state_dict()}, path)
    return path


def test_evaluation_gives_a_lone_image_the_moments_of_a_full_batch(ac_model_file, tmp_path, monkeypatch):
    """n_test = 9 in batches of 8 leaves one image alone in the last batch, and BDMC runs on one image: their AIS
    starts must not collapse to sigma = 0.01 (as the in-batch estimate does), but match K-draw estimates."""
    from avb import config as avb_config
    inits = []
    real_ais, real_bdmc = ev.estimate_log_likelihood, ev.bdmc

    def ais(*args, init=None, **kw):
        inits.append(("test", init))
        return real_ais(*args, init=init, **kw)

    def bdmc(*args, init=None, **kw):
        inits.append(("bdmc", init))
        return real_bdmc(*args, init=init, **kw)

    monkeypatch.setattr(ev, "estimate_log_likelihood", ais)
    monkeypatch.setattr(ev, "bdmc", bdmc)
    settings = avb_config.validate({"preset": "t", "eval": {
        "n_test": 9, "batch_size": 8, "ais_steps": 2, "ais_chains": 2, "elbo_samples": 1, "iwae_samples": 4,
        "bdmc_images": 1, "device": "cpu"}})["eval"]
    s = ev.evaluate(ac_model_file, settings, tmp_path / "e.csv", tmp_path / "e.json", progress=False)
    assert s["ac_moment_draws"] == K
    assert [kind for kind, _ in inits] == ["test", "test", "bdmc"] and inits[1][1][1].shape == (1, Z)
    model, x = ac_model(), ev.test_images({"dataset": "mnist"}, 9, settings["seed"])
    sd_s = spread(model, x[8:9])[1][0]
    with torch.no_grad():
        _, s_ref = model.proposal(x, ob.MomentDraws(K, torch.Generator().manual_seed(99)))
    lone = inits[1][1][1][0]
    assert (lone > 5 * FLOOR_STD).all()
    assert ((lone - s_ref[8]).abs() <= 4 * math.sqrt(2) * sd_s).all()
    assert (inits[2][1][1] > 5 * FLOOR_STD).all()
