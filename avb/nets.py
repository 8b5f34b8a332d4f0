"""Networks of the official code's fully connected family (``full0``), in PyTorch.

Every encoder centres its input, x -> 2x - 1. Linear layers use Xavier-uniform weights and zero biases (slim's
defaults); heads the official code initialises with std 1e-5 use a truncated normal of that std. The adversary is
the official inner-product form ``T(x, z) = <theta(x), s(z)> + T_x(x) + T_z(z) + 0.5 |z|^2`` (``conv0.adversary``,
which is fully connected); its widths are configurable because the official 3x1024 / 8192 sizes are slow on a CPU.
As in the official code, the adversary sees the raw (uncentred) x.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

X_DIM = 784


def linear(n_in: int, n_out: int, init_std: float | None = None) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    if init_std is None:
        nn.init.xavier_uniform_(layer.weight)
    else:
        nn.init.trunc_normal_(layer.weight, std=init_std, a=-2 * init_std, b=2 * init_std)
    nn.init.zeros_(layer.bias)
    return layer


def mlp(sizes: list[int], act: type[nn.Module], out_act: nn.Module | None = None,
        out_init_std: float | None = None) -> nn.Sequential:
    """Fully connected stack; ``act`` after every hidden layer, ``out_act`` after the last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        layers.append(linear(a, b, out_init_std if last else None))
        if not last:
            layers.append(act())
        elif out_act is not None:
            layers.append(out_act)
    return nn.Sequential(*layers)


def centre(x: torch.Tensor) -> torch.Tensor:
    return 2.0 * x - 1.0


class Decoder(nn.Module):
    """full0 decoder: z -> 300 softplus -> 300 softplus -> 784 Bernoulli logits."""

    def __init__(self, z_dim: int, hidden: int = 300):
        super().__init__()
        self.net = mlp([z_dim, hidden, hidden, X_DIM], nn.Softplus)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) per row, summed over pixels."""
        return -F.binary_cross_entropy_with_logits(self(z), x, reduction="none").sum(-1)


class GaussianEncoder(nn.Module):
    """full0 VAE encoder: x -> 300 softplus -> 300 softplus -> (mean, log std)."""

    def __init__(self, z_dim: int, hidden: int = 300):
        super().__init__()
        self.body = mlp([X_DIM, hidden, hidden], nn.Softplus, out_act=nn.Softplus())
        self.mean = linear(hidden, z_dim)
        self.log_std = linear(hidden, z_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(centre(x))
        return self.mean(h), self.log_std(h)


class ImplicitEncoder(nn.Module):
    """full0 AVB encoder: the noise enters before every layer, h <- h + Linear(eps), then z = Linear(h)."""

    def __init__(self, z_dim: int, eps_dim: int, hidden: int = 300):
        super().__init__()
        self.eps_dim = eps_dim
        self.add = nn.ModuleList([linear(eps_dim, n) for n in (X_DIM, hidden, hidden)])
        self.fc = nn.ModuleList([linear(X_DIM, hidden), linear(hidden, hidden)])
        self.out = linear(hidden, z_dim, init_std=1e-5)

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        if eps is None:
            eps = torch.randn(x.shape[0], self.eps_dim, device=x.device)
        h = centre(x)
        for add, fc in zip(self.add[:-1], self.fc):
            h = F.softplus(fc(h + add(eps)))
        return self.out(h + self.add[-1](eps))


class ParallelMLPs(nn.Module):
    """m independent MLPs with the same layer sizes, evaluated together with batched matmuls.

    Input [m, n, in] -> output [m, n, out]; MLP i only sees slice i. Each weight slice is Xavier-initialised on its
    own, exactly as m separate ``linear`` layers would be.
    """

    def __init__(self, m: int, sizes: list[int], act: type[nn.Module]):
        super().__init__()
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for a, b in zip(sizes[:-1], sizes[1:]):
            w = torch.empty(m, a, b)
            for i in range(m):
                nn.init.xavier_uniform_(w[i].T)  # same fan-in/fan-out as nn.Linear(a, b).weight
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(m, 1, b)))
        self.act = act()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)
            if i < last:
                h = self.act(h)
        return h


class NoiseBasisEncoder(nn.Module):
    """full0_ac encoder: z = z0(x) + sum_i a_i(x) * v_i(eps_i), a_i = ELU(Linear_i(h) - 5) + 1.

    Returns z and the Monte-Carlo moments E[z|x] = z0 + sum_i a_i E[v_i], Var[z|x] = sum_i a_i^2 Var[v_i]. As coded
    (``tf.nn.moments`` over the minibatch), E[v_i] and Var[v_i] are the moments of the batch's own v_i(eps_i), so
    they come from as many draws as there are images: a batch of one gives Var = 0. ``moment_eps`` [m, K, eps_dim]
    (see ``moment_noise``) estimates them from those K draws instead, whatever the number of images; the v_i are
    functions of the noise alone, so this is the same estimator as the official one at a batch of K.
    """

    def __init__(self, z_dim: int, eps_dim: int, n_basis: int, hidden: int = 300, basis_hidden: int = 128):
        super().__init__()
        self.eps_dim, self.n_basis = eps_dim, n_basis
        self.body = mlp([X_DIM, hidden, hidden], nn.Softplus, out_act=nn.Softplus())
        self.z0 = linear(hidden, z_dim, init_std=1e-5)
        self.a = linear(hidden, n_basis * z_dim)  # the m heads Linear_i stacked into one layer ...
        for w in self.a.weight.data.view(n_basis, z_dim, hidden):
            nn.init.xavier_uniform_(w)  # ... each initialised as its own Linear(hidden, z_dim), as coded
        self.v = ParallelMLPs(n_basis, [eps_dim, basis_hidden, basis_hidden, basis_hidden, z_dim], nn.ELU)

    def moment_noise(self, n_draws: int, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> torch.Tensor:
        """``n_draws`` noise draws [m, n_draws, eps_dim] for the moments, from ``generator`` (drawn on the CPU)."""
        if n_draws < 2:
            raise ValueError(f"the AC moments need at least 2 noise draws, got {n_draws}")
        return torch.randn(self.n_basis, n_draws, self.eps_dim, generator=generator).to(device)

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None, moment_eps: torch.Tensor | None = None):
        n = x.shape[0]
        if eps is None:
            eps = torch.randn(self.n_basis, n, self.eps_dim, device=x.device)
        h = self.body(centre(x))
        z0 = self.z0(h)
        a = F.elu(self.a(h).view(n, self.n_basis, -1) - 5.0) + 1.0          # [n, m, z]
        v = self.v(eps).transpose(0, 1)                                      # [n, m, z]
        z = z0 + (a * v).sum(1)
        if moment_eps is not None:
            v = self.v(moment_eps).transpose(0, 1)                           # [K, m, z]: K draws, not the batch's
        mean_v, var_v = v.mean(0), v.var(0, unbiased=False)                  # tf.nn.moments over the batch
        return z, z0 + (a * mean_v).sum(1), (a * a * var_v).sum(1)


class Adversary(nn.Module):
    """T(x, z) = <theta(x), s(z)> + T_x(x) + T_z(z) + 0.5 |z|^2 (official conv0 adversary, fully connected)."""

    def __init__(self, z_dim: int, hidden: int = 1024, embed: int = 8192, layers: int = 3):
        super().__init__()
        lrelu = lambda: nn.LeakyReLU(0.2)  # noqa: E731
        h = [hidden] * layers
        self.theta = mlp([X_DIM, *h, embed], lrelu, out_act=nn.ELU(), out_init_std=1e-5)
        self.s = mlp([z_dim, *h, embed], lrelu)
        self.t_x = mlp([X_DIM, *h, 1], lrelu, out_init_std=1e-5)
        self.t_z = mlp([z_dim, *h, 1], lrelu, out_init_std=1e-5)

    def forward(self, x: torch.Tensor, *zs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """T(x, z) for each z batch given; the x branches run once and are shared."""
        theta, t_x = self.theta(x), self.t_x(x).squeeze(-1)
        out = tuple((theta * self.s(z)).sum(-1) + t_x + self.t_z(z).squeeze(-1) + 0.5 * (z * z).sum(-1) for z in zs)
        return out[0] if len(out) == 1 else out
