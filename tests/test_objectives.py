"""Objectives: analytic KL vs Monte Carlo, AC's r and KL decomposition, loss scaling as coded, and the traits every
method states instead of being recognised by its name."""
import math

import pytest
import torch

from avb import experiments as ex
from avb import objectives as ob
from avb.nets import X_DIM


def image_model(method, z_dim, **model):
    return ex.build({"method": method, "z_dim": z_dim, "model": model})


def test_vae_analytic_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mean, log_std = torch.randn(4, 8, generator=g), 0.5 * torch.randn(4, 8, generator=g)
    n = 200_000
    z = mean + torch.exp(log_std) * torch.randn(n, 4, 8, generator=g)
    log_ratio = ob.log_normal(z, mean, torch.exp(log_std)) - ob.log_normal(z)
    mc, se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(n)
    assert torch.all((ob.gaussian_kl(mean, log_std) - mc).abs() < 5 * se)


def test_log_normal_matches_torch_distributions():
    mean, std, z = torch.randn(3, 5), torch.rand(3, 5) + 0.1, torch.randn(3, 5)
    ref = torch.distributions.Normal(mean, std).log_prob(z).sum(-1)
    assert torch.allclose(ob.log_normal(z, mean, std), ref, atol=1e-5)


def test_ac_kl_with_optimal_adversary_equals_true_log_ratio():
    """With T = T* = log q(z_bar) - log N(z_bar; 0, I), the coded estimate T + log r - log p is log q(z) - log p(z)."""
    g = torch.Generator().manual_seed(1)
    mu, sigma = torch.randn(6, 4, generator=g), torch.rand(6, 4, generator=g) + 0.2
    q_mean, q_std = mu + 0.3, sigma * 1.5  # q differs from r
    z = q_mean + q_std * torch.randn(6, 4, generator=g)
    z_bar = (z - mu) / sigma
    t_star = ob.log_normal(z_bar, (q_mean - mu) / sigma, q_std / sigma) - ob.log_normal(z_bar)
    kl_est = t_star + ob.log_normal(z, mu, sigma) - ob.log_normal(z)
    assert torch.allclose(kl_est, ob.log_normal(z, q_mean, q_std) - ob.log_normal(z), atol=1e-4)


@pytest.mark.parametrize("method", ex.METHODS)
def test_primal_loss_is_per_pixel_scaled_recon_plus_kl(method):
    model = image_model(method, 4, hidden=16, eps_dim=3, eps_nbasis=2, adv_hidden=8, adv_embed=8, adv_layers=1)
    x = (torch.rand(32, X_DIM) < 0.3).float()
    torch.manual_seed(0)
    s = model(x)
    assert torch.allclose(s.primal, (s.recon + s.kl).mean() / X_DIM)
    assert (s.adversary is None) == (not model.adversary_parameters()) == (method in ("vae", "iaf", "auxvae"))
    assert torch.allclose(s.elbo, -s.recon - s.kl)


def test_ac_moments_are_stop_gradient_and_match_batch_moments():
    model = image_model("avb_ac", 3, hidden=16, eps_dim=4, eps_nbasis=5, adv_hidden=8, adv_embed=8, adv_layers=1)
    x = (torch.rand(1, X_DIM) < 0.3).float().expand(4000, X_DIM)  # one image, many noise draws
    z, mu, sigma = model.encode(x)
    assert not mu.requires_grad and not sigma.requires_grad and z.requires_grad
    # The Monte-Carlo moments describe q(z|x): for a single repeated image they match the sample moments of z.
    assert torch.allclose(mu[0], z.mean(0), atol=0.05 * sigma[0].max().item())
    assert torch.allclose(sigma[0] ** 2, z.var(0) + ob.AC_VAR_FLOOR, rtol=0.1)


def test_adversary_adds_half_squared_norm_of_z():
    model = image_model("avb", 3, hidden=16, eps_dim=4, adv_hidden=8, adv_embed=8, adv_layers=1)
    adv = model.adversary
    x = torch.rand(5, X_DIM)
    z = torch.randn(5, 3)
    t_with = adv(x, z)
    body = (adv.theta(x) * adv.s(z)).sum(-1) + adv.t_x(x).squeeze(-1) + adv.t_z(z).squeeze(-1)
    assert torch.allclose(t_with - body, 0.5 * (z * z).sum(-1), atol=1e-5)


def _schools_run(method):
    from avb import schools
    sec = {"steps": 1, "batch_size": 8, "lr": 1e-3, "adam_beta1": 0.5, "checkpoint_every": 1, "log_every": 1}
    return schools.run_config({"seed": 0, "device": "cpu", "n_samples": 100, "advi": {**sec, "init_range": 2.0},
                               "avb": {**sec, "hidden": 8, "noise_dim": 4, "adv_hidden": 8, "adv_blocks": 1,
                                       "ac_floor": 1e-6, "ac_floor_mode": "std"}}, method)


def every_model():
    """(experiment, model, x) for every method of every experiment, small."""
    from avb import schools, toy
    small = dict(hidden=16, eps_dim=3, eps_nbasis=2, adv_hidden=8, adv_embed=8, adv_layers=1)
    for m in ex.METHODS:
        yield "images", image_model(m, 4, **small), (torch.rand(6, X_DIM) < 0.3).float()
    for m in toy.METHODS:
        yield "toy", ex.build({"experiment": "toy", "method": m, "model": {"adv_hidden": 8, "adv_blocks": 1}}), \
            toy.images()
    for m in schools.METHODS:
        yield "schools", ex.build(_schools_run(m)), torch.empty(6, 0)


# What every caller may rely on, per method: (elbo_is_bound, has_proposal, proposal_is_q, ac, label).
TRAITS = {"vae": (True, True, True, False, "VAE"), "avb": (False, False, False, False, "AVB"),
          "avb_ac": (False, True, False, True, "AVB + AC"),
          "iaf": (True, False, False, False, "VAE + IAF"), "auxvae": (True, True, False, False, "Auxiliary VAE"),
          "advi_meanfield": (True, False, False, False, "ADVI mean-field"),
          "advi_fullrank": (True, False, False, False, "ADVI full-rank")}


@torch.no_grad()
def test_every_method_states_its_traits():
    """The traits evaluation, figures and reports read (never the method's name): a bound or an estimate, the
    proposal (returned exactly when ``has_proposal``; q itself only for the VAE), AC, the label; ``sample`` gives one
    z per row of x, and the loss scale is given at construction (1/784 for images, 1 for the toy and schools)."""
    seen = set()
    for kind, model, x in every_model():
        seen.add(model.name)
        assert (model.elbo_is_bound, model.has_proposal, model.proposal_is_q, model.ac, model.label) \
            == TRAITS[model.name], (kind, model.name)
        assert model.loss_scale == (1.0 / X_DIM if kind == "images" else 1.0)
        assert model.sample(x).shape == (len(x), model.z_dim)
        if kind == "schools":
            continue  # a fixed target: no proposal for AIS
        proposal = model.proposal(x)
        assert (proposal is not None) == model.has_proposal
        if proposal is not None:
            assert proposal[0].shape == proposal[1].shape == (len(x), model.z_dim) and (proposal[1] > 0).all()
        assert ("proposal:" in model.proposal_note) == model.has_proposal
    assert seen == set(TRAITS)
    assert image_model("avb", 4, hidden=8, eps_dim=2, adv_hidden=8, adv_embed=8, adv_layers=1).proposal_note \
        == ob.IMPLICIT_NOTE


def test_labels_are_one_table():
    """Every experiment's methods (and the schools gold standard) are labelled by ``avb.methods.LABELS`` alone."""
    from avb import schools, toy
    from avb.methods import LABELS
    from avb.report import claims, figures, tables
    assert set(ex.METHODS) | set(toy.METHODS) | set(schools.METHODS) | {"hmc"} == set(LABELS)
    assert toy.LABELS is schools.LABELS is tables.LABELS is claims.LABELS is figures.LABELS is LABELS


def test_ac_sigma_rules():
    """AVB + AC's sigma: sqrt(var + floor) (MNIST code) or std + floor (the eight-schools notebook); the moments of a
    fixed target are the batch's, and cannot come from separate draws."""
    var = torch.tensor([0.0, 0.25, 4.0])
    m = image_model("avb_ac", 3, hidden=8, eps_dim=2, eps_nbasis=2, adv_hidden=8, adv_embed=8, adv_layers=1)
    assert torch.equal(m.ac_sigma(var), torch.sqrt(var + ob.AC_VAR_FLOOR))
    s = ex.build(_schools_run("avb_ac"))
    assert (s.ac_moments, s.ac_floor_mode) == ("batch", "std") and torch.equal(s.ac_sigma(var), var.sqrt() + 1e-6)
    with pytest.raises(ValueError, match="MomentDraws"):
        s.encode(torch.empty(4, 0), ob.MomentDraws(8))
    with pytest.raises(ValueError, match="ac_floor_mode"):
        ob.AVB(3, m.decoder, m.encoder, m.adversary, True, ac_floor_mode="log")
