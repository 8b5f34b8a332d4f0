"""The official convolutional networks ``conv0`` and ``conv1`` for 28x28x1 MNIST (gf_dim = df_dim = 64), in PyTorch.

Sources (official repo, HEAD): ``avb/decoders/conv{0,1}.py``, ``avb/avb/models/conv{0,1,0_ac,1_ac}.py``,
``avb/vae/models/conv{0,1}.py`` and ``avb/ops.py``. They are the bodies of the shared blocks of ``avb.nets``
(``Decoder``, ``GaussianEncoder``, ``ImplicitEncoder``, ``NoiseBasisEncoder``), which ``avb.experiments`` puts
together: x arrives flat [B, 784] in {0, 1} (centred by the encoder) and is reshaped to [B, 1, 28, 28] inside;
decoder networks return flat logits [B, 784].

As coded (each checked against the files above):

* every 5x5 convolution and transposed convolution pads as TF's ``'SAME'``, including its asymmetry: a stride-2
  layer on an even size pads one pixel more at the bottom/right than at the top/left (``Conv2dSame``,
  ``ConvTranspose2dSame``). PyTorch's symmetric ``padding=2`` gives the same sizes but a grid shifted by one pixel;
* weights are Xavier-uniform (slim's default, also ``ops.conv2d_transpose``'s), biases zero, and the heads the
  official code initialises with ``truncated_normal(stddev=1e-5)`` use that; a convolution followed directly by batch
  norm has no bias (slim drops it), one followed by ``add_linear`` + batch norm keeps it;
* batch norm is slim's (``scale=True, center=True``, decay 0.999, epsilon 1e-3): ``BatchNorm2d(momentum=1e-3,
  eps=1e-3)``; it uses batch statistics in ``train()`` mode and the moving averages in ``eval()`` mode, as the
  official ``is_training`` flag does for training and testing;
* the conv0 decoder's hidden transposed convolutions use ReLU by default: its ``arg_scope(activation_fn=elu)``
  targets ``slim.conv2d_transpose`` but the layers are ``ops.conv2d_transpose``, whose default is ReLU.
  ``decoder_act="elu"`` gives the evidently intended ELU;
* ``add_linear(c, net)`` is ``net + reshape(Linear(c))`` and is where the conv0 encoder's noise and the conv1
  adversary's z enter; in the conv1 encoder it comes after the convolution's ELU, with no activation of its own;
* the conv1 adversary centres x (the conv0 adversary, ``avb.nets.InnerProductAdversary``, does not) and, like the
  official ``AVB`` class, runs once per z batch, so its batch-norm statistics are those of that batch.

Departures from the official code:

* tensors are NCHW, not NHWC, so the ``add_linear`` outputs and the flattened feature maps are laid out in another
  order. This only permutes the units of a Xavier-initialised linear layer, so the model and its initial
  distribution are the same;
* the m noise-basis heads ``a_i`` are one stacked linear layer whose m blocks are Xavier-initialised one by one
  (``avb.nets.stacked_linear``), which matches m separate slim layers; the m networks ``v_i`` are
  ``avb.nets.ParallelMLPs``;
* MNIST only: the spatial sizes (strides 1, 1, 2, 2 for conv0, from the official ``n_down`` rule at
  output_size 28) are fixed rather than derived from an ``output_size``, and there is one Bernoulli output head
  (``num_out = 1``).
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from .nets import Decoder, centre, init_, linear, one_or_tuple

SIDE = 28                    # MNIST output_size; c_dim = 1
DF = GF = 64                 # df_dim, gf_dim
KERNEL = 5
BN_EPS, BN_MOMENTUM = 1e-3, 1e-3   # slim.batch_norm: epsilon 0.001, decay 0.999
CONV0 = ((DF, 2 * DF, 4 * DF, 8 * DF), (1, 1, 2, 2))   # (channels, strides) of the conv0 encoders / conv1 adversary
CONV1 = ((16, 32, 32), (2, 2, 2))                       # (channels, strides) of the conv1 encoders
CONV1_FC = 800
DECODER_ACTS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "elu": nn.ELU}


def same_pads(n_in: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TF 'SAME' for a KERNEL-wide convolution over n_in pixels."""
    n_out = math.ceil(n_in / stride)
    total = max((n_out - 1) * stride + KERNEL - n_in, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """5x5 convolution with TF 'SAME' padding (asymmetric when the total is odd), Xavier weights, zero bias."""

    def __init__(self, c_in: int, c_out: int, stride: int, bias: bool = True):
        super().__init__(c_in, c_out, KERNEL, stride, bias=bias)
        init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (top, bottom), (left, right) = same_pads(x.shape[-2], self.stride[0]), same_pads(x.shape[-1], self.stride[1])
        return super().forward(F.pad(x, (left, right, top, bottom)))


class ConvTranspose2dSame(nn.ConvTranspose2d):
    """``tf.nn.conv2d_transpose`` with 'SAME' padding to an out_size x out_size map: the adjoint of ``Conv2dSame``."""

    def __init__(self, c_in: int, c_out: int, out_size: int, stride: int):
        top, _ = same_pads(out_size, stride)
        super().__init__(c_in, c_out, KERNEL, stride, padding=top)  # drops `top` rows/cols in front ...
        self.out_size = out_size
        init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[..., :self.out_size, :self.out_size]  # ... and the surplus at the back


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class ConvLayer(nn.Module):
    """conv5x5 'SAME' [+ Linear(c)] [-> batch norm] -> act, or with ``cond_after_act``: act(conv) + Linear(c)."""

    def __init__(self, c_in: int, c_out: int, stride: int, size_out: int, act: type[nn.Module], cond_dim: int = 0,
                 bn: bool = False, cond_after_act: bool = False):
        super().__init__()
        self.conv = Conv2dSame(c_in, c_out, stride, bias=not (bn and cond_dim == 0))
        self.cond = linear(cond_dim, c_out * size_out * size_out) if cond_dim else None
        self.bn = batch_norm(c_out) if bn else None
        self.act = act()
        self.cond_after_act = cond_after_act

    def forward(self, h: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv(h)
        if self.cond is not None and not self.cond_after_act:
            h = h + self.cond(c).view_as(h)
        if self.bn is not None:
            h = self.bn(h)
        h = self.act(h)
        if self.cond is not None and self.cond_after_act:
            h = h + self.cond(c).view_as(h)
        return h


class ConvStack(nn.Module):
    """Convolutions on a flat, already centred image [B, 784] -> flattened features [B, out_dim].

    ``cond_dim`` > 0 adds ``add_linear(c, .)`` at every layer; batch norm on the first ``n_bn`` layers.
    """

    def __init__(self, channels: tuple[int, ...], strides: tuple[int, ...], act: type[nn.Module], cond_dim: int = 0,
                 n_bn: int = 0, cond_after_act: bool = False):
        super().__init__()
        layers, c_in, size = [], 1, SIDE
        for i, (c_out, stride) in enumerate(zip(channels, strides)):
            size = math.ceil(size / stride)
            layers.append(ConvLayer(c_in, c_out, stride, size, act, cond_dim, i < n_bn, cond_after_act))
            c_in = c_out
        self.layers = nn.ModuleList(layers)
        self.out_dim = c_in * size * size

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h = x.view(-1, 1, SIDE, SIDE)
        for layer in self.layers:
            h = layer(h, c)
        return h.flatten(1)


def trunk(arch: str, act: type[nn.Module], conv0_bn: bool = True) -> tuple[nn.Module, int]:
    """The noise-free (centred) x -> h body of the VAE, AC and IAF encoders and its width.

    conv0: 4 convs 64/128/256/512 (s 1, 1, 2, 2), batch norm on the first three (none with ``conv0_bn = False``: the
    official IAF conv0 encoder, whose ``arg_scope`` sets ``normalizer_fn=None``); conv1: 3 convs 16/32/32 (s2) -> FC800.
    """
    if arch == "conv0":
        stack = ConvStack(*CONV0, act, n_bn=3 if conv0_bn else 0)
        return stack, stack.out_dim
    if arch == "conv1":
        stack = ConvStack(*CONV1, act)
        return nn.Sequential(stack, linear(stack.out_dim, CONV1_FC), act()), CONV1_FC
    raise ValueError(f"unknown conv arch {arch!r}; expected conv0 or conv1")


def conv0_decoder_net(z_dim: int, act: str = "relu") -> nn.Sequential:
    """Official conv0 decoder: FC 512*7*7 ELU -> deconv5x5 256 (s2) -> 128 (s2) -> 64 (s1) -> 1 logits (s1); ``act``
    is the hidden deconvolutions' activation (relu as coded, or elu)."""
    if act not in DECODER_ACTS:
        raise ValueError(f"decoder_act={act!r}; expected one of {', '.join(DECODER_ACTS)}")
    a = DECODER_ACTS[act]
    return nn.Sequential(
        linear(z_dim, 8 * GF * 7 * 7), nn.ELU(), nn.Unflatten(1, (8 * GF, 7, 7)),
        ConvTranspose2dSame(8 * GF, 4 * GF, 14, 2), a(),
        ConvTranspose2dSame(4 * GF, 2 * GF, 28, 2), a(),
        ConvTranspose2dSame(2 * GF, GF, 28, 1), a(),
        ConvTranspose2dSame(GF, 1, SIDE, 1), nn.Flatten())


def conv1_decoder_net(z_dim: int) -> nn.Sequential:
    """Official conv1 decoder: FC300 -> FC 4*4*32 -> deconv5x5 32 (7x7) -> 16 (14x14) -> 1 logits (28x28), softplus."""
    return nn.Sequential(
        linear(z_dim, 300), nn.Softplus(), linear(300, 4 * 4 * 32), nn.Softplus(), nn.Unflatten(1, (32, 4, 4)),
        ConvTranspose2dSame(32, 32, 7, 2), nn.Softplus(),
        ConvTranspose2dSame(32, 16, 14, 2), nn.Softplus(),
        ConvTranspose2dSame(16, 1, SIDE, 2), nn.Flatten())


def decoder(arch: str, z_dim: int, conv0_act: str = "relu") -> Decoder:
    """The official ``arch`` decoder; ``conv0_act`` is the conv0 decoder's hidden activation (relu as coded, or elu)."""
    if arch == "conv0":
        return Decoder(conv0_decoder_net(z_dim, conv0_act))
    if arch == "conv1":
        return Decoder(conv1_decoder_net(z_dim))
    raise ValueError(f"unknown conv arch {arch!r}; expected conv0 or conv1")


class ConvNoiseNet(nn.Module):
    """The official AVB conv encoders' network (centred x, eps) -> z, the noise injected at every conv layer by
    ``add_linear(eps, .)`` (the body of an ``avb.nets.ImplicitEncoder``):

    conv0: h <- ELU(conv(h) + Linear(eps)) for 64/128/256/512 (s 1, 1, 2, 2), then z = Linear(h) (Xavier).
    conv1: h <- ELU(conv(h)) + Linear(eps) for 16/32/32 (s2), then FC800 ELU, then z = Linear (init std 1e-5).
    """

    def __init__(self, arch: str, z_dim: int, eps_dim: int):
        super().__init__()
        if arch == "conv0":
            self.convs = ConvStack(*CONV0, nn.ELU, cond_dim=eps_dim)
            self.head: nn.Module = linear(self.convs.out_dim, z_dim)
        elif arch == "conv1":
            self.convs = ConvStack(*CONV1, nn.ELU, cond_dim=eps_dim, cond_after_act=True)
            self.head = nn.Sequential(linear(self.convs.out_dim, CONV1_FC), nn.ELU(),
                                      linear(CONV1_FC, z_dim, init=1e-5))
        else:
            raise ValueError(f"unknown conv arch {arch!r}; expected conv0 or conv1")

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return self.head(self.convs(x, eps))


class ConvAdversary(nn.Module):
    """Official conv1 adversary: T(x, z) = Linear(h(x, z)) + 0.5 |z|^2.

    h: convs 64/128/256/512 (s 1, 1, 2, 2) on the centred x, each followed by ``add_linear(z, .)``, batch norm (not on
    the last) and ELU.
    """

    def __init__(self, z_dim: int):
        super().__init__()
        self.convs = ConvStack(*CONV0, nn.ELU, cond_dim=z_dim, n_bn=3)
        self.out = linear(self.convs.out_dim, 1)

    def forward(self, x: torch.Tensor, *zs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """T(x, z) for each z batch given, each in its own pass (own batch-norm statistics)."""
        xc = centre(x)
        return one_or_tuple(tuple(self.out(self.convs(xc, z)).squeeze(-1) + 0.5 * (z * z).sum(-1) for z in zs))
