"""The auxiliary VAE (Maaløe et al. 2016), the official repository's second baseline (``avb/auxvae``,
``run_auxvae.py``): its conditional Gaussian networks and the method. Built by ``avb.experiments``.
"""
from __future__ import annotations

import torch
from torch import nn

from .nets import X_DIM, centre, linear
from .objectives import Method, MomentDraws, Step, chunked_iwae, log_normal


class ConditionalGaussian(nn.Module):
    """The auxiliary VAE's Gaussian networks (official ``avb/auxvae/models``): (mean, log std) of a Gaussian over
    ``out_dim`` from the centred image and an optional conditioning vector c.

    h = post(concat(features(2x - 1), c)), then two linear heads scaled by ``head_scale`` (the conv1 auxiliary
    networks multiply theirs by 0.1). full0: features = identity, post = 2 x FC300 softplus; conv0: features = the
    conv stack, post = identity; conv1: features = the conv stack, post = FC800 softplus.
    """

    def __init__(self, features: nn.Module, post: nn.Module, width: int, out_dim: int, head_scale: float = 1.0):
        super().__init__()
        self.features, self.post, self.head_scale = features, post, head_scale
        self.mean = linear(width, out_dim)
        self.log_std = linear(width, out_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(centre(x))
        h = self.post(h if c is None else torch.cat([h, c], -1))
        if self.head_scale == 1.0:
            return self.mean(h), self.log_std(h)
        return self.head_scale * self.mean(h), self.head_scale * self.log_std(h)


class AuxVAE(Method):
    """The auxiliary VAE (Maaløe et al. 2016) as the official ``avb/auxvae``: a ~ q(a|x) (``encoder_aux``), z ~
    q(z|x, a) (``encoder``), both Gaussian; the generative model is the VAE's p(z) p(x|z), extended by r(a|x~, z)
    (``decoder_aux``), x~ ~ p(x|z) one draw of the decoder (``log_likelihood_and_draw``; as coded: r sees a sample
    of the decoder, not the data x, and the draw carries no gradient). KL = [log q(z|x,a) - log p(z)] + [log q(a|x)
    - log r(a|x~, z)] at the sample; ELBO = -recon - KL is a lower bound on log p(x) (the model p(z) p(x|z) p(x~|z) r(a|x~, z) has marginal
    p(x); x~'s density cancels).

    AIS starts as the official test does: from N(z; mu(x, a), sigma(x, a)^2) at one draw a ~ q(a|x) per image (per
    call of ``proposal``, shared by all chains). The IWAE bound uses the joint q(a, z|x) and r (``iwae``). All four
    networks are trained (the official train op's scopes ``encoder`` and ``decoder`` match ``encoder_aux`` and
    ``decoder_aux`` too).

    Departures from the official code (``avb/auxvae``, ``run_auxvae.py``):

    * ``model.aux_head_scale`` (an option; default as coded: 0.1 on the conv1 heads of q(a|x) and r, 1 elsewhere)
      sets that factor on every arch. As coded, the full0 networks start with so wide an a and z that r's log-std
      overflows (non-finite losses at the first step); the presets that use ``mlp`` set 0.1;
    * the IWAE bound in the extended space (a, z, x~) and the ELBO over several draws at evaluation are extras;
    * the KL annealing of ``--is-anneal`` (off by default there) is not ported.
    """

    name = "auxvae"
    elbo_is_bound = True
    has_proposal = True
    proposal_note = ("proposal: the Gaussian q(z|x, a) at one draw a ~ q(a|x) (AIS start, as the official test); "
                     "IWAE: the joint q(a, z|x) with r(a|x~, z)")

    def __init__(self, z_dim: int, a_dim: int, decoder: nn.Module, encoder: nn.Module, encoder_aux: nn.Module,
                 decoder_aux: nn.Module, loss_scale: float = 1.0 / X_DIM):
        super().__init__(z_dim, decoder, loss_scale)
        self.a_dim = a_dim
        self.encoder, self.encoder_aux, self.decoder_aux = encoder, encoder_aux, decoder_aux

    def terms(self, x: torch.Tensor, eps_a: torch.Tensor, eps_z: torch.Tensor, u: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(recon, KL, z) for the noise of a (``eps_a``), z (``eps_z``) and the decoder draw x~ (uniforms ``u``)."""
        a_mean, a_log_std = self.encoder_aux(x)
        a = a_mean + eps_a * torch.exp(a_log_std)
        z_mean, z_log_std = self.encoder(x, a)
        z = z_mean + eps_z * torch.exp(z_log_std)
        log_lik, x_tilde = self.decoder.log_likelihood_and_draw(x, z, u)   # x~ ~ p(x|z): no gradient, as coded
        r_mean, r_log_std = self.decoder_aux(x_tilde, z)
        recon = -log_lik
        kl_z = log_normal(z, z_mean, torch.exp(z_log_std)) - log_normal(z)
        kl_a = log_normal(a, a_mean, torch.exp(a_log_std)) - log_normal(a, r_mean, torch.exp(r_log_std))
        return recon, kl_z + kl_a, z

    def noise(self, n: int, x_dim: int, generator: torch.Generator | None = None, device=None):
        """(eps_a, eps_z, u) for n rows: from ``generator`` on the CPU, else the global stream on ``device``."""
        if generator is None:
            return (torch.randn(n, self.a_dim, device=device), torch.randn(n, self.z_dim, device=device),
                    torch.rand(n, x_dim, device=device))
        return (torch.randn(n, self.a_dim, generator=generator), torch.randn(n, self.z_dim, generator=generator),
                torch.rand(n, x_dim, generator=generator))

    def forward(self, x: torch.Tensor, moments: MomentDraws | None = None) -> Step:
        recon, kl, _ = self.terms(x, *self.noise(x.shape[0], x.shape[1], device=x.device))
        return Step(primal=(recon + kl).mean() * self.loss_scale, adversary=None, recon=recon, kl=kl)

    def sample(self, x: torch.Tensor) -> torch.Tensor:
        a_mean, a_log_std = self.encoder_aux(x)
        z_mean, z_log_std = self.encoder(x, a_mean + torch.randn_like(a_mean) * torch.exp(a_log_std))
        return z_mean + torch.randn_like(z_mean) * torch.exp(z_log_std)

    def proposal(self, x, moments=None):
        a_mean, a_log_std = self.encoder_aux(x)
        z_mean, z_log_std = self.encoder(x, a_mean + torch.randn_like(a_mean) * torch.exp(a_log_std))
        return z_mean, torch.exp(z_log_std)

    def iwae(self, x, k, generator=None, max_rows=None):
        noise = list(self.noise(x.shape[0] * k, x.shape[1], generator))

        def log_weight(idx: torch.Tensor, eps_a, eps_z, u) -> torch.Tensor:
            xr = x.index_select(0, idx)
            recon, kl, _ = self.terms(xr, eps_a, eps_z, u)
            return -recon - kl
        return chunked_iwae(log_weight, x, k, noise, max_rows)
