"""The building blocks of every network: one init helper, MLPs, and encoders, decoders and adversaries whose bodies
are passed in (an MLP, a conv stack: ``avb.convnets``). ``avb.experiments`` assembles them with each experiment's
sizes.

Linear layers use Xavier-uniform weights and zero biases (slim's defaults); heads the official code initialises with
std 1e-5 use a truncated normal of that std (``init_``). Image encoders centre their input, x -> 2x - 1 (the toy's
do not: ``centre_input``). The inner-product adversary is the official ``T(x, z) = <theta(x), s(z)> + T_x(x) +
T_z(z) + 0.5 |z|^2`` (``conv0.adversary``, which is fully connected; it sees the raw x); the residual adversary is
the notebooks' (toy, eight schools), its activations and prior term given as arguments.

State-dict names: checkpoints written before the blocks were shared load unchanged (``legacy_names``): the full0
and conv AVB encoders' layers now sit under ``net.``, the eight-schools adversary's blocks are ``res0`` / ``res1``
(were ``r0`` / ``r1``).
"""
from __future__ import annotations

import re
from typing import Callable, Union

import torch
from torch import nn
import torch.nn.functional as F

X_DIM = 784
Init = Union[str, float]  # "xavier", "zero", "zero_after_xavier" or the std of a truncated normal
Act = Callable[[], nn.Module]


def init_(layer: nn.Module, init: Init = "xavier") -> nn.Module:
    """Initialise ``layer`` (weights as ``init``, bias zero) in place and return it.

    ``"xavier"``: Xavier-uniform (slim's default); a float: truncated normal of that std, cut at 2 std (the official
    ``truncated_normal(stddev=1e-5)`` heads); ``"zero"``: zeros; ``"zero_after_xavier"``: zeros after a Xavier draw
    (the toy adversary's zero-initialised layers, whose extra draw keeps the random stream of the runs made so far).
    """
    w = layer.weight
    if init in ("xavier", "zero_after_xavier"):
        nn.init.xavier_uniform_(w)
    elif isinstance(init, float):
        nn.init.trunc_normal_(w, std=init, a=-2 * init, b=2 * init)
    elif init != "zero":
        raise ValueError(f"unknown init {init!r}; expected xavier, zero, zero_after_xavier or a std")
    if init in ("zero", "zero_after_xavier"):
        nn.init.zeros_(w)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def linear(n_in: int, n_out: int, init: Init = "xavier") -> nn.Linear:
    return init_(nn.Linear(n_in, n_out), init)


def stacked_linear(n_in: int, n_out: int, m: int) -> nn.Linear:
    """m heads Linear(n_in, n_out) as one layer; each block is Xavier-initialised on its own, as m slim layers."""
    layer = linear(n_in, m * n_out)
    for block in layer.weight.data.split(n_out):
        nn.init.xavier_uniform_(block)
    return layer


def mlp(sizes: list[int], act: Act, out_act: nn.Module | None = None, out_init: Init = "xavier") -> nn.Sequential:
    """Fully connected stack; ``act()`` after every hidden layer, ``out_act`` after the last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        layers.append(linear(a, b, out_init if last else "xavier"))
        if not last:
            layers.append(act())
        elif out_act is not None:
            layers.append(out_act)
    return nn.Sequential(*layers)


def centre(x: torch.Tensor) -> torch.Tensor:
    return 2.0 * x - 1.0


def legacy_names(module: nn.Module, renames: list[tuple[str, str]]) -> None:
    """Load state dicts written under earlier names: each regex ``(old, new)`` rewrites a key below ``module``."""

    def hook(_module, state_dict, prefix, *_args) -> None:
        for key in [k for k in state_dict if k.startswith(prefix)]:
            rest = key[len(prefix):]
            for old, new in renames:
                rest = re.sub(old, new, rest)
            if prefix + rest != key:
                state_dict[prefix + rest] = state_dict.pop(key)

    module.register_load_state_dict_pre_hook(hook)


def one_or_tuple(out: tuple[torch.Tensor, ...]) -> torch.Tensor | tuple[torch.Tensor, ...]:
    return out[0] if len(out) == 1 else out


class ParallelMLPs(nn.Module):
    """m independent MLPs with the same layer sizes, evaluated together with batched matmuls.

    Input [m, n, in] -> output [m, n, out]; MLP i only sees slice i. Each weight slice is Xavier-initialised on its
    own, exactly as m separate ``linear`` layers would be.
    """

    def __init__(self, m: int, sizes: list[int], act: Act):
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


# ------------------------------------------------------------------------------------------- decoder, encoders
class Decoder(nn.Module):
    """z -> Bernoulli logits by the network ``net``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) per row, summed over pixels."""
        return -F.binary_cross_entropy_with_logits(self(z), x, reduction="none").sum(-1)

    def log_likelihood_and_draw(self, x: torch.Tensor, z: torch.Tensor, u: torch.Tensor
                                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p(x|z), one draw x~ ~ p(x|z)) from one pass: x~ = [u <= sigmoid(logits)] for uniforms u, as the
        official ``get_decoder_samples`` (Bernoulli); the draw carries no gradient."""
        logits = self(z)
        draw = (u <= torch.sigmoid(logits).detach()).to(x.dtype)
        return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1), draw


class GaussianEncoder(nn.Module):
    """VAE encoder: h = body(x) of width ``width`` -> (mean, log std) linear heads."""

    def __init__(self, body: nn.Module, width: int, z_dim: int, centre_input: bool = True):
        super().__init__()
        self.body, self.centre_input = body, centre_input
        self.mean = linear(width, z_dim)
        self.log_std = linear(width, z_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(centre(x) if self.centre_input else x)
        return self.mean(h), self.log_std(h)


class ImplicitEncoder(nn.Module):
    """AVB's implicit q(z|x): z = net(x, eps), eps ~ N(0, I_eps_dim) drawn here, one per row of x.

    ``noise`` says how ``net`` sees it: ``"inject"``: ``net(x, eps)`` (the full0 and conv encoders add Linear(eps)
    at every layer: ``NoiseInjectedMLP``, ``avb.convnets.ConvNoiseNet``); ``"concat"``: ``net(concat(x, eps))`` (the
    toy notebook); ``"only"``: ``net(eps)``, x only sets the number of draws (eight schools: a fixed target).
    """

    NOISE = ("inject", "concat", "only")

    def __init__(self, net: nn.Module, eps_dim: int, noise: str = "inject", centre_input: bool = True):
        super().__init__()
        if noise not in self.NOISE:
            raise ValueError(f"unknown noise input {noise!r}; expected one of {', '.join(self.NOISE)}")
        self.net, self.eps_dim, self.noise, self.centre_input = net, eps_dim, noise, centre_input
        legacy_names(self, [(r"^(?!net\.)", "net.")])  # full0 / conv encoders before the blocks were shared

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        if eps is None:
            eps = torch.randn(x.shape[0], self.eps_dim, device=x.device)
        if self.noise == "only":
            return self.net(eps)
        h = centre(x) if self.centre_input else x
        return self.net(h, eps) if self.noise == "inject" else self.net(torch.cat([h, eps], -1))


class NoiseInjectedMLP(nn.Module):
    """full0 AVB network: the noise enters before every layer, h <- h + Linear(eps), then z = Linear(h)."""

    def __init__(self, sizes: list[int], eps_dim: int, z_dim: int, act: Act = nn.Softplus):
        super().__init__()
        self.add = nn.ModuleList([linear(eps_dim, n) for n in sizes])
        self.fc = nn.ModuleList([linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])])
        self.out = linear(sizes[-1], z_dim, init=1e-5)
        self.act = act()

    def forward(self, h: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        for add, fc in zip(self.add[:-1], self.fc):
            h = self.act(fc(h + add(eps)))
        return self.out(h + self.add[-1](eps))


class NoiseBasisEncoder(nn.Module):
    """The official ``*_ac`` encoder: z = z0(h) + sum_i a_i(h) v_i(eps_i), a_i = ELU(Linear_i(h) - 5) + 1, h = body(x).

    The v_i are ``basis_layers`` x ``basis_hidden`` ELU MLPs of their own noise eps_i (``ParallelMLPs``). Returns z
    and the Monte-Carlo moments E[z|x] = z0 + sum_i a_i E[v_i], Var[z|x] = sum_i a_i^2 Var[v_i]. As coded
    (``tf.nn.moments`` over the minibatch), E[v_i] and Var[v_i] are the moments of the batch's own v_i(eps_i), so
    they come from as many draws as there are images: a batch of one gives Var = 0. ``moment_eps`` [m, K, eps_dim]
    (see ``moment_noise``) estimates them from those K draws instead, whatever the number of images; the v_i are
    functions of the noise alone, so this is the same estimator as the official one at a batch of K.
    """

    def __init__(self, body: nn.Module, width: int, z_dim: int, eps_dim: int, n_basis: int, basis_hidden: int = 128,
                 basis_layers: int = 3, centre_input: bool = True):
        super().__init__()
        self.eps_dim, self.n_basis, self.centre_input = eps_dim, n_basis, centre_input
        self.body = body
        self.z0 = linear(width, z_dim, init=1e-5)
        self.a = stacked_linear(width, z_dim, n_basis)
        self.v = ParallelMLPs(n_basis, [eps_dim, *[basis_hidden] * basis_layers, z_dim], nn.ELU)

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
        h = self.body(centre(x) if self.centre_input else x)
        z0 = self.z0(h)
        a = F.elu(self.a(h).view(n, self.n_basis, -1) - 5.0) + 1.0          # [n, m, z]
        v = self.v(eps).transpose(0, 1)                                      # [n, m, z]
        z = z0 + (a * v).sum(1)
        if moment_eps is not None:
            v = self.v(moment_eps).transpose(0, 1)                           # [K, m, z]: K draws, not the batch's
        mean_v, var_v = v.mean(0), v.var(0, unbiased=False)                  # tf.nn.moments over the batch
        return z, z0 + (a * mean_v).sum(1), (a * a * var_v).sum(1)


# --------------------------------------------------------------------------------------------------- adversaries
class InnerProductAdversary(nn.Module):
    """T(x, z) = <theta(x), s(z)> + T_x(x) + T_z(z) + 0.5 |z|^2 (official conv0 adversary, fully connected)."""

    def __init__(self, z_dim: int, hidden: int = 1024, embed: int = 8192, layers: int = 3, x_dim: int = X_DIM):
        super().__init__()
        lrelu = lambda: nn.LeakyReLU(0.2)  # noqa: E731
        h = [hidden] * layers
        self.theta = mlp([x_dim, *h, embed], lrelu, out_act=nn.ELU(), out_init=1e-5)
        self.s = mlp([z_dim, *h, embed], lrelu)
        self.t_x = mlp([x_dim, *h, 1], lrelu, out_init=1e-5)
        self.t_z = mlp([z_dim, *h, 1], lrelu, out_init=1e-5)

    def forward(self, x: torch.Tensor, *zs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """T(x, z) for each z batch given; the x branches run once and are shared."""
        theta, t_x = self.theta(x), self.t_x(x).squeeze(-1)
        return one_or_tuple(tuple((theta * self.s(z)).sum(-1) + t_x + self.t_z(z).squeeze(-1)
                                  + 0.5 * (z * z).sum(-1) for z in zs))


class ResidualAdversary(nn.Module):
    """The notebooks' adversary: T(x, z) = Linear_1(blocks(act(Linear(concat(x, z))))) + prior term.

    A block is ``h <- act(h + B(block_act(A(h))))`` with B initialised by ``block_init`` (zero weights); the output
    layer by ``out_init``. The prior term is ``prior_scale |z|^2 + prior_const``: the toy notebook's ``+ sum(z^2)``
    (scale 1) or the log-prior trick's 0.5 |z|^2; eight schools' -log N(z; 0, I) (scale 0.5, const d/2 log 2 pi).
    With ``x_dim = 0`` T depends on z alone and x is not read (a fixed target). Several z batches are evaluated in
    one pass over the stacked batches.
    """

    def __init__(self, x_dim: int, z_dim: int, hidden: int, blocks: int, act: Act, block_act: Act,
                 prior_scale: float, prior_const: float = 0.0, block_init: Init = "zero", out_init: Init = "xavier"):
        super().__init__()
        self.x_dim, self.prior_scale, self.prior_const = x_dim, prior_scale, prior_const
        self.inp = linear(x_dim + z_dim, hidden)
        self.res0 = nn.ModuleList([linear(hidden, hidden) for _ in range(blocks)])
        self.res1 = nn.ModuleList([linear(hidden, hidden, block_init) for _ in range(blocks)])
        self.out = linear(hidden, 1, out_init)
        self.act, self.block_act = act(), block_act()
        legacy_names(self, [(r"^r([01])\.", r"res\1.")])  # the eight-schools adversary's earlier names

    def t(self, x: torch.Tensor | None, z: torch.Tensor) -> torch.Tensor:
        h = self.act(self.inp(torch.cat([x, z], -1) if self.x_dim else z))
        for r0, r1 in zip(self.res0, self.res1):
            h = self.act(h + r1(self.block_act(r0(h))))
        t = self.out(h).squeeze(-1) + self.prior_scale * (z * z).sum(-1)
        return t + self.prior_const if self.prior_const else t

    def forward(self, x: torch.Tensor | None, *zs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """T(x, z) for each z batch given (each as long as x, unless ``x_dim = 0``)."""
        z = torch.cat(zs) if len(zs) > 1 else zs[0]
        xs = x.repeat(len(zs), 1) if self.x_dim else None
        return one_or_tuple(tuple(self.t(xs, z).split([len(u) for u in zs])))
