"""The paper's four-image toy experiment (section 5.1), with exact answers.

Data: the 4 one-hot vectors of length 4 (2x2 binary images with one pixel on), drawn uniformly. Latent z in R^2 with
prior N(0, I); Bernoulli decoder with 4 logits. Networks and settings follow ``notebooks/AVB_toy_example.ipynb`` and
``VAE_toy_example.ipynb`` of the official repository (HEAD):

* AVB encoder: concat(x, eps), eps ~ N(0, I_64) -> 3 x FC64 ELU -> linear 2 (x is the raw one-hot vector);
* VAE encoder: x -> 3 x FC64 ELU -> mean and log-std heads (linear 2 each);
* decoder: z -> 3 x FC64 ELU -> 4 logits;
* adversary: concat(x, z) -> FC256 ELU -> 5 residual blocks -> FC1, then ``+ sum(z^2)``. A residual block is
  ``h <- ELU(h + FC256_zero_init(ReLU(FC256(h))))``: the notebook's first layer of a block is a plain
  ``slim.fully_connected``, whose default activation is ReLU; the second is linear with zero-initialised weights.
* Linear layers: Xavier-uniform weights, zero biases (slim's defaults) via ``avb.nets.linear``.
* batch 512; Adam with TF's default betas (0.9, 0.999); lr 2e-5 (encoder + decoder), 1e-4 (adversary); two adversary
  updates per primal update; 100,000 iterations.

**The prior term of the adversary.** The notebook adds ``sum(z^2)``, not the ``0.5 * sum(z^2) = -log N(z; 0, I) + c``
of the paper's log-prior trick and of the official MNIST adversary. Both parametrise the same function class (the
network output absorbs any difference), so the optimum T*(x, z) = log q(z|x) - log p(z) is unchanged; what changes
is what the network must learn: with ``half_sum_sq`` the network output itself is log q(z|x) up to a constant (the
trick's intent), with ``sum_sq`` (as coded, the default here) it must learn log q(z|x) - 0.5 |z|^2, i.e. also cancel
the surplus 0.5 |z|^2. ``model.adv_prior_term`` selects ``sum_sq`` (notebook) or ``half_sum_sq``.

**AVB + AC on the toy** (no toy notebook exists for it): the noise-basis encoder of the official ``*_ac`` models,
sized for the toy: h(x) = 3 x FC64 ELU on the one-hot x; z = z0(x) + sum_{i=1..m} a_i(x) * v_i(eps_i) with
a_i(x) = ELU(Linear_i(h) - 5) + 1 > 0, z0 a linear head initialised with std 1e-5, and each v_i its own MLP
eps_i (in R^k) -> 3 x FC64 ELU -> linear 2. Defaults m = 8 bases x k = 8 noise dims, i.e. 64 noise dimensions as
the AVB encoder. Moments E[z|x], Var[z|x] come from the batch moments of v_i as coded (``avb.objectives.AVB``); the
adversary sees (x, z_bar), z_bar = (z - E[z|x]) / std[z|x], and its prior term acts on z_bar.

The methods are ``avb.objectives.VAE`` / ``AVB`` over these networks, with ``loss_scale = 1`` (the notebooks use
plain means of the per-example losses), trained by ``avb.train.fit``.

**Exact evaluation.** Because z is 2-D, log p(x) = log \\int p(x|z) N(z; 0, I) dz is computed by the tensor-product
midpoint rule on the box [-L, L]^2 with n x n cells of side h = 2L/n (``midpoint_grid``). For an integrand
f = g * N(.; 0, I) with 0 <= g <= 1 (here g = p(x|z)) the error is bounded by

    |\\int_{R^2} f - M_h f| <= |B| h^2 / 24 * (sup|d^2f/dz1^2| + sup|d^2f/dz2^2|)  +  P_{N(0,I)}(z outside B),

the composite midpoint-rule bound on the box B plus the truncated prior mass 1 - (1 - 2 Phi(-L))^2 (3.9e-9 for
L = 6). ``gaussian_midpoint_error_bound`` evaluates this bound for a Gaussian integrand, where the derivatives are
known; the tests check the rule against it. The h^2 term is conservative for smooth integrands (for a Gaussian the
midpoint rule converges spectrally: on the evaluation's 600^2 grid over [-6, 6]^2 the error for N(0, I) is 3.9e-9,
the truncated mass, against a bound of 7.6e-4). For a trained decoder the second derivatives are not available, so
``evaluate`` reports a Richardson estimate |M_h - M_{2h}| / 3 (exact for an O(h^2) error, an overestimate when the
rule converges faster) beside the result, and the total p(x) over all 16 binary images (1 up to the truncated
mass). The bounds are on p(x); the error of log p(x) is the error of p(x) divided by p(x).

**Differences from the notebooks** (beyond PyTorch for TF and its random streams):

* update order: ``avb.train.fit`` applies the primal and the first adversary update together, from one forward
  pass on one batch (the official MNIST ``get_train_op``), then ``adversary_steps - 1`` = 1 further adversary update
  on a fresh batch. The notebook runs the primal update, then two adversary updates, each on a fresh batch. Both do
  2 adversary updates per primal update;
* VAE KL: the project's ``VAE`` uses the analytic KL(N(mu, sigma^2) || N(0, I)); the notebook uses the one-sample
  estimate sum(0.5 z^2 - log sigma - 0.5), which has the same expectation and the same expected gradient;
* the figure draws fresh noise per image; the notebook feeds the same 512 noise vectors to all 4 images;
* AVB + AC is not in the notebooks (encoder above); the notebooks have no evaluation (all of it is ours).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from . import io, knn
from .config import toy_run_config
from .nets import ParallelMLPs, linear, mlp
from .objectives import AVB, VAE, Method, log_normal

X_DIM = 4
Z_DIM = 2
N_IMAGES = 4
OPTIMUM = -math.log(4.0)  # max over models of the mean over the 4 images of log p(x)
METHODS = ("vae", "avb", "avb_ac")
LABELS = {"vae": "VAE", "avb": "AVB", "avb_ac": "AVB + AC"}
PRIOR_TERMS = {"sum_sq": 1.0, "half_sum_sq": 0.5}

# Defaults mirror workflow/schemas/config.schema.yaml (toy section), i.e. the notebook.
DEFAULT_MODEL = {"hidden": 64, "eps_dim": 64, "adv_hidden": 256, "adv_blocks": 5, "adv_prior_term": "sum_sq",
                 "ac_nbasis": 8, "ac_eps_dim": 8}
DEFAULT_EVAL = {"grid_limit": 6.0, "grid_size": 600, "n_samples": 20000, "kde_samples": 20000,
                "scatter_samples": 512, "knn_k": 3, "seed": 1234, "device": "auto"}


# ----------------------------------------------------------------------------------------------------- data
def images() -> torch.Tensor:
    """The four 2x2 images as one-hot rows [4, 4] (row i has pixel i on)."""
    return torch.eye(N_IMAGES)


class ToyBatches:
    """Endless batches of one-hot images drawn uniformly (``tf.one_hot(randint(0, 4))``) from ``gen``.

    It holds no state of its own: its position is the state of ``gen``, which ``avb.train.fit`` checkpoints.
    """

    def __init__(self, batch_size: int, gen: torch.Generator, device: torch.device | str = "cpu"):
        self.batch_size, self.gen, self.device = batch_size, gen, torch.device(device)

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        labels = torch.randint(0, N_IMAGES, (self.batch_size,), generator=self.gen)
        return F.one_hot(labels, N_IMAGES).float().to(self.device)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


# ------------------------------------------------------------------------------------------------- networks
class ToyDecoder(nn.Module):
    """z -> 3 x FC64 ELU -> 4 Bernoulli logits."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.net = mlp([Z_DIM, hidden, hidden, hidden, X_DIM], nn.ELU)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return -F.binary_cross_entropy_with_logits(self(z), x, reduction="none").sum(-1)


class ToyImplicitEncoder(nn.Module):
    """AVB encoder: concat(x, eps), eps ~ N(0, I_eps_dim) -> 3 x FC64 ELU -> linear 2."""

    def __init__(self, hidden: int = 64, eps_dim: int = 64):
        super().__init__()
        self.eps_dim = eps_dim
        self.net = mlp([X_DIM + eps_dim, hidden, hidden, hidden, Z_DIM], nn.ELU)

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        if eps is None:
            eps = torch.randn(x.shape[0], self.eps_dim, device=x.device)
        return self.net(torch.cat([x, eps], -1))


class ToyGaussianEncoder(nn.Module):
    """VAE encoder: x -> 3 x FC64 ELU -> (mean, log std)."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.body = mlp([X_DIM, hidden, hidden, hidden], nn.ELU, out_act=nn.ELU())
        self.mean = linear(hidden, Z_DIM)
        self.log_std = linear(hidden, Z_DIM)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.mean(h), self.log_std(h)


class ToyNoiseBasisEncoder(nn.Module):
    """AVB + AC encoder: z = z0(x) + sum_i a_i(x) * v_i(eps_i), a_i = ELU(Linear_i(h(x)) - 5) + 1 (official form).

    Returns z and the Monte-Carlo moments E[z|x], Var[z|x] from the batch moments of each v_i, as coded.
    """

    def __init__(self, hidden: int = 64, n_basis: int = 8, eps_dim: int = 8):
        super().__init__()
        self.n_basis, self.eps_dim = n_basis, eps_dim
        self.body = mlp([X_DIM, hidden, hidden, hidden], nn.ELU, out_act=nn.ELU())
        self.z0 = linear(hidden, Z_DIM, init_std=1e-5)
        self.a = linear(hidden, n_basis * Z_DIM)
        for w in self.a.weight.data.view(n_basis, Z_DIM, hidden):
            nn.init.xavier_uniform_(w)  # each head Linear_i initialised as its own layer
        self.v = ParallelMLPs(n_basis, [eps_dim, hidden, hidden, hidden, Z_DIM], nn.ELU)

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None):
        n = x.shape[0]
        if eps is None:
            eps = torch.randn(self.n_basis, n, self.eps_dim, device=x.device)
        h = self.body(x)
        z0 = self.z0(h)
        a = F.elu(self.a(h).view(n, self.n_basis, Z_DIM) - 5.0) + 1.0    # [n, m, 2]
        v = self.v(eps).transpose(0, 1)                                  # [n, m, 2]
        z = z0 + (a * v).sum(1)
        mean_v, var_v = v.mean(0), v.var(0, unbiased=False)
        return z, z0 + (a * mean_v).sum(1), (a * a * var_v).sum(1)


class ToyAdversary(nn.Module):
    """T(x, z) = FC1(resblocks(ELU(FC(concat(x, z))))) + c |z|^2, c = 1 (notebook, ``sum_sq``) or 0.5."""

    def __init__(self, hidden: int = 256, blocks: int = 5, prior_term: str = "sum_sq"):
        super().__init__()
        if prior_term not in PRIOR_TERMS:
            raise ValueError(f"unknown adv_prior_term {prior_term!r}; expected one of {', '.join(PRIOR_TERMS)}")
        self.c = PRIOR_TERMS[prior_term]
        self.inp = linear(X_DIM + Z_DIM, hidden)
        self.res0 = nn.ModuleList([linear(hidden, hidden) for _ in range(blocks)])
        self.res1 = nn.ModuleList([linear(hidden, hidden) for _ in range(blocks)])
        for layer in self.res1:
            nn.init.zeros_(layer.weight)  # weights_initializer=tf.constant_initializer(0.)
        self.out = linear(hidden, 1)

    def t(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = F.elu(self.inp(torch.cat([x, z], -1)))
        for r0, r1 in zip(self.res0, self.res1):
            h = F.elu(h + r1(F.relu(r0(h))))
        return self.out(h).squeeze(-1) + self.c * (z * z).sum(-1)

    def forward(self, x: torch.Tensor, *zs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """T(x, z) for each z batch given, evaluated in one pass over the stacked batches."""
        t = self.t(x.repeat(len(zs), 1), torch.cat(zs, 0)).split(x.shape[0])
        return t[0] if len(zs) == 1 else tuple(t)


def build(method: str, model: dict[str, Any] | None = None) -> Method:
    """The toy networks for ``method`` inside the project's ``VAE`` / ``AVB`` objectives, with loss_scale 1."""
    m = {**DEFAULT_MODEL, **(model or {})}
    if method not in METHODS:
        raise ValueError(f"unknown toy method {method!r}; expected one of {', '.join(METHODS)}")
    decoder = ToyDecoder(m["hidden"])
    if method == "vae":
        out: Method = VAE(Z_DIM, decoder, ToyGaussianEncoder(m["hidden"]))
    else:
        encoder = ToyImplicitEncoder(m["hidden"], m["eps_dim"]) if method == "avb" \
            else ToyNoiseBasisEncoder(m["hidden"], m["ac_nbasis"], m["ac_eps_dim"])
        adversary = ToyAdversary(m["adv_hidden"], m["adv_blocks"], m["adv_prior_term"])
        out = AVB(Z_DIM, decoder, encoder, adversary, adaptive_contrast=method == "avb_ac")
    out.loss_scale = 1.0  # the notebooks: mean(recon + KL), no division by the number of pixels
    return out


# The toy.model keys each method's networks use; a run config holds only these, so a changed adversary setting
# does not retrain the VAE. workflow/rules/toy.smk repeats this (it must not import torch); a test compares them.
run_config = toy_run_config  # torch-free, in avb.config, so that the Snakefile can use it without torch


def train(run: dict[str, Any], out_dir: str | os.PathLike, progress: bool = True) -> Path:
    """Train one toy run through the shared loop ``avb.train.fit``; returns the final model file."""
    from .train import fit, resolve_device
    device = resolve_device(run["train"]["device"])
    torch.manual_seed(run["seed"])
    data_gen = torch.Generator().manual_seed(run["seed"] + 1)
    model = build(run["method"], run["model"]).to(device)
    batches = ToyBatches(run["train"]["batch_size"], data_gen, device)
    return fit(model, batches, data_gen, run, out_dir, progress)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Method, dict[str, Any]]:
    """A trained toy model (eval mode) and its run config with ``steps_done``, read with ``weights_only=True``
    (``io.load_torch``); a file that is not a toy model of this package is an error naming it."""
    from .train import load_weights
    model, ck = load_weights(path, lambda run: build(run["method"], run["model"]), device, ("run", "model", "step"),
                             what="toy model")
    return model, {**ck["run"], "steps_done": ck["step"]}


# ----------------------------------------------------------------------------------------------- quadrature
def midpoint_grid(limit: float, n: int, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Cell midpoints of an n x n grid on [-limit, limit]^2: (axis [n], points [n*n, 2] in row-major (z2, z1)
    order, cell side h). ``points.view(n, n, 2)[i, j] = (axis[j], axis[i])``, so images index [z2, z1]."""
    h = 2.0 * limit / n
    axis = -limit + h * (torch.arange(n, device=device, dtype=dtype) + 0.5)
    z2, z1 = torch.meshgrid(axis, axis, indexing="ij")
    return axis, torch.stack([z1.reshape(-1), z2.reshape(-1)], -1), h


def log_integral(log_f: torch.Tensor, h: float) -> torch.Tensor:
    """log of the midpoint-rule integral of exp(log_f) over the grid (last axis = grid points)."""
    return torch.logsumexp(log_f, -1) + 2.0 * math.log(h)


def prior_tail_mass(limit: float) -> float:
    """P(z outside [-limit, limit]^2) for z ~ N(0, I_2)."""
    inside = math.erf(limit / math.sqrt(2.0))
    return 1.0 - inside * inside


def gaussian_midpoint_error_bound(mean: tuple[float, float], std: tuple[float, float], limit: float, n: int) -> float:
    """The stated bound on |\\int_{R^2} N(z; mean, diag std^2) dz - M_h| for the midpoint rule on [-L, L]^2.

    Box part: |B| h^2/24 (sup|f_11| + sup|f_22|), with sup|f_ii| = N_max / std_i^2 (attained at the mean;
    |u^2 - 1| e^{-u^2/2} <= 1), N_max = 1/(2 pi std_1 std_2). Tail part: the Gaussian mass outside the box.
    """
    h = 2.0 * limit / n
    s1, s2 = std
    n_max = 1.0 / (2.0 * math.pi * s1 * s2)
    box = (2.0 * limit) ** 2 * h * h / 24.0 * (n_max / s1 ** 2 + n_max / s2 ** 2)
    inside = 1.0
    for m, s in zip(mean, std):
        inside *= 0.5 * (math.erf((limit - m) / (s * math.sqrt(2))) - math.erf((-limit - m) / (s * math.sqrt(2))))
    return box + (1.0 - inside)


def all_binary_images() -> torch.Tensor:
    """The 16 binary 2x2 images as rows [16, 4]; rows 1, 2, 4, 8 are the data (pixel 0, 1, 2, 3 on)."""
    k = torch.arange(16)
    return ((k[:, None] >> torch.arange(4)) & 1).float()


@torch.no_grad()
def log_joint_on_grid(decoder: nn.Module, x: torch.Tensor, points: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """log p(x|z) + log N(z; 0, I) for every image x [k, 4] and grid point [G, 2] -> [k, G] (float64)."""
    dev = next(decoder.parameters()).device
    x = x.to(torch.float64)
    out = []
    for zc in points.split(chunk):
        logits = decoder(zc.to(device=dev, dtype=torch.float32)).to(torch.float64).cpu()
        lp = F.logsigmoid(logits) @ x.T + F.logsigmoid(-logits) @ (1.0 - x).T   # [g, k]
        out.append(lp.T + log_normal(zc.cpu())[None])
    return torch.cat(out, 1)


def exact_log_px(decoder: nn.Module, x: torch.Tensor, limit: float = 6.0, n: int = 600) -> torch.Tensor:
    """log p(x) = log \\int p(x|z) N(z; 0, I) dz per image x [k, 4], by the midpoint rule (float64)."""
    _, points, h = midpoint_grid(limit, n)
    return log_integral(log_joint_on_grid(decoder, x, points), h)


def exact_posterior(decoder: nn.Module, x: torch.Tensor, limit: float = 6.0, n: int = 600):
    """(axis [n], density p(z|x) on the grid [k, n, n] indexed [z2, z1], log p(x) [k]); sum(density) h^2 = 1."""
    axis, points, h = midpoint_grid(limit, n)
    lj = log_joint_on_grid(decoder, x, points)
    log_px = log_integral(lj, h)
    return axis, torch.exp(lj - log_px[:, None]).view(-1, n, n), log_px


# --------------------------------------------------------------------------------------------- KL estimates
def kde_log_density(points: torch.Tensor, centres: torch.Tensor, bandwidth: float, chunk: int = 2048) -> torch.Tensor:
    """log of the isotropic Gaussian KDE with the given centres and bandwidth at ``points`` (float64)."""
    points, centres = points.to(torch.float64), centres.to(torch.float64)
    norm = math.log(centres.shape[0]) + centres.shape[1] * math.log(bandwidth * math.sqrt(2 * math.pi))
    out = [torch.logsumexp(-0.5 * torch.cdist(p, centres).square() / bandwidth ** 2, -1) - norm
           for p in points.split(chunk)]
    return torch.cat(out)


class BinnedKDE:
    """Isotropic Gaussian KDE of 2-D samples, computed on a grid (the binned KDE of Wand 1994).

    The samples are linearly binned onto an m x m grid of cell centres covering every point it will be asked about
    (plus 4 bandwidths); the density at the cell centres is the separable Gaussian convolution K1 H K2^T of the
    binned masses H, and is read off at query points by bilinear interpolation. Both approximations are
    O((cell / bandwidth)^2), and the leading term is removed by narrowing the kernel (see ``log_density``): against
    the exact KDE (``kde_log_density``) the mean log density then agrees to ~1e-4 at 3 cells per bandwidth and
    better above (checked on trained toy encoders; ``tests/test_toy.py`` checks 3e-4). Bandwidths below 3 cells are
    not tried. Cost: O(n + m^3) per bandwidth, so large
    sample sizes are cheap (the exact KDE, ``kde_log_density``, costs O(n_query x n)).
    """

    def __init__(self, centres: torch.Tensor, cover: torch.Tensor, max_bandwidth: float, m: int = 512):
        c = centres.to(torch.float64)
        pts = torch.cat([c, cover.to(torch.float64)])
        self.lo = pts.min(0).values - 4 * max_bandwidth
        hi = pts.max(0).values + 4 * max_bandwidth
        self.m = m
        self.cell = (hi - self.lo) / m                                            # [2]
        self.g = [self.lo[d] + self.cell[d] * (torch.arange(m, dtype=torch.float64) + 0.5) for d in range(2)]
        i0, f = self._locate(c)
        h = torch.zeros(m * m, dtype=torch.float64)
        for d1 in (0, 1):
            for d2 in (0, 1):
                w = (f[:, 0] if d1 else 1 - f[:, 0]) * (f[:, 1] if d2 else 1 - f[:, 1])
                h.index_add_(0, (i0[:, 0] + d1) * m + i0[:, 1] + d2, w)
        self.h = h.view(m, m) / c.shape[0]                                        # binned probability masses

    def _locate(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = (p - self.lo) / self.cell - 0.5
        i0 = u.floor().clamp(0, self.m - 2)
        return i0.long(), (u - i0).clamp(0.0, 1.0)

    def min_bandwidth(self) -> float:
        return 3.0 * float(self.cell.max())

    def log_density(self, points: torch.Tensor, bandwidth: float) -> torch.Tensor:
        # linear binning and linear interpolation each add a variance of about cell^2 / 6 per axis (averaged over
        # positions); the kernel's variance is reduced by that much, which removes the leading binning bias
        k = []
        for d, g in enumerate(self.g):
            b = math.sqrt(bandwidth ** 2 - float(self.cell[d]) ** 2 / 3.0)
            k.append(torch.exp(-0.5 * ((g[:, None] - g[None]) / b) ** 2) / (math.sqrt(2 * math.pi) * b))
        dens = k[0] @ self.h @ k[1].T                                             # density at the cell centres
        i0, f = self._locate(points.to(torch.float64))
        out = 0.0
        for d1 in (0, 1):
            for d2 in (0, 1):
                w = (f[:, 0] if d1 else 1 - f[:, 0]) * (f[:, 1] if d2 else 1 - f[:, 1])
                out = out + w * dens[i0[:, 0] + d1, i0[:, 1] + d2]
        return torch.log(out.clamp_min(1e-300))


def kl_estimate(fit_samples: torch.Tensor, select_samples: torch.Tensor, eval_samples: torch.Tensor,
                log_target: torch.Tensor) -> tuple[float, float]:
    """KL(q || p) ~ mean over eval samples z ~ q of log q_hat(z) - log p(z), q_hat a held-out Gaussian KDE.

    q_hat is a ``BinnedKDE`` of ``fit_samples``; its bandwidth maximises the mean log q_hat of ``select_samples``
    over Scott's bandwidth times 2^(k/2), k = -12..2. ``log_target`` is log p at ``eval_samples``. All three sample
    sets are independent draws from q, and q_hat is a normalised density, so the estimate's expectation is
    KL(q || p) - KL(q || q_hat) <= KL(q || p): it is biased **downwards** by KL(q || q_hat) (plus Monte-Carlo noise
    and the binning error), and choosing the bandwidth by held-out likelihood minimises that bias.
    Returns (estimate, bandwidth).
    """
    fit = fit_samples.to(torch.float64)
    n, d = fit.shape
    scott = max(float(fit.std(0).mean()) * n ** (-1.0 / (d + 4)), 1e-6)
    cands = [scott * 2 ** (k / 2) for k in range(-12, 3)]
    kde = BinnedKDE(fit, torch.cat([select_samples, eval_samples]), max(cands))
    cands = [b for b in cands if b >= kde.min_bandwidth()] or [kde.min_bandwidth()]
    bw = max(cands, key=lambda b: float(kde.log_density(select_samples, b).mean()))
    return float((kde.log_density(eval_samples, bw) - log_target.to(torch.float64)).mean()), bw


# ----------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def encoder_samples(model: Method, x: torch.Tensor, n: int) -> torch.Tensor:
    """n samples z ~ q(z|x) for one image x [4] (AC moments come from this batch, as in training)."""
    xb = x.expand(n, -1)
    if model.name == "vae":
        mean, log_std = model.encoder(xb)
        return mean + torch.randn_like(mean) * torch.exp(log_std)
    return model.encode(xb)[0]


@torch.no_grad()
def evaluate(model_path: str | os.PathLike, settings: dict[str, Any] | None = None) -> tuple[dict, dict]:
    """Exact and estimated quantities of one trained toy model: (summary dict, arrays for the figure)."""
    from .train import resolve_device
    s = {**DEFAULT_EVAL, **(settings or {})}
    t0 = time.perf_counter()
    device = resolve_device(s["device"])
    model, run = load_model(model_path, device)
    torch.manual_seed(s["seed"])
    L, n = float(s["grid_limit"]), int(s["grid_size"])
    x = images()
    xd = x.to(device)

    # exact log p(x) and posterior, with a Richardson error estimate from the half-resolution grid
    axis, post, log_px = exact_posterior(model.decoder, x, L, n)
    log_px_coarse = exact_log_px(model.decoder, x, L, max(n // 2, 2))
    quad_err = float((log_px - log_px_coarse).abs().max() / 3.0)
    log_p_all = exact_log_px(model.decoder, all_binary_images(), L, n)
    mass_all = float(log_p_all.exp().sum())

    # independent encoder samples per image: n_samples to evaluate (recon, ELBO, KL), kde_samples to fit the KDE
    # q_hat and kde_samples / 5 to choose its bandwidth
    n_eval, n_kde = int(s["n_samples"]), int(s["kde_samples"])
    n_sel = max(n_kde // 5, 10)
    recon, elbo, kl_post, kl_post_kde, bws = [], [], [], [], []
    z_eval_all, z_fit_all, z_sel_all, zs_scatter = [], [], [], []
    for i in range(N_IMAGES):
        xi = xd[i]
        z_eval, z_fit, z_sel = (encoder_samples(model, xi, k).cpu() for k in (n_eval, n_kde, n_sel))
        zs_scatter.append(encoder_samples(model, xi, int(s["scatter_samples"])).cpu())
        z_eval_all.append(z_eval)
        z_fit_all.append(z_fit)
        z_sel_all.append(z_sel)
        step = model(xi.expand(n_eval, -1))             # recon and the method's own KL on fresh samples
        recon.append(float(step.recon.mean()))
        elbo.append(float(step.elbo.mean()))
        ll = model.decoder.log_likelihood(xi.expand(n_eval, -1), z_eval.to(device)).to(torch.float64).cpu()
        log_post = ll + log_normal(z_eval.to(torch.float64)) - log_px[i]   # exact log p(z|x) at the samples
        est, bw = kl_estimate(z_fit, z_sel, z_eval, log_post)
        kl_post_kde.append(est)
        bws.append(bw)
        if model.name == "vae":  # q is Gaussian: exact log q, so only Monte-Carlo error
            mean, log_std = (t.cpu().double() for t in model.encoder(xi[None]))
            kl_post.append(float((log_normal(z_eval.double(), mean, log_std.exp()) - log_post).mean()))
        else:
            kl_post.append(est)

    # aggregated posterior q(z) = 1/4 sum_i q(z|x_i) against the prior (equal numbers of samples per image)
    z_eval = torch.cat(z_eval_all)
    log_prior = log_normal(z_eval.to(torch.float64))
    kl_agg_kde, bw_agg = kl_estimate(torch.cat(z_fit_all), torch.cat(z_sel_all), z_eval, log_prior)
    if model.name == "vae":
        mean, log_std = (t.cpu().double() for t in model.encoder(xd))
        comps = torch.stack([log_normal(z_eval.double(), mean[i], log_std[i].exp()) for i in range(N_IMAGES)], -1)
        kl_agg = float((torch.logsumexp(comps, -1) - math.log(N_IMAGES) - log_prior).mean())
    else:
        kl_agg = kl_agg_kde
    # the same against as many prior draws by the kNN estimator (the ITE toolbox's; see table1_markdown)
    prior_draws = np.random.default_rng(int(s["seed"])).standard_normal(tuple(z_eval.shape))
    kl_agg_knn = knn.kl_divergence(z_eval.double().numpy(), prior_draws, int(s["knn_k"]))

    exact_q = model.name == "vae"
    summary = {
        "method": run["method"], "label": LABELS[run["method"]], "iterations": run["steps_done"], "seed": run["seed"],
        "log_px_exact": float(log_px.mean()), "optimum": OPTIMUM, "gap_to_optimum": OPTIMUM - float(log_px.mean()),
        **{f"log_px_x{i}": float(log_px[i]) for i in range(N_IMAGES)},
        "mass_on_data": float(log_px.exp().sum()), "mass_all_images": mass_all,
        "quad_error_est": quad_err, "prior_tail_mass": prior_tail_mass(L),
        "recon_error": float(np.mean(recon)), "recon_error_paper": float(np.mean(recon)) / X_DIM,
        "elbo": float(np.mean(elbo)), "elbo_is_bound": exact_q,
        "elbo_estimator": "analytic KL, MC recon" if exact_q else "adversary KL estimate (not a bound)",
        "kl_q_posterior": float(np.mean(kl_post)), "kl_q_posterior_kde": float(np.mean(kl_post_kde)),
        "kl_q_posterior_estimator": "exact log q (MC)" if exact_q else "held-out Gaussian KDE (biased down)",
        "elbo_from_kl": float(log_px.mean()) - float(np.mean(kl_post)),
        "kl_aggregate_prior": kl_agg, "kl_aggregate_prior_kde": kl_agg_kde, "kl_aggregate_prior_knn": kl_agg_knn,
        "knn_k": int(s["knn_k"]),
        "kl_aggregate_prior_estimator": "exact log q (MC)" if exact_q else "held-out Gaussian KDE (biased down)",
        "kde_bandwidth_mean": float(np.mean(bws)), "kde_bandwidth_aggregate": bw_agg,
        "grid_limit": L, "grid_size": n, "n_samples": n_eval, "kde_samples": n_kde,
        "adv_prior_term": run["model"].get("adv_prior_term", DEFAULT_MODEL["adv_prior_term"]) if run["method"] != "vae"
        else None,
        "batch_size": run["train"]["batch_size"], "lr": run["train"]["lr"],
        "lr_adversary": run["train"]["lr_adversary"],
        "adv_hidden": run["model"].get("adv_hidden"), "adv_blocks": run["model"].get("adv_blocks"),
        "eval_seconds": time.perf_counter() - t0,
    }
    arrays = {"axis": axis.numpy(), "posterior": post.to(torch.float32).numpy(),
              "scatter": torch.stack(zs_scatter).numpy(), "log_px": log_px.numpy()}
    return summary, arrays


def write_eval(summary: dict, arrays: dict, out_json: str | os.PathLike, out_npz: str | os.PathLike) -> None:
    with io.atomic_path(out_npz) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    io.write_json(summary, out_json)


# ------------------------------------------------------------------------------------------ table and figure
COLUMNS = ["method", "iterations", "log_px_exact", "optimum", "gap_to_optimum", "recon_error", "recon_error_paper",
           "elbo", "elbo_is_bound", "elbo_estimator", "kl_q_posterior", "kl_q_posterior_estimator",
           "kl_q_posterior_kde", "elbo_from_kl", "kl_aggregate_prior", "kl_aggregate_prior_estimator",
           "kl_aggregate_prior_kde", "kl_aggregate_prior_knn", "knn_k", "log_px_x0", "log_px_x1", "log_px_x2",
           "log_px_x3", "mass_on_data", "mass_all_images", "quad_error_est", "prior_tail_mass", "grid_limit",
           "grid_size", "n_samples", "kde_samples", "kde_bandwidth_mean", "kde_bandwidth_aggregate", "adv_prior_term",
           "batch_size", "lr", "lr_adversary", "adv_hidden", "adv_blocks", "seed", "eval_seconds"]


def table(eval_jsons: list[str | os.PathLike]):
    import pandas as pd
    rows = [json.loads(Path(p).read_text()) for p in eval_jsons]
    order = {m: i for i, m in enumerate(METHODS)}
    rows.sort(key=lambda r: order[r["method"]])
    return pd.DataFrame(rows, columns=COLUMNS)


def markdown(df) -> str:
    lines = [
        "# Four-image toy experiment (paper section 5.1)", "",
        f"Optimum: mean over the 4 images of log p(x) = -log 4 = {OPTIMUM:.4f}. log p(x) is exact up to quadrature "
        "(midpoint rule; the Richardson error estimate is in the last column).", "",
        "| method | iterations | log p(x) (exact) | recon. error | ELBO | KL(q(z\\|x), p(z\\|x)) | KL(q(z), p(z)) "
        "| quadrature error |",
        "|---|---|---|---|---|---|---|---|"]
    for r in df.itertuples():
        elbo = f"{r.elbo:.4f}" + ("" if r.elbo_is_bound else " (≈, adversary KL)")
        mark = "" if r.method == "vae" else " (KDE)"
        lines.append(f"| {LABELS[r.method]} | {r.iterations} | {r.log_px_exact:.4f} | {r.recon_error:.4f} | {elbo} "
                     f"| {r.kl_q_posterior:.4f}{mark} | {r.kl_aggregate_prior:.4f}{mark} | {r.quad_error_est:.1e} |")
    vae = df[df.method == "vae"]
    lines += [
        "",
        "* log p(x): log \\int p(x|z) N(z; 0, I) dz per image by the midpoint rule on a "
        f"{int(df.grid_size.iloc[0])}^2 grid over [-{df.grid_limit.iloc[0]:g}, {df.grid_limit.iloc[0]:g}]^2, averaged "
        "over the 4 images (= the expected log-likelihood under the uniform data). Truncated prior mass: "
        f"{df.prior_tail_mass.iloc[0]:.1e}. The mean can never exceed -log 4.",
        "* Reconstruction error: E_x E_q(z|x)[-log p(x|z)] (nats), Monte Carlo.",
        "* ELBO: VAE: analytic KL and MC reconstruction (a lower bound). AVB / AVB + AC: the adversary's KL estimate "
        "T(x, z) (+ log r - log p with AC), so it is an estimate, not a bound.",
        "* KL(q(z|x), p(z|x)) = E_q[log q(z|x) - log p(z|x)], averaged over the 4 images, with the exact log p(z|x) "
        "(decoder and quadrature log p(x)) at the encoder samples. VAE: exact log q (Gaussian), so only MC noise. "
        "AVB, AVB + AC: q is implicit, so log q is a Gaussian KDE fitted on separate samples (bandwidth by held-out "
        "likelihood). Its expectation is KL(q||p) - KL(q||q_hat): biased **downwards** by KL(q||q_hat) >= 0.",
        "* KL(q(z), p(z)): aggregated posterior q(z) = 1/4 sum_i q(z|x_i) against the prior; same estimators (VAE: "
        "exact mixture density; AVB: held-out KDE, biased downwards). The paper's estimator is not stated (its code "
        "lists the ITE toolbox); `kl_aggregate_prior_knn` in summary.csv is ITE's kNN estimator against prior draws "
        "(see table1.md).",
    ]
    if len(vae):
        v = vae.iloc[0]
        lines.append(f"* KDE bias check on the VAE (exact vs KDE): KL(q(z|x), p(z|x)) {v.kl_q_posterior:.4f} vs "
                     f"{v.kl_q_posterior_kde:.4f}; KL(q(z), p(z)) {v.kl_aggregate_prior:.4f} vs "
                     f"{v.kl_aggregate_prior_kde:.4f}. Consistency: log p(x) - KL(q||p(z|x)) = "
                     f"{v.elbo_from_kl:.4f} vs ELBO {v.elbo:.4f}.")
    terms = ", ".join(sorted(set(df.adv_prior_term.dropna()))) or "n/a"
    for r in df.itertuples():
        adv = "" if r.method == "vae" else (f", adversary lr {r.lr_adversary:g}, {int(r.adv_hidden)} wide x "
                                             f"{int(r.adv_blocks)} residual blocks")
        nb = "100k, 512, 2e-5" + ("" if r.method == "vae" else ", 1e-4, 256 x 5")
        lines.append(f"* {LABELS[r.method]} settings: {r.iterations} iterations, batch {r.batch_size}, "
                     f"lr {r.lr:g}{adv} (notebook: {nb}).")
    if (df.method == "avb_ac").any():
        lines.append("* AVB + AC is an extra row (no toy notebook): noise-basis encoder z = z0(x) + sum_i a_i(x) "
                     "v_i(eps_i) (the official AC form, toy-sized); r(z|x) Gaussian with the batch moments of q, as "
                     "coded.")
    lines += [
        f"* Adversary prior term: {terms} (`sum_sq` = the notebook's `+ sum(z^2)`; `half_sum_sq` = the paper's "
        "`-log p(z)` = 0.5 |z|^2. Same optimum T* = log q - log p; with `sum_sq` the network must also cancel a "
        "surplus 0.5 |z|^2).",
        "* The paper's Table 1 beside these numbers, like with like: table1.md (reconstruction error per pixel; "
        "KL(q(z), p(z)) also by the kNN estimator).", ""]
    return "\n".join(lines)


def figure(npzs: list[str | os.PathLike], evals: list[dict], out_png: str | os.PathLike,
           out_pdf: str | os.PathLike, extent: float = 3.5) -> None:
    """One row per method: encoder samples coloured by image (the paper's figure) | exact posteriors p(z|x_i)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.patches import Patch

    sns.set_theme(style="white", context="paper")
    colours = np.array(sns.color_palette("colorblind", N_IMAGES))
    fig, axes = plt.subplots(len(npzs), 2, figsize=(6.4, 3.2 * len(npzs)), squeeze=False)
    for row, (path, ev) in zip(axes, zip(npzs, evals)):
        with np.load(path, allow_pickle=False) as d:
            axis, post, scatter = d["axis"], d["posterior"], d["scatter"]
        ax = row[0]
        for i in range(N_IMAGES):
            ax.scatter(scatter[i, :, 0], scatter[i, :, 1], s=3, color=colours[i], alpha=0.5, edgecolors="none",
                       rasterized=True)
        ax.set_title(f"{ev['label']}: z ~ q(z|x)\nlog p(x) = {ev['log_px_exact']:.3f}", fontsize=9)
        # exact posteriors blended subtractively: white background, each image's colour where its posterior lives
        dens = post / post.reshape(N_IMAGES, -1).max(1)[:, None, None]
        img = np.ones(post.shape[1:] + (3,))
        for i in range(N_IMAGES):
            img -= dens[i][..., None] * (1.0 - colours[i])[None, None]
        img = np.clip(img, 0.0, 1.0)
        lim = float(axis[-1] + (axis[1] - axis[0]) / 2)
        row[1].imshow(img, origin="lower", extent=(-lim, lim, -lim, lim), interpolation="bilinear")
        row[1].set_title(f"{ev['label']}: exact p(z|x) of the decoder", fontsize=9)
        for a in row:
            a.set_xlim(-extent, extent)
            a.set_ylim(-extent, extent)
            a.set_aspect("equal")
            a.set_xticks([-3, 0, 3])
            a.set_yticks([-3, 0, 3])
    handles = [Patch(color=colours[i], label=f"image {i} (pixel {i} on)") for i in range(N_IMAGES)]
    fig.legend(handles=handles, loc="lower center", ncol=N_IMAGES, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    with io.atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    with io.atomic_path(out_pdf) as tmp:
        fig.savefig(tmp, format="pdf")
    plt.close(fig)


def report(eval_jsons: list[str], npzs: list[str], out_csv: str, out_md: str, out_png: str, out_pdf: str,
           out_table1: tuple[str, str, str] | None = None):
    """summary.csv / .md and the latent-space figure; with ``out_table1`` (CSV, MD, TEX), the Table 1 replica
    (``avb.table1``)."""
    df = table(eval_jsons)
    order = {m: i for i, m in enumerate(METHODS)}
    pairs = sorted(zip(eval_jsons, npzs), key=lambda p: order[json.loads(Path(p[0]).read_text())["method"]])
    io.write_csv(df, out_csv)
    md = markdown(df)
    io.write_text(md, out_md)
    figure([p[1] for p in pairs], [json.loads(Path(p[0]).read_text()) for p in pairs], out_png, out_pdf)
    if out_table1 is not None:
        from . import table1
        md += "\n" + table1.write(df, *out_table1)
    return md


# ---------------------------------------------------------------------------------------------------- CLI
def add_cli_arguments(p: argparse.ArgumentParser) -> None:
    """``avb toy train | evaluate | report``."""
    sub = p.add_subparsers(dest="toy_cmd", required=True)
    t = sub.add_parser("train", help="train one toy run from its run config (JSON)")
    t.add_argument("run_config")
    t.add_argument("--out", required=True, help="run folder: model.pt, checkpoint.pt, train_metrics.csv")
    t.add_argument("--threads", type=int)
    e = sub.add_parser("evaluate", help="exact log p(x) by quadrature, posteriors, ELBO and KL estimates")
    e.add_argument("model")
    e.add_argument("--config", help="JSON file of toy eval settings (the toy.eval section of a config, as "
                                    "eval_config.json); unset keys take the schema defaults")
    e.add_argument("--out-json", required=True)
    e.add_argument("--out-npz", required=True, help="grid posteriors and encoder samples for the figure")
    e.add_argument("--threads", type=int)
    r = sub.add_parser("report", help="summary CSV, Markdown and the latent-space figure (PNG + PDF)")
    r.add_argument("--evals", nargs="+", required=True)
    r.add_argument("--npz", nargs="+", required=True)
    r.add_argument("--out-csv", required=True)
    r.add_argument("--out-md", required=True)
    r.add_argument("--out-png", required=True)
    r.add_argument("--out-pdf", required=True)
    r.add_argument("--out-table1", nargs=3, metavar=("CSV", "MD", "TEX"),
                   help="the Table 1 replica: ours beside the paper's printed values (avb/published.py)")


def run_cli(a: argparse.Namespace) -> str:
    if a.toy_cmd == "train":
        return str(train(json.loads(Path(a.run_config).read_text()), a.out))
    if a.toy_cmd == "evaluate":
        from .config import read_settings, validate
        given = read_settings(a.config) if a.config else {}
        settings = validate({"preset": "cli", "toy": {"eval": given}}, f"toy eval settings {a.config or ''}")
        summary, arrays = evaluate(a.model, settings["toy"]["eval"])
        write_eval(summary, arrays, a.out_json, a.out_npz)
        return json.dumps(summary, indent=2)
    if len(a.evals) != len(a.npz):
        raise ValueError("--evals and --npz need one file per method each")
    return report(a.evals, a.npz, a.out_csv, a.out_md, a.out_png, a.out_pdf, a.out_table1)
