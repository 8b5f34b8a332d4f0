"""VAE + IAF, the official repository's inverse-autoregressive-flow baseline (``avb/iaf``, ``run_iaf.py``): the
MADE-masked IAF layers, the flow, the encoder with its context head, and the method. Built by ``avb.experiments``.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .nets import X_DIM, GaussianEncoder, centre, linear
from .objectives import Method, MomentDraws, Step, chunked_iwae, gaussian_kl, log_normal


class MaskedLinear(nn.Module):
    """The official ``masked_linear_layer``: y = x (M * W) + b, W Xavier-initialised on its full [in, out] shape
    (the masked entries included, as coded), b zero; the 0/1 ``mask`` [in, out] is a buffer (the official
    non-trainable variable), so a checkpoint carries it."""

    def __init__(self, n_in: int, n_out: int, mask: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_in, n_out)))
        self.bias = nn.Parameter(torch.zeros(n_out))
        self.register_buffer("mask", mask.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x, self.mask * self.weight)


def made_masks(z_dim: int, h_dim: int, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The official IAF layer's masks: hidden unit k gets a degree m_k ~ U{1, ..., z_dim - 1}; M1 [z, h] lets unit k
    see inputs d <= m_k, M2 [h, z] lets output d see units with m_k < d, M3 [z, z] lets output j see inputs i < j
    (the direct connection). Output d so depends on z_1..z_{d-1} only: the Jacobian is triangular."""
    if z_dim < 2:
        raise ValueError(f"an IAF layer needs z_dim >= 2 (its degrees are drawn from 1..z_dim-1), got {z_dim}")
    m = torch.randint(1, z_dim, (h_dim,), generator=generator)
    d = torch.arange(1, z_dim + 1)
    return ((m[None, :] >= d[:, None]).float(), (m[:, None] < d[None, :]).float(),
            (d[None, :] > d[:, None]).float())


class IAFLayer(nn.Module):
    """One official IAF layer (``avb/iaf/models/__init__.py: iaf_layer``; ``apply_iaf`` passes ELU):

    h = ELU(masked(z; M1) + Linear(a)), m = 0.1 (masked(h; M2) + masked(z; M3)), s = 1 + 0.01 (masked(h; M2') +
    masked(z; M3')) with four masked layers of their own; then z <- sigma z + (1 - sigma) m, sigma = sigmoid(s),
    log q += sum softplus(-s) (= -log sigma), and the order of z is reversed.
    """

    def __init__(self, z_dim: int, h_dim: int, a_dim: int, generator: torch.Generator | None = None):
        super().__init__()
        m1, m2, m3 = made_masks(z_dim, h_dim, generator)
        self.inp = MaskedLinear(z_dim, h_dim, m1)
        self.context = linear(a_dim, h_dim)
        self.m_h, self.m_z = MaskedLinear(h_dim, z_dim, m2), MaskedLinear(z_dim, z_dim, m3)
        self.s_h, self.s_z = MaskedLinear(h_dim, z_dim, m2), MaskedLinear(z_dim, z_dim, m3)

    def shift_and_gate(self, z: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(m, s) of the layer at z with context a."""
        h = F.elu(self.inp(z) + self.context(a))
        return 0.1 * (self.m_h(h) + self.m_z(z)), 1.0 + 0.01 * (self.s_h(h) + self.s_z(z))

    def forward(self, z: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the reversed new z, -log |det dz_new/dz| per row)."""
        m, s = self.shift_and_gate(z, a)
        sigma = torch.sigmoid(s)
        return (sigma * z + (1 - sigma) * m).flip(-1), F.softplus(-s).sum(-1)


class IAFFlow(nn.Module):
    """The official ``apply_iaf``: ``n_layers`` IAF layers in turn; returns z_T and sum of -log |det| (added to
    log q0). Zero layers: the identity (z_T is z_0 itself, the sum an exact 0)."""

    def __init__(self, z_dim: int, n_layers: int, h_dim: int, a_dim: int, generator: torch.Generator | None = None):
        super().__init__()
        self.layers = nn.ModuleList([IAFLayer(z_dim, h_dim, a_dim, generator) for _ in range(n_layers)])

    def forward(self, z: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        neg_log_det = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
        for layer in self.layers:
            z, nld = layer(z, a)
            neg_log_det = neg_log_det + nld
        return z, neg_log_det


class IAFEncoder(GaussianEncoder):
    """The official IAF encoder: the VAE's body and (mean, log std) heads plus a linear context head a (``iaf_a_dim``
    wide) that every IAF layer reads. The heads are made in the VAE's order, the context head last, so the body and
    the Gaussian heads draw the VAE's initial weights; ``a_dim = 0`` (no flow layers): no context head at all, and
    the encoder is the VAE's."""

    def __init__(self, body: nn.Module, width: int, z_dim: int, a_dim: int, centre_input: bool = True):
        super().__init__(body, width, z_dim, centre_input)
        self.context = linear(width, a_dim) if a_dim else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        h = self.body(centre(x) if self.centre_input else x)
        return self.mean(h), self.log_std(h), (self.context(h) if self.context is not None else None)


class IAF(Method):
    """The VAE with inverse autoregressive flow, as the official ``avb/iaf``: z0 = mu + sigma eps from the Gaussian
    encoder, z_T = flow(z0; a) (``IAFFlow``), log q(z_T|x) = log N(eps; 0, I) - sum log sigma + sum_t
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
