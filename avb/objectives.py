"""The three methods as objectives over one set of networks: VAE, AVB and AVB with adaptive contrast (AC).

Each ``Method`` maps a batch x to a ``Step``: the primal loss (encoder + decoder), the adversary loss (None for the
VAE) and per-example statistics. Scaling follows the official code: primal loss = (1/784) mean(recon + KL), where
recon is the Bernoulli cross-entropy summed over pixels; the adversary loss is the mean logistic loss with
(x, z~q) labelled 1 and (x, z~p) labelled 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from . import convnets
from .nets import X_DIM, Adversary, Decoder, GaussianEncoder, ImplicitEncoder, NoiseBasisEncoder

METHODS = ("vae", "avb", "avb_ac")
ARCHS = ("mlp", "conv0", "conv1")
ADV_ARCHS = ("conv0", "conv1")
LOG_2PI = math.log(2 * math.pi)
AC_VAR_FLOOR = 1e-4  # sigma = sqrt(Var[z|x] + 1e-4), as coded


@dataclass(frozen=True)
class MomentDraws:
    """Evaluation only: estimate AVB + AC's moments of q(z|x) from ``n`` fresh noise draws from ``generator`` per call.

    Departure from the official code, which estimates them in every batch from the batch's own noise
    (``tf.nn.moments``), so from as many draws as images: it always evaluates in batches of the training size, but
    our short last batches, BDMC's and the convergence study's image counts would give another r(z|x) (one image:
    Var = 0, sigma = 0.01). With ``n`` = the training batch size (the default of ``eval.ac_moment_draws``) the
    estimator is the official one at a full batch, except that its draws are not those that give z (the official
    batch shares them with its samples: a 1/n effect on z - mu). Training, and the training-time ELBO, keep the
    in-batch estimate (``moments=None``).
    """

    n: int
    generator: torch.Generator | None = None


@dataclass
class Step:
    primal: torch.Tensor
    adversary: torch.Tensor | None
    recon: torch.Tensor          # [B] -log p(x|z)
    kl: torch.Tensor             # [B] KL(q(z|x) || p(z)): analytic (VAE) or the adversary's estimate (AVB)
    adv_accuracy: torch.Tensor | None = None

    @property
    def elbo(self) -> torch.Tensor:
        return -self.recon - self.kl


def log_normal(z: torch.Tensor, mean: torch.Tensor | float = 0.0, std: torch.Tensor | float = 1.0) -> torch.Tensor:
    """log N(z; mean, diag std^2), summed over the last axis."""
    std = torch.as_tensor(std, dtype=z.dtype, device=z.device)
    zn = (z - mean) / std
    return -0.5 * (zn * zn + 2 * torch.log(std) + LOG_2PI).expand_as(z).sum(-1)


def gaussian_kl(mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, std^2) || N(0, I)) per row, analytic."""
    return 0.5 * (mean * mean + torch.exp(2 * log_std) - 1.0 - 2 * log_std).sum(-1)


class Method(nn.Module):
    """A generative model (decoder), an encoder and, for AVB, an adversary, with one objective."""

    name: str = ""
    loss_scale: float = 1.0 / X_DIM  # the official code divides the primal loss by the number of pixels

    def __init__(self, z_dim: int, decoder: Decoder):
        super().__init__()
        self.z_dim = z_dim
        self.decoder = decoder

    def primal_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("adversary.")]

    def adversary_parameters(self) -> list[nn.Parameter]:
        adversary = getattr(self, "adversary", None)
        return list(adversary.parameters()) if adversary is not None else []

    def recon(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return -self.decoder.log_likelihood(x, z)

    def forward(self, x: torch.Tensor, moments: MomentDraws | None = None) -> Step:  # pragma: no cover - abstract
        """The losses and statistics of batch x; ``moments``: see ``MomentDraws`` (AVB + AC only)."""
        raise NotImplementedError

    def ais_init(self, x: torch.Tensor,
                 moments: MomentDraws | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(mean, std) of the Gaussian that AIS starts from, or None for the prior; ``moments`` as for ``forward``."""
        return None


class VAE(Method):
    name = "vae"

    def __init__(self, z_dim: int, decoder: Decoder, encoder: GaussianEncoder):
        super().__init__(z_dim, decoder)
        self.encoder = encoder

    def forward(self, x: torch.Tensor, moments: MomentDraws | None = None) -> Step:
        mean, log_std = self.encoder(x)
        z = mean + torch.randn_like(mean) * torch.exp(log_std)
        recon, kl = self.recon(x, z), gaussian_kl(mean, log_std)
        return Step(primal=(recon + kl).mean() * self.loss_scale, adversary=None, recon=recon, kl=kl)

    def ais_init(self, x, moments=None):
        mean, log_std = self.encoder(x)
        return mean, torch.exp(log_std)


class AVB(Method):
    """AVB; with ``adaptive_contrast`` the adversary compares z_bar = (z - mu)/sigma against N(0, I)."""

    def __init__(self, z_dim: int, decoder: Decoder, encoder: nn.Module, adversary: nn.Module,
                 adaptive_contrast: bool):
        super().__init__(z_dim, decoder)
        self.encoder, self.adversary, self.ac = encoder, adversary, adaptive_contrast
        self.name = "avb_ac" if adaptive_contrast else "avb"

    def encode(self, x: torch.Tensor, moments: MomentDraws | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """z ~ q(z|x) and, with AC, the stop-gradient moments (mu, sigma) of r(z|x): from the batch's own noise
        (training, as coded) or, given ``moments``, from ``moments.n`` noise draws of their own (evaluation)."""
        if not self.ac:
            return self.encoder(x), None, None
        if moments is None:
            z, mean, var = self.encoder(x)
        else:
            if not hasattr(self.encoder, "moment_noise"):
                raise ValueError(f"{type(self.encoder).__name__} cannot estimate its moments from separate draws")
            z, mean, var = self.encoder(x, moment_eps=self.encoder.moment_noise(moments.n, moments.generator,
                                                                                x.device))
        return z, mean.detach(), torch.sqrt(var.detach() + AC_VAR_FLOOR)

    def forward(self, x: torch.Tensor, moments: MomentDraws | None = None) -> Step:
        z, mu, sigma = self.encode(x, moments)
        z_bar = z if mu is None else (z - mu) / sigma
        z_prior = torch.randn_like(z)
        t_q, t_p = self.adversary(x, z_bar, z_prior)
        kl = t_q
        if mu is not None:  # KL = T(x, z_bar) + log r(z|x) - log p(z)
            kl = t_q + log_normal(z, mu, sigma) - log_normal(z)
        recon = self.recon(x, z)
        adv = F.binary_cross_entropy_with_logits(t_q, torch.ones_like(t_q)) \
            + F.binary_cross_entropy_with_logits(t_p, torch.zeros_like(t_p))
        acc = 0.5 * ((t_q > 0).float().mean() + (t_p < 0).float().mean())
        return Step(primal=(recon + kl).mean() * self.loss_scale, adversary=adv, recon=recon, kl=kl, adv_accuracy=acc)

    def ais_init(self, x, moments=None):
        _, mu, sigma = self.encode(x, moments)
        return None if mu is None else (mu, sigma)


def build(method: str, z_dim: int, *, arch: str = "mlp", hidden: int = 300, eps_dim: int = 32,
          eps_nbasis: int = 16, adv_arch: str = "conv0", adv_hidden: int = 1024, adv_embed: int = 8192,
          adv_layers: int = 3, conv0_decoder_act: str = "relu") -> Method:
    """The networks and objective of ``method`` (vae, avb, avb_ac).

    ``arch`` picks the encoder and decoder family: ``mlp`` (official full0, width ``hidden``), ``conv0`` or ``conv1``
    (see ``avb.convnets``; ``conv0_decoder_act`` is the conv0 decoder's hidden activation, relu as coded).
    ``adv_arch`` picks the adversary independently, as the official scripts do: ``conv0`` (``avb.nets.Adversary``,
    sized by ``adv_hidden``/``adv_embed``/``adv_layers``; every official MNIST script uses it) or ``conv1``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if arch not in ARCHS:
        raise ValueError(f"unknown model.arch {arch!r}; expected one of {', '.join(ARCHS)}")
    if adv_arch not in ADV_ARCHS:
        raise ValueError(f"unknown model.adv_arch {adv_arch!r}; expected one of {', '.join(ADV_ARCHS)}")
    mlp = arch == "mlp"
    decoder = Decoder(z_dim, hidden) if mlp else convnets.decoder(arch, z_dim, conv0_decoder_act)
    if method == "vae":
        encoder = GaussianEncoder(z_dim, hidden) if mlp else convnets.GaussianConvEncoder(arch, z_dim)
        return VAE(z_dim, decoder, encoder)
    if method == "avb":
        encoder = ImplicitEncoder(z_dim, eps_dim, hidden) if mlp else convnets.ImplicitConvEncoder(arch, z_dim, eps_dim)
    else:
        encoder = NoiseBasisEncoder(z_dim, eps_dim, eps_nbasis, hidden) if mlp \
            else convnets.NoiseBasisConvEncoder(arch, z_dim, eps_dim, eps_nbasis)
    adversary = Adversary(z_dim, adv_hidden, adv_embed, adv_layers) if adv_arch == "conv0" \
        else convnets.ConvAdversary(z_dim)
    return AVB(z_dim, decoder, encoder, adversary, adaptive_contrast=method == "avb_ac")
