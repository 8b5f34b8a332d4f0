"""The training speed options of a run config's ``train`` section (issue 15 item 4), applied by ``avb.train.fit``.

Each option's default is the training as it was before them: a run config at the defaults trains bit-identically on
the CPU, and ``avb.jobs.train_config`` leaves keys at their defaults out of config.json (a run's checkpoint then
resumes as before). What each one changes:

* ``precision``: ``fp32`` (default) as is; ``tf32``: TF32 matmuls and convolutions on CUDA for the job (no effect on
  the CPU); ``bf16``: ``torch.autocast`` to bfloat16 around each forward pass (losses included; the backward pass
  and the Adam updates stay outside it, on the fp32 master weights), with TF32 for what stays fp32 on CUDA.
* ``compile``: ``none`` (default: eager); else ``torch.compile`` of the model's forward pass and losses (the
  backward is compiled with it by AOTAutograd; the optimiser steps stay eager) in that mode: ``default``,
  ``reduce-overhead`` (CUDA graphs) or ``max-autotune``. Inductor draws the forward pass's random numbers itself
  (not from torch's global stream), so a compiled run is another draw of the same training.
* ``channels_last``: conv nets on CUDA only: the model's 4-d weights in channels-last (NHWC) memory format.
* ``cudnn_benchmark``: conv nets on CUDA only: ``torch.backends.cudnn.benchmark`` for the job (cuDNN times its
  convolution algorithms at the first batch and keeps the fastest; not deterministic across runs).
* ``adam``: ``auto`` (default: torch's own choice on the CPU, the fused kernel on CUDA), ``for`` (one parameter at
  a time), ``foreach`` (multi-tensor) or ``fused``.

The flags set for the job (TF32, cudnn.benchmark) are put back when it ends (``job_flags``).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import nn

from .device import tf32

DEFAULTS: dict[str, Any] = {"precision": "fp32", "compile": "none", "channels_last": False,
                            "cudnn_benchmark": False, "adam": "auto"}
PRECISIONS = ("fp32", "tf32", "bf16")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
ADAM = ("auto", "for", "foreach", "fused")


def options(tr: dict[str, Any]) -> dict[str, Any]:
    """The speed options of a ``train`` section, defaults filled in (toy and eight-schools sections have none)."""
    out = {k: tr.get(k, v) for k, v in DEFAULTS.items()}
    for key, allowed in (("precision", PRECISIONS), ("compile", COMPILE_MODES), ("adam", ADAM)):
        if out[key] not in allowed:
            raise ValueError(f"train.{key} = {out[key]!r}; expected one of {', '.join(allowed)}")
    return out


def has_convs(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)) for m in model.modules())


def adam_kwargs(opts: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """``torch.optim.Adam`` keyword arguments for ``train.adam`` on ``device`` ({} = torch's default)."""
    choice = opts["adam"]
    if choice == "auto":
        return {"fused": True} if device.type == "cuda" else {}
    return {"for": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[choice]


def prepare(model: nn.Module, opts: dict[str, Any], device: torch.device) -> nn.Module:
    """``model`` in channels-last memory format where ``channels_last`` asks it and it applies (conv nets on
    CUDA); else as it is. Parameters stay the same objects."""
    if opts["channels_last"] and device.type == "cuda" and has_convs(model):
        model.to(memory_format=torch.channels_last)
    return model


@contextlib.contextmanager
def job_flags(opts: dict[str, Any], device: torch.device, model: nn.Module) -> Iterator[None]:
    """TF32 (precision tf32 / bf16; ``avb.device.tf32``) and cudnn.benchmark (conv nets) for the job on CUDA; put
    back afterwards. On the CPU nothing changes."""
    if device.type != "cuda":
        yield
        return
    benchmark = torch.backends.cudnn.benchmark
    try:
        if opts["cudnn_benchmark"] and has_convs(model):
            torch.backends.cudnn.benchmark = True
        with tf32(opts["precision"] in ("tf32", "bf16"), device):
            yield
    finally:
        torch.backends.cudnn.benchmark = benchmark


def autocast(opts: dict[str, Any], device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the context each forward pass runs in: bf16 autocast for precision bf16, else nothing."""
    if opts["precision"] == "bf16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def compiled(model: nn.Module, opts: dict[str, Any], backend: str | None = None) -> nn.Module:
    """What the training step calls for its forward passes: ``model`` itself (compile none), else
    ``torch.compile(model, mode=...)`` (same parameters; ``backend`` replaces inductor, e.g. ``aot_eager`` in tests
    on a machine without a C compiler)."""
    mode = opts["compile"]
    if mode == "none":
        return model
    kwargs: dict[str, Any] = {"backend": backend} if backend is not None else {"mode": mode}
    return torch.compile(model, **kwargs)
