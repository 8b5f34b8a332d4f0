"""The one method interface over any networks, and its methods: the VAE, AVB, AVB with adaptive contrast (AC) and
eight schools' Gaussian variational inference (ADVI). The official repository's two baselines implement the same
interface in their own modules: ``avb.iaf`` (the VAE with inverse autoregressive flow) and ``avb.auxvae`` (the
auxiliary VAE).

As pythae gives each model one ``forward`` returning its losses, a ``Method`` maps a batch x to a ``Step``: the
primal loss (encoder + decoder), the adversary loss (None without an adversary) and per-example statistics. What a
caller may ask of a method is explicit, never worked out from its name:

* ``name`` (the run config's method), ``label`` (its display name, ``avb.methods.LABELS``);
* ``elbo_is_bound``: whether ``Step.elbo`` is a lower bound on log p(x) (the KL is analytic: VAE, ADVI) or an
  estimate (AVB's adversary KL);
* ``proposal(x)``: the Gaussian (mean, std) that AIS starts from and IWAE samples, or None (start from the prior);
  ``has_proposal`` says which before any call, ``proposal_is_q`` whether it is q(z|x) itself (the VAE: q's density is
  exact) rather than AC's r(z|x), and ``proposal_note`` says what it is;
* ``ac``: adaptive contrast, whose moments of q can come from separate draws (``MomentDraws``);
* ``sample(x)``: one z ~ q(z|x) per row of x;
* ``iwae(x, k, generator)``: the IWAE bound with q itself as proposal, for methods whose q has a density that is not
  the AIS start's Gaussian (IAF: the flow; the auxiliary VAE: the joint q(a, z|x)); None for the others, whose IWAE
  bound uses ``proposal`` (``avb.evaluate``).

Scaling follows the official code: primal loss = ``loss_scale`` mean(recon + KL), recon the Bernoulli cross-entropy
summed over pixels and ``loss_scale`` = 1/784 for the images (the toy notebooks and eight schools: 1); the adversary
loss is the mean logistic loss with (x, z~q) labelled 1 and (x, z~p) labelled 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
import torch.nn.functional as F

from .methods import LABELS
from .nets import X_DIM

LOG_2PI = math.log(2 * math.pi)
AC_VAR_FLOOR = 1e-4  # sigma = sqrt(Var[z|x] + 1e-4), as coded
AC_FLOOR_MODES = ("var", "std")
IMPLICIT_NOTE = "implicit encoder has no density"


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
    kl: torch.Tensor             # [B] KL(q(z|x) || p(z)): analytic (VAE, ADVI) or the adversary's estimate (AVB)
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
    """A generative model (``decoder``: anything with ``log_likelihood(x, z)``) with one objective; see the module
    docstring for the traits."""

    name: str = ""
    elbo_is_bound: bool = False
    has_proposal: bool = False
    proposal_is_q: bool = False
    proposal_note: str = "no proposal density"
    ac: bool = False

    def __init__(self, z_dim: int, decoder: nn.Module, loss_scale: float = 1.0 / X_DIM):
        super().__init__()
        self.z_dim, self.loss_scale = z_dim, loss_scale
        self.decoder = decoder

    @property
    def label(self) -> str:
        return LABELS[self.name]

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

    def sample(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """One z ~ q(z|x) per row of x."""
        raise NotImplementedError

    def proposal(self, x: torch.Tensor,
                 moments: MomentDraws | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(mean, std) of the Gaussian that AIS starts from, or None for the prior; ``moments`` as for ``forward``."""
        return None

    def iwae(self, x: torch.Tensor, k: int, generator: torch.Generator | None = None,
             max_rows: int | None = None) -> torch.Tensor | None:
        """IWAE_k per image with the method's own q as proposal, or None where that is ``proposal``'s Gaussian."""
        return None


class VAE(Method):
    name = "vae"
    elbo_is_bound = True
    has_proposal = True
    proposal_is_q = True
    proposal_note = "proposal: the Gaussian encoder q(z|x)"

    def __init__(self, z_dim: int, decoder: nn.Module, encoder: nn.Module, loss_scale: float = 1.0 / X_DIM):
        super().__init__(z_dim, decoder, loss_scale)
        self.encoder = encoder

    @staticmethod
    def _draw(mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
        return mean + torch.randn_like(mean) * torch.exp(log_std)

    def forward(self, x: torch.Tensor, moments: MomentDraws | None = None) -> Step:
        mean, log_std = self.encoder(x)
        z = self._draw(mean, log_std)
        recon, kl = self.recon(x, z), gaussian_kl(mean, log_std)
        return Step(primal=(recon + kl).mean() * self.loss_scale, adversary=None, recon=recon, kl=kl)

    def sample(self, x: torch.Tensor) -> torch.Tensor:
        return self._draw(*self.encoder(x))

    def proposal(self, x, moments=None):
        mean, log_std = self.encoder(x)
        return mean, torch.exp(log_std)


class AVB(Method):
    """AVB; with ``adaptive_contrast`` the adversary compares z_bar = (z - mu)/sigma against N(0, I).

    AC's r(z|x) = N(mu, sigma^2) takes the stop-gradient moments of q: ``ac_moments = "encoder"``: those the
    encoder returns with z (the noise-basis encoder: E[z|x], Var[z|x]); ``"batch"``: the moments of the batch of z
    (a fixed target, where q(z) does not depend on x: eight schools). ``ac_floor_mode = "var"``: sigma =
    sqrt(var + ac_floor) (the MNIST code, 1e-4); ``"std"``: sigma = std + ac_floor (the eight-schools notebook,
    1e-6). Variances are biased (``tf.nn.moments``).
    """

    AC_MOMENTS = ("encoder", "batch")

    def __init__(self, z_dim: int, decoder: nn.Module, encoder: nn.Module, adversary: nn.Module,
                 adaptive_contrast: bool, loss_scale: float = 1.0 / X_DIM, ac_moments: str = "encoder",
                 ac_floor: float = AC_VAR_FLOOR, ac_floor_mode: str = "var"):
        if ac_moments not in self.AC_MOMENTS:
            raise ValueError(f"unknown ac_moments {ac_moments!r}; expected one of {', '.join(self.AC_MOMENTS)}")
        if ac_floor_mode not in AC_FLOOR_MODES:
            raise ValueError(f"unknown ac_floor_mode {ac_floor_mode!r}; expected std or var")
        super().__init__(z_dim, decoder, loss_scale)
        self.encoder, self.adversary, self.ac = encoder, adversary, adaptive_contrast
        self.ac_moments, self.ac_floor, self.ac_floor_mode = ac_moments, ac_floor, ac_floor_mode
        self.name = "avb_ac" if adaptive_contrast else "avb"

    @property
    def has_proposal(self) -> bool:
        return self.ac

    @property
    def proposal_note(self) -> str:
        return "proposal: the Gaussian r(z|x) with the adaptive-contrast moments of q(z|x)" if self.ac \
            else IMPLICIT_NOTE

    def ac_sigma(self, var: torch.Tensor) -> torch.Tensor:
        """AC's sigma from a (stop-gradient) variance, by ``ac_floor_mode``."""
        return var.sqrt() + self.ac_floor if self.ac_floor_mode == "std" else torch.sqrt(var + self.ac_floor)

    def encode(self, x: torch.Tensor, moments: MomentDraws | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """z ~ q(z|x) and, with AC, the stop-gradient moments (mu, sigma) of r(z|x): from the batch's own noise
        (training, as coded) or, given ``moments``, from ``moments.n`` noise draws of their own (evaluation; not
        with ``ac_moments = "batch"``, whose moments are the batch's, as in the notebook)."""
        if self.ac_moments == "batch":
            if moments is not None:
                raise ValueError("the AC moments are the batch's own here (as the notebook); separate moment draws "
                                 "(MomentDraws) are not supported")
            z = self.encoder(x)
            if not self.ac:
                return z, None, None
            zd = z.detach()
            mean, var = zd.mean(0, keepdim=True), zd.var(0, unbiased=False, keepdim=True)
            return z, mean, self.ac_sigma(var)
        if not self.ac:
            return self.encoder(x), None, None
        if moments is None:
            z, mean, var = self.encoder(x)
        else:
            if not hasattr(self.encoder, "moment_noise"):
                raise ValueError(f"{type(self.encoder).__name__} cannot estimate its moments from separate draws")
            z, mean, var = self.encoder(x, moment_eps=self.encoder.moment_noise(moments.n, moments.generator,
                                                                                x.device))
        return z, mean.detach(), self.ac_sigma(var.detach())

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

    def sample(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)[0]

    def proposal(self, x, moments=None):
        """r(z|x) with AC, else None; plain AVB still draws (and discards) one z, as it always has, so that the
        random stream of an evaluation does not depend on this call's result."""
        _, mu, sigma = self.encode(x, moments)
        return None if mu is None else (mu, sigma)


class GaussianVI(Method):
    """ADVI: q(z) = N(loc, L L^T), L diagonal (mean-field) or lower-triangular with a positive diagonal (full-rank).

    The primal loss is -ELBO = mean over the batch of -log p(y|z_i) plus the analytic KL(q || N(0, I)); x is a dummy
    whose batch size is the number of Monte-Carlo draws per step. The mean starts at U(-init_range, init_range) (as
    Stan's random inits) and the scale at the identity (Stan's omega = 0).
    """

    elbo_is_bound = True

    def __init__(self, z_dim: int, likelihood: nn.Module, full_rank: bool, init_range: float = 2.0,
                 loss_scale: float = 1.0):
        super().__init__(z_dim, likelihood, loss_scale)
        self.full_rank = full_rank
        self.name = "advi_fullrank" if full_rank else "advi_meanfield"
        self.loc = nn.Parameter(torch.empty(z_dim).uniform_(-init_range, init_range))
        self.scale_raw = nn.Parameter(torch.zeros(z_dim, z_dim) if full_rank else torch.zeros(z_dim))

    def scale_tril(self) -> torch.Tensor:
        """L: exp of the raw diagonal on the diagonal, the raw strictly lower triangle below it."""
        if not self.full_rank:
            return torch.diag(torch.exp(self.scale_raw))
        return torch.tril(self.scale_raw, -1) + torch.diag(torch.exp(torch.diagonal(self.scale_raw)))

    def sample(self, x: torch.Tensor) -> torch.Tensor:
        eps = torch.randn(x.shape[0], self.z_dim, device=self.loc.device)
        if not self.full_rank:
            return self.loc + eps * torch.exp(self.scale_raw)
        return self.loc + eps @ self.scale_tril().T

    def kl_to_prior(self) -> torch.Tensor:
        log_diag = torch.diagonal(self.scale_raw) if self.full_rank else self.scale_raw
        fro = (self.scale_tril() ** 2).sum()
        return 0.5 * (fro + (self.loc ** 2).sum() - self.z_dim) - log_diag.sum()

    def forward(self, x: torch.Tensor, moments: Any = None) -> Step:
        z = self.sample(x)
        recon = self.recon(x, z)
        kl = self.kl_to_prior().expand_as(recon)
        return Step(primal=(recon + kl).mean() * self.loss_scale, adversary=None, recon=recon, kl=kl)


def chunked_iwae(log_weight, x: torch.Tensor, k: int, noise: list[torch.Tensor], max_rows: int | None) -> torch.Tensor:
    """log (1/k) sum_j w_j per image, w_j from ``log_weight(row_index, *noise_rows)``: rows image-major (row b*k + j
    is draw j of image b), ``noise`` drawn for all rows at once (so ``max_rows``, the rows per call, changes no
    number)."""
    rows = x.shape[0] * k
    log_w = torch.empty(rows, dtype=x.dtype, device=x.device)
    cap = rows if max_rows is None else max(1, int(max_rows))
    for start in range(0, rows, cap):
        stop = min(rows, start + cap)
        idx = torch.arange(start, stop, device=x.device) // k
        log_w[start:stop] = log_weight(idx, *(n[start:stop].to(x.device) for n in noise))
    return torch.logsumexp(log_w.view(-1, k), dim=1) - math.log(k)
