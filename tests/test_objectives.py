"""Objectives: analytic KL vs Monte Carlo, AC's r and KL decomposition, loss scaling as coded."""
import math

import pytest
import torch

from avb import objectives as ob
from avb.nets import X_DIM


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


@pytest.mark.parametrize("method", ob.METHODS)
def test_primal_loss_is_per_pixel_scaled_recon_plus_kl(method):
    model = ob.build(method, 4, hidden=16, eps_dim=3, eps_nbasis=2, adv_hidden=8, adv_embed=8, adv_layers=1)
    x = (torch.rand(32, X_DIM) < 0.3).float()
    torch.manual_seed(0)
    s = model(x)
    assert torch.allclose(s.primal, (s.recon + s.kl).mean() / X_DIM)
    assert (s.adversary is None) == (method == "vae")
    assert torch.allclose(s.elbo, -s.recon - s.kl)


def test_ac_moments_are_stop_gradient_and_match_batch_moments():
    model = ob.build("avb_ac", 3, hidden=16, eps_dim=4, eps_nbasis=5, adv_hidden=8, adv_embed=8, adv_layers=1)
    x = (torch.rand(1, X_DIM) < 0.3).float().expand(4000, X_DIM)  # one image, many noise draws
    z, mu, sigma = model.encode(x)
    assert not mu.requires_grad and not sigma.requires_grad and z.requires_grad
    # The Monte-Carlo moments describe q(z|x): for a single repeated image they match the sample moments of z.
    assert torch.allclose(mu[0], z.mean(0), atol=0.05 * sigma[0].max().item())
    assert torch.allclose(sigma[0] ** 2, z.var(0) + ob.AC_VAR_FLOOR, rtol=0.1)


def test_adversary_adds_half_squared_norm_of_z():
    model = ob.build("avb", 3, hidden=16, eps_dim=4, adv_hidden=8, adv_embed=8, adv_layers=1)
    adv = model.adversary
    x = torch.rand(5, X_DIM)
    z = torch.randn(5, 3)
    t_with = adv(x, z)
    body = (adv.theta(x) * adv.s(z)).sum(-1) + adv.t_x(x).squeeze(-1) + adv.t_z(z).squeeze(-1)
    assert torch.allclose(t_with - body, 0.5 * (z * z).sum(-1), atol=1e-5)
