"""What a run config describes, for every experiment: its model (``build``), its training batches (``batches``) and,
once trained, the model read back (``load_model``). ``avb.train.train`` seeds, builds and fits any of them.

A run config's ``experiment`` is ``toy`` or ``schools``; the image runs (MNIST-type, ``avb.jobs.train_config``)
have none. Each experiment's networks are the shared blocks of ``avb.nets`` (and ``avb.convnets``) at its sizes:

* images: ``model.arch`` ``mlp`` (the official full0: 784-300-300 softplus, the AVB encoder adding Linear(eps) at
  every layer), ``conv0`` or ``conv1`` (``avb.convnets``) for the encoder and decoder (IAF: the VAE's encoder with
  a context head, ``iaf_layers`` IAF layers; the auxiliary VAE: ``_auxvae``); ``model.adv_arch`` ``conv0``
  (the inner-product adversary, sized by ``adv_hidden`` / ``adv_embed`` / ``adv_layers``; every official MNIST
  script uses it) or ``conv1``, picked independently as the official scripts do;
* toy (``avb.toy``, the notebooks): 3 x FC ``hidden`` ELU bodies on the raw one-hot x, the AVB encoder on
  concat(x, eps), the AC encoder's v_i as wide as the bodies; the residual adversary on concat(x, z) with ELU
  (ReLU inside the blocks) and the prior term ``adv_prior_term``; loss scale 1;
* eight schools (``avb.schools``): ADVI, or AVB's sampler eps -> 2 x FC ``hidden`` ELU -> z (x only sets the number
  of draws) and the residual adversary on z alone (leaky ReLU 0.2, zero-initialised blocks and output, T = A -
  log N(z; 0, I)); AC's moments are the batch's; loss scale 1.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from . import convnets
from .auxvae import AuxVAE, ConditionalGaussian
from .iaf import IAF, IAFEncoder, IAFFlow
from .nets import (X_DIM, Decoder, GaussianEncoder, ImplicitEncoder, InnerProductAdversary, NoiseBasisEncoder,
                   NoiseInjectedMLP, ResidualAdversary, linear, mlp)
from .objectives import AVB, LOG_2PI, VAE, GaussianVI, Method

EXPERIMENTS = ("images", "toy", "schools")
METHODS = ("vae", "avb", "avb_ac", "iaf", "auxvae")  # of the image experiment
ARCHS = ("mlp", "conv0", "conv1")
ADV_ARCHS = ("conv0", "conv1")


def experiment(run: dict[str, Any]) -> str:
    """The experiment of a run config: its ``experiment`` key, ``images`` where it has none."""
    kind = run.get("experiment", "images")
    if kind not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {kind!r} in the run config; expected one of {', '.join(EXPERIMENTS)}")
    return kind


def build(run: dict[str, Any]) -> Method:
    """The model (networks and objective) of a run config: ``method`` and ``model``, and the images' ``z_dim``."""
    kind = experiment(run)
    if kind == "toy":
        return _toy(run["method"], run.get("model"))
    if kind == "schools":
        return _schools(run)
    from .config import defaults
    # unset keys (a run config holds only those its method reads): the schema's defaults, written there only
    return _images(run["method"], run["z_dim"], **{**defaults("model"), **run.get("model", {})})


def _images(method: str, z_dim: int, *, arch: str, hidden: int, eps_dim: int, eps_nbasis: int, adv_arch: str,
            adv_hidden: int, adv_embed: int, adv_layers: int, conv0_decoder_act: str, iaf_layers: int,
            iaf_a_dim: int, iaf_h_dim: int, iaf_train_flow: bool, iaf_kl: str, aux_a_dim: int,
            aux_head_scale: float | None) -> Method:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if arch not in ARCHS:
        raise ValueError(f"unknown model.arch {arch!r}; expected one of {', '.join(ARCHS)}")
    if adv_arch not in ADV_ARCHS:
        raise ValueError(f"unknown model.adv_arch {adv_arch!r}; expected one of {', '.join(ADV_ARCHS)}")
    full0 = arch == "mlp"

    def body(act: type[nn.Module]) -> tuple[nn.Module, int]:  # the noise-free x -> h of the VAE and AC encoders
        return (mlp([X_DIM, hidden, hidden], nn.Softplus, out_act=nn.Softplus()), hidden) if full0 \
            else convnets.trunk(arch, act)

    decoder = Decoder(mlp([z_dim, hidden, hidden, X_DIM], nn.Softplus)) if full0 \
        else convnets.decoder(arch, z_dim, conv0_decoder_act)
    if method == "vae":
        return VAE(z_dim, decoder, GaussianEncoder(*body(nn.ELU if arch == "conv0" else nn.Softplus), z_dim))
    if method == "iaf":  # the VAE's bodies, but the conv0 one without batch norm (avb/iaf/models/conv0.py)
        trunk = body(nn.Softplus) if arch != "conv0" else convnets.trunk("conv0", nn.ELU, conv0_bn=False)
        a_dim = iaf_a_dim if iaf_layers else 0
        encoder = IAFEncoder(*trunk, z_dim, a_dim)
        return IAF(z_dim, decoder, encoder, IAFFlow(z_dim, iaf_layers, iaf_h_dim, a_dim), kl=iaf_kl,
                   train_flow=iaf_train_flow)
    if method == "auxvae":
        return _auxvae(arch, z_dim, aux_a_dim, hidden, decoder, aux_head_scale)
    if method == "avb":
        net = NoiseInjectedMLP([X_DIM, hidden, hidden], eps_dim, z_dim) if full0 \
            else convnets.ConvNoiseNet(arch, z_dim, eps_dim)
        encoder: nn.Module = ImplicitEncoder(net, eps_dim)
    else:
        encoder = NoiseBasisEncoder(*body(nn.ELU), z_dim, eps_dim, eps_nbasis)
    adversary = InnerProductAdversary(z_dim, adv_hidden, adv_embed, adv_layers) if adv_arch == "conv0" \
        else convnets.ConvAdversary(z_dim)
    return AVB(z_dim, decoder, encoder, adversary, adaptive_contrast=method == "avb_ac")


def _auxvae(arch: str, z_dim: int, a_dim: int, hidden: int, decoder: nn.Module,
            head_scale: float | None = None) -> AuxVAE:
    """The official ``avb/auxvae/models/<arch>.py`` networks q(z|x, a), q(a|x), r(a|x~, z) (``ConditionalGaussian``).

    full0: FC ``hidden`` x 2 softplus on concat(x, c); conv0: the conv0 stack (ELU, batch norm on the first three
    convs), c concatenated to its features, linear heads; conv1: the conv1 stack (softplus), c concatenated, FC800
    softplus, heads (those of q(a|x) and r scaled by 0.1, as coded). ``head_scale`` (``model.aux_head_scale``)
    replaces that factor of q(a|x)'s and r's heads on every arch; None: as coded (0.1 on conv1, else 1; with 1 the
    full0 networks' initial a and z are so wide that r's log-std overflows: non-finite losses at the first step).
    """
    def net(cond_dim: int, out_dim: int, head_scale: float) -> ConditionalGaussian:
        if arch == "mlp":
            return ConditionalGaussian(nn.Identity(), mlp([X_DIM + cond_dim, hidden, hidden], nn.Softplus,
                                                          out_act=nn.Softplus()), hidden, out_dim, head_scale)
        if arch == "conv0":
            stack = convnets.ConvStack(*convnets.CONV0, nn.ELU, n_bn=3)
            return ConditionalGaussian(stack, nn.Identity(), stack.out_dim + cond_dim, out_dim, head_scale)
        stack = convnets.ConvStack(*convnets.CONV1, nn.Softplus)
        post = nn.Sequential(linear(stack.out_dim + cond_dim, convnets.CONV1_FC), nn.Softplus())
        return ConditionalGaussian(stack, post, convnets.CONV1_FC, out_dim, head_scale)

    aux_scale = head_scale if head_scale is not None else (0.1 if arch == "conv1" else 1.0)
    return AuxVAE(z_dim, a_dim, decoder, encoder=net(a_dim, z_dim, 1.0), encoder_aux=net(0, a_dim, aux_scale),
                  decoder_aux=net(z_dim, a_dim, aux_scale))


def _toy(method: str, model: dict[str, Any] | None) -> Method:
    from .config import defaults
    from .toy import METHODS as TOY_METHODS, PRIOR_TERMS, X_DIM as X, Z_DIM as Z

    m = {**defaults("toy.model"), **(model or {})}  # unset keys: the schema's defaults (the notebooks')
    if method not in TOY_METHODS:
        raise ValueError(f"unknown toy method {method!r}; expected one of {', '.join(TOY_METHODS)}")
    h = m["hidden"]
    decoder = Decoder(mlp([Z, h, h, h, X], nn.ELU))
    if method == "vae":
        return VAE(Z, decoder, GaussianEncoder(mlp([X, h, h, h], nn.ELU, out_act=nn.ELU()), h, Z, centre_input=False),
                   loss_scale=1.0)
    if method == "avb":
        encoder: nn.Module = ImplicitEncoder(mlp([X + m["eps_dim"], h, h, h, Z], nn.ELU), m["eps_dim"], "concat",
                                             centre_input=False)
    else:
        encoder = NoiseBasisEncoder(mlp([X, h, h, h], nn.ELU, out_act=nn.ELU()), h, Z, m["ac_eps_dim"],
                                    m["ac_nbasis"], basis_hidden=h, centre_input=False)
    term = m["adv_prior_term"]
    if term not in PRIOR_TERMS:
        raise ValueError(f"unknown adv_prior_term {term!r}; expected one of {', '.join(PRIOR_TERMS)}")
    adversary = ResidualAdversary(X, Z, m["adv_hidden"], m["adv_blocks"], nn.ELU, nn.ReLU, PRIOR_TERMS[term],
                                  block_init="zero_after_xavier")
    return AVB(Z, decoder, encoder, adversary, adaptive_contrast=method == "avb_ac", loss_scale=1.0)


def _schools(run: dict[str, Any]) -> Method:
    from .schools import DIM, METHODS as SCHOOLS_METHODS, SchoolsLikelihood

    method, m = run["method"], run["model"]
    likelihood = SchoolsLikelihood()
    z_dim = run.get("z_dim", DIM)
    if method in ("advi_meanfield", "advi_fullrank"):
        return GaussianVI(z_dim, likelihood, method == "advi_fullrank", m["init_range"])
    if method not in ("avb", "avb_ac"):
        raise ValueError(f"unknown schools method {method!r}; expected one of {', '.join(SCHOOLS_METHODS)}")
    noise = m["noise_dim"] or z_dim
    sampler = ImplicitEncoder(mlp([noise, m["hidden"], m["hidden"], z_dim], nn.ELU), noise, "only")
    lrelu = lambda: nn.LeakyReLU(0.2)  # noqa: E731
    adversary = ResidualAdversary(0, z_dim, m["adv_hidden"], m["adv_blocks"], lrelu, lrelu, prior_scale=0.5,
                                  prior_const=0.5 * z_dim * LOG_2PI, block_init="zero", out_init="zero")
    return AVB(z_dim, likelihood, sampler, adversary, method == "avb_ac", loss_scale=1.0, ac_moments="batch",
               ac_floor=m["ac_floor"], ac_floor_mode=m["ac_floor_mode"])


def batches(run: dict[str, Any], generator: torch.Generator, device: torch.device,
            data_dir: str | os.PathLike | None = None):
    """The endless training batches of a run config (an ``avb.train.BatchSource``), drawn from ``generator``.

    Images: the run's dataset from ``data_dir`` (else ``run['data_dir']``, else ``avb.data``'s search), checked
    against the checksum the run config records (``avb.jobs.check_data``).
    """
    kind, batch_size = experiment(run), run["train"]["batch_size"]
    if kind == "toy":
        from .toy import ToyBatches
        return ToyBatches(batch_size, generator, device)
    if kind == "schools":
        from .schools import DummyBatches
        return DummyBatches(batch_size, device)
    from . import data
    from .jobs import check_data

    splits = data.load(run["dataset"], data_dir if data_dir is not None else run.get("data_dir"))
    check_data(run, splits)
    print(f"[avb] {run['dataset']}: data from {splits.source}", flush=True)
    return data.Batches(splits, "train", batch_size, generator, device)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Method, dict[str, Any]]:
    """A trained model (eval mode, on ``device``) and its run config, with ``steps_done`` (the training iterations
    it holds), from a ``model.pt`` or ``checkpoint.pt`` of any experiment.

    Read with ``weights_only=True`` (``io.load_torch``); weights that do not fit the model the run config describes,
    or that are not all finite, are an error naming the file.
    """
    from . import io
    from .step import nonfinite_parameters

    ck = io.load_torch(path, "cpu", ("run", "model", "step"))
    try:
        model = build(ck["run"]).to(device)
        model.load_state_dict(ck["model"])
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        raise io.CorruptFile(f"{path}: its weights do not fit the model its run config describes "
                             f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
    bad = nonfinite_parameters(model)
    if bad:
        raise io.NonFiniteResult(f"{path}: parameters not finite ({', '.join(bad[:3])}); refusing to use the model")
    return model.eval(), {**ck["run"], "steps_done": ck["step"]}
