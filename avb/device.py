"""Which device a job runs on, and what it is (issue 15 item 1).

* ``resolve_device(name)``: ``cpu``; ``cuda`` / ``cuda:N`` (an error, ``NoCudaDevice``, where there is no such
  device, saying what to check: the driver against the torch build, ``nvidia-smi``, ``CUDA_VISIBLE_DEVICES``);
  ``auto`` (CUDA where there is a device, else the CPU with a warning on stderr saying why). A job whose scheduler
  resources asked for a GPU fails instead of falling back: the workflow's GPU rules set ``AVB_REQUIRE_GPU`` to the
  job's ``gpu`` resource (``workflow/rules/common.smk``: ``avb(...)``), and with ``AVB_REQUIRE_GPU`` > 0 ``auto`` and
  ``cuda`` without a device raise ``NoCudaDevice``; ``avb ... --require-gpu`` sets it by hand.
* ``device_info(device)``: what the device is (name, compute capability, torch, CUDA and cuDNN versions, visible
  device count; the CPU model and torch threads for the CPU), for training logs and ``eval.json``.
* ``tf32(enabled, device)``: TF32 matmuls and convolutions inside a block, on CUDA only, put back afterwards.
* ``host_info()``: the same facts without importing torch (torch's build from its installed files, the GPUs from
  ``nvidia-smi``), for the provenance records that the Snakefile writes (``avb.report.provenance``).

torch is imported inside the functions only: the Snakefile's hooks import this module through the provenance
records and must stay light.
"""
from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import subprocess
import sys
from importlib import metadata, util
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    import torch

ENV_REQUIRE_GPU = "AVB_REQUIRE_GPU"
BUILD_HINT = ("check `nvidia-smi` (is a GPU there, is it visible, which driver does it run?) against this torch "
              "build: torch.version.cuda = {cuda}. A CUDA 13 build (such as the PyPI torch 2.14.1 wheel) needs an "
              "NVIDIA driver >= 580, a CUDA 12 build >= 525; with an older driver install a torch build for an "
              "older CUDA from the PyTorch index (README, 'Which torch build'). CUDA_VISIBLE_DEVICES = {visible}")


class NoCudaDevice(RuntimeError):
    """A job asked for a CUDA device (``cuda``, ``cuda:N``, or GPU resources) and there is none."""


def gpu_required() -> bool:
    """Whether this job's scheduler resources asked for a GPU (``AVB_REQUIRE_GPU`` set to a count > 0), unless
    ``AVB_ALLOW_NO_GPU=1``: a machine without GPUs that tests the GPU scheduling (slots, caps), where a job that
    asked for one falls back to the CPU loudly, as ``auto`` does."""
    if os.environ.get("AVB_ALLOW_NO_GPU", "").strip() == "1":
        return False
    value = os.environ.get(ENV_REQUIRE_GPU, "").strip()
    try:
        return float(value or 0) > 0
    except ValueError:
        return value.lower() in ("true", "yes")


def cuda_problem() -> str | None:
    """Why CUDA cannot be used here (None where it can): a CPU-only torch build, or no device / driver for it."""
    import torch

    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is not built with CUDA (a CPU-only build)"
    if not torch.cuda.is_available():
        return (f"torch {torch.__version__} (built with CUDA {torch.version.cuda}) finds no CUDA device (no GPU, "
                f"none visible, or a driver too old for CUDA {torch.version.cuda})")
    return None


def _hint() -> str:
    import torch

    return BUILD_HINT.format(cuda=torch.version.cuda, visible=os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"))


def resolve_device(name: str, *, why: str = "this job") -> "torch.device":
    """The torch device for ``name`` (auto, cpu, cuda, cuda:N), for ``why`` (named in the messages).

    ``cuda`` / ``cuda:N`` without that device, and ``auto`` without a GPU where ``AVB_REQUIRE_GPU`` > 0, raise
    ``NoCudaDevice``; ``auto`` otherwise falls back to the CPU with a warning line on stderr saying why.
    """
    import torch

    if name == "cpu":
        return torch.device("cpu")
    if name != "auto" and not re.fullmatch(r"cuda(:[0-9]+)?", name):
        raise ValueError(f"unknown device {name!r} for {why}; expected auto, cpu, cuda or cuda:N")
    problem = cuda_problem()
    if problem is None:
        device = torch.device("cuda" if name == "auto" else name)
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise NoCudaDevice(f"{why} asked for {name}, but only {count} CUDA device(s) are visible (cuda:0 .. "
                               f"cuda:{count - 1}); {_hint()}")
        return device
    if name != "auto" or gpu_required():
        asked = f"device {name!r}" if name != "auto" else f"a GPU (its resources: {ENV_REQUIRE_GPU}=" \
                                                          f"{os.environ.get(ENV_REQUIRE_GPU)})"
        raise NoCudaDevice(f"{why} asked for {asked}, but {problem}; {_hint()}")
    print(f"[avb] WARNING: device auto for {why}: {problem}; running on the CPU", file=sys.stderr, flush=True)
    return torch.device("cpu")


@contextlib.contextmanager
def tf32(enabled: bool, device: "torch.device") -> Iterator[None]:
    """TF32 for CUDA matmuls and convolutions inside the block where ``enabled`` and ``device`` is CUDA (nothing
    changes on the CPU, where TF32 does not exist); the flags are put back afterwards. Uses torch's
    ``fp32_precision`` flags where it has them (never mixed with the legacy ``allow_tf32``)."""
    import torch

    if not enabled or torch.device(device).type != "cuda":
        yield
        return
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        flags = (torch.backends.cuda.matmul, torch.backends.cudnn.conv)
        old = [f.fp32_precision for f in flags]
        try:
            for f in flags:
                f.fp32_precision = "tf32"
            yield
        finally:
            for f, v in zip(flags, old):
                f.fp32_precision = v
    else:
        old = [torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32]
        try:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_info(device: "torch.device | str") -> dict[str, Any]:
    """What ``device`` is: its type and name, compute capability (CUDA), torch / CUDA / cuDNN versions, the number
    of CUDA devices torch sees, ``CUDA_VISIBLE_DEVICES``; for the CPU its model and torch's thread count."""
    import torch

    device = torch.device(device)
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    info: dict[str, Any] = {"type": device.type, "torch": torch.__version__, "torch_cuda": torch.version.cuda,
                            "cudnn": cudnn, "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available()
                            else 0, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        info.update(name=torch.cuda.get_device_name(index), index=index, capability=f"{major}.{minor}",
                    memory_gib=round(torch.cuda.get_device_properties(index).total_memory / 2 ** 30, 1))
    else:
        info.update(name=_cpu_model(), threads=torch.get_num_threads(), cpu_count=os.cpu_count())
    return info


def describe(info: dict[str, Any]) -> str:
    """One log line for a ``device_info`` dict."""
    if info["type"] == "cuda":
        where = f"cuda:{info['index']} {info['name']} (capability {info['capability']}, {info['memory_gib']} GiB)"
    else:
        where = f"cpu {info['name']} ({info['threads']} torch threads)"
    return (f"device {where}; torch {info['torch']}, CUDA build {info['torch_cuda']}, cuDNN {info['cudnn']}, "
            f"{info['cuda_devices']} CUDA device(s) visible")


def _torch_build() -> tuple[str, str | None]:
    """torch's version and CUDA build from its installed files (torch/version.py), without importing it."""
    try:
        version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "absent", None
    spec = util.find_spec("torch")
    cuda = None
    if spec is not None and spec.origin:
        try:
            text = open(os.path.join(os.path.dirname(spec.origin), "version.py")).read()
            m = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", text, re.M)
            cuda = m.group(1) if m else None
        except OSError:
            pass
    return version, cuda


def host_info() -> dict[str, Any]:
    """The torch build and the GPUs of this machine without importing torch: torch's version and CUDA build, and
    per GPU of ``nvidia-smi`` its name, compute capability and driver (an empty list without nvidia-smi)."""
    version, cuda = _torch_build()
    gpus: list[dict[str, str]] = []
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap,driver_version",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=20,
                                 check=True).stdout
            for line in out.splitlines():
                parts = [p.strip() for p in line.split(",")]
                if len(parts) == 3:
                    gpus.append(dict(zip(("name", "capability", "driver"), parts)))
        except (OSError, subprocess.SubprocessError):
            pass
    return {"torch": version, "torch_cuda": cuda, "gpus": gpus,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
