"""Every method as one interface over any networks: the VAE, AVB, AVB with adaptive contrast (AC), the two
baselines of the official repository (the VAE with inverse autoregressive flow, IAF, and the auxiliary VAE), and eight
schools' Gaussian variational inference (ADVI).

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


class IAF(Method):
    """The VAE with inverse autoregressive flow, as the official ``avb/iaf``: z0 = mu + sigma eps from the Gaussian
    encoder, z_T = flow(z0; a) (``avb.nets.IAFFlow``), log q(z_T|x) = log N(eps; 0, I) - sum log sigma + sum_t
    softplus(-s_t), KL = log q(z_T|x) - log p(z_T) at the sample, ELBO = -recon - KL (a bound: q has a density).

    As coded, only the encoder and decoder are trained (``get_train_op`` takes the variables of the scopes
    ``encoder`` and ``decoder``; the layers live in ``iaf_layer_<i>``): the flow keeps its random initial weights
    and only the context a, an encoder head, learns. ``train_flow = True`` trains the flow too (what IAF means:
    a departure, as option). ``kl = "analytic"`` (option) writes KL = KL(q0 || p) in closed form + [log p(z0) -
    log p(z_T) + sum_t softplus(-s_t)] at the sample: the same expectation with less variance, and with zero flow
    layers exactly the VAE's objective (the bracket is an exact 0).

    AIS starts from the prior, as the official test does (``avb/iaf/test.py``: its ``energy0`` / ``get_z0`` are the
    prior's, the encoder start commented out); ``ais_start = "base"`` (``eval.iaf_ais_start``, set at evaluation,
    never trained on) starts it from the Gaussian base q0(z|x) = N(mu, sigma^2) instead. Both are valid starts, but
    the base is no posterior approximation here: each untrained layer scales z by sigmoid(s) ~ 0.73, so the trained
    base is about 0.73^-T wider than q(z|x) (measured on the quick preset's model at 500 steps: base std 11.9 against
    0.97 for the flow's samples, and AIS 200 x 4 from the base 6.9 nats below the prior start's, which reaches the
    ELBO). The IWAE bound uses the flow's own density (``iwae``) whatever the AIS start.

    Departures from the official code (``avb/iaf``, ``run_iaf.py``):

    * the option of AIS from the Gaussian base (above);
    * the IWAE bound and the exact-density ELBO at evaluation are extras (the official test reports the ELBO only);
    * the MADE degrees are drawn from torch's global stream seeded by the run's seed (officially numpy's unseeded
      global stream): the same distribution, reproducible; the masks are buffers, saved with the weights;
    * ``iaf_layers = 0`` builds no context head (it would feed nothing), so the model is the VAE's exactly;
    * options not in the official code: ``train_flow`` (``model.iaf_train_flow``) and ``kl = "analytic"``
      (``model.iaf_kl``), both off by default; the KL annealing of ``--is-anneal`` (off by default there) and the
      conv3 / celebA networks are not ported.
    """

    name = "iaf"
    elbo_is_bound = True
    KL_ESTIMATORS = ("sample", "analytic")
    AIS_STARTS = ("prior", "base")
    ais_start = "prior"   # the official test's; evaluation may set "base" (``set_ais_start``)

    @property
    def has_proposal(self) -> bool:
        return self.ais_start == "base"

    @property
    def proposal_note(self) -> str:
        if self.ais_start == "base":
            return "proposal: the IAF encoder's Gaussian base q0(z|x) (AIS start); IWAE: the flow's q(z|x)"
        return "AIS starts from the prior (as the official test); IWAE: the flow's q(z|x)"

    def set_ais_start(self, start: str) -> None:
        """Where AIS (and BDMC) start: ``prior`` (the official test) or ``base`` (the Gaussian base q0(z|x))."""
        if start not in self.AIS_STARTS:
            raise ValueError(f"unknown IAF AIS start {start!r}; expected one of {', '.join(self.AIS_STARTS)}")
        self.ais_start = start

    def __init__(self, z_dim: int, decoder: nn.Module, encoder: nn.Module, flow: nn.Module, kl: str = "sample",
                 train_flow: bool = False, loss_scale: float = 1.0 / X_DIM):
        if kl not in self.KL_ESTIMATORS:
            raise ValueError(f"unknown IAF KL estimator {kl!r}; expected one of {', '.join(self.KL_ESTIMATORS)}")
        super().__init__(z_dim, decoder, loss_scale)
        self.encoder, self.flow, self.kl_estimator, self.train_flow = encoder, flow, kl, train_flow

    def primal_parameters(self) -> list[nn.Parameter]:
        """Encoder and decoder; the flow's too only with ``train_flow`` (the official code leaves them untrained)."""
        return [p for n, p in self.named_parameters() if self.train_flow or not n.startswith("flow.")]

    def flow_sample(self, x: torch.Tensor, eps: torch.Tensor | None = None):
        """(z_T, log q(z_T|x), z0, mean, log_std, sum_t softplus(-s_t)) for noise ``eps`` (drawn here if None)."""
        mean, log_std, a = self.encoder(x)
        if eps is None:
            eps = torch.randn_like(mean)
        z0 = mean + eps * torch.exp(log_std)
        z, neg_log_det = self.flow(z0, a)
        log_q = log_normal(eps) - log_std.sum(-1) + neg_log_det
        return z, log_q, z0, mean, log_std, neg_log_det

    def forward(self, x: torch.Tensor, moments: MomentDraws | None = None) -> Step:
        z, log_q, z0, mean, log_std, neg_log_det = self.flow_sample(x)
        recon = self.recon(x, z)
        if self.kl_estimator == "sample":
            kl = log_q - log_normal(z)
        else:
            kl = gaussian_kl(mean, log_std) + (log_normal(z0) - log_normal(z) + neg_log_det)
        return Step(primal=(recon + kl).mean() * self.loss_scale, adversary=None, recon=recon, kl=kl)

    def sample(self, x: torch.Tensor) -> torch.Tensor:
        return self.flow_sample(x)[0]

    def proposal(self, x, moments=None):
        if self.ais_start == "prior":
            return None
        mean, log_std, _ = self.encoder(x)
        return mean, torch.exp(log_std)

    def iwae(self, x, k, generator=None, max_rows=None):
        eps = torch.randn(x.shape[0] * k, self.z_dim, generator=generator)

        def log_weight(idx: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
            xr = x.index_select(0, idx)
            z, log_q, *_ = self.flow_sample(xr, e)
            return -self.recon(xr, z) + log_normal(z) - log_q
        return chunked_iwae(log_weight, x, k, [eps], max_rows)


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
