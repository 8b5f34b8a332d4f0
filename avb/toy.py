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
* Linear layers: Xavier-uniform weights, zero biases (slim's defaults) via ``avb.nets.init_``.
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

The methods are ``avb.objectives.VAE`` / ``AVB`` over these networks (``avb.experiments.build``: the shared blocks
of ``avb.nets``), with ``loss_scale = 1`` (the notebooks use plain means of the per-example losses), trained by
``avb.train.train``.

**Exact evaluation.** Because z is 2-D, log p(x) = log \\int p(x|z) N(z; 0, I) dz is computed by the tensor-product
midpoint rule on the box [-L, L]^2 with n x n cells of side h = 2L/n (``avb.quadrature``, which states the rule's
error bound for g * N(.; 0, I) with 0 <= g <= 1, here g = p(x|z): a box term in h^2 and the truncated prior mass,
3.9e-9 for L = 6; the tests check the rule against it). For a trained decoder the second derivatives are not
available, so ``avb.toy_eval.evaluate`` reports a Richardson estimate |M_h - M_{2h}| / 3 (exact for an O(h^2) error, an
overestimate when the rule converges faster) beside the result, and the total p(x) over all 16 binary images (1 up
to the truncated mass). The bounds are on p(x); the error of log p(x) is the error of p(x) divided by p(x).

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

import math

import torch
from torch import nn
import torch.nn.functional as F

from .jobs import toy_run_config
from .methods import LABELS  # noqa: F401 (re-exported: the toy report labels its rows by it)
from .objectives import log_normal
from .quadrature import log_integral, midpoint_grid

X_DIM = 4
Z_DIM = 2
N_IMAGES = 4
OPTIMUM = -math.log(4.0)  # max over models of the mean over the 4 images of log p(x)
METHODS = ("vae", "avb", "avb_ac")
PRIOR_TERMS = {"sum_sq": 1.0, "half_sum_sq": 0.5}

# Defaults (the notebooks') are those of workflow/schemas/config.schema.yaml, section toy: avb.config.defaults("toy.model").


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
# The notebooks' networks (module docstring) are the shared blocks of ``avb.nets``, put together by
# ``avb.experiments.build``; training is ``avb.train.train`` and a trained model is ``avb.experiments.load_model``.

# The toy.model keys each method's networks use; a run config holds only these, so a changed adversary setting
# does not retrain the VAE. workflow/rules/toy.smk repeats this (it must not import torch); a test compares them.
run_config = toy_run_config  # torch-free, in avb.jobs, so that the Snakefile can use it without torch


# -------------------------------------------------------------------------------------------- exact answers
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

