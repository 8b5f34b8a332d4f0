"""avb.device (issue 15 item 1): which device a job runs on, the errors when it asked for a GPU it cannot have, the
loud fallback of ``auto``, what is recorded, and the workflow's GPU jobs requiring their GPU.

CUDA's presence is patched (``torch.cuda.is_available`` / ``device_count`` / ``torch.version.cuda``), so every test
runs, and means the same, on a machine with or without a GPU.
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from avb import device as D

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.delenv(D.ENV_REQUIRE_GPU, raising=False)


def test_cpu_is_the_cpu(no_cuda, capsys):
    assert D.resolve_device("cpu") == torch.device("cpu")
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:2"])
def test_cuda_without_a_device_is_an_error_saying_what_to_check(no_cuda, name):
    with pytest.raises(D.NoCudaDevice) as err:
        D.resolve_device(name, why="training of run x")
    msg = str(err.value)
    assert "training of run x" in msg and repr(name) in msg and "no CUDA device" in msg
    for what in ("nvidia-smi", "torch.version.cuda = 13.0", "CUDA_VISIBLE_DEVICES", ">= 580", "PyTorch index"):
        assert what in msg, what


def test_a_cpu_only_torch_build_is_named(no_cuda, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(D.NoCudaDevice, match="not built with CUDA"):
        D.resolve_device("cuda")


def test_cuda_index_beyond_the_visible_devices_says_so(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(D.NoCudaDevice, match=r"cuda:5, but only 2 CUDA device\(s\) are visible \(cuda:0 .. cuda:1\)"):
        D.resolve_device("cuda:5")
    assert D.resolve_device("cuda:1") == torch.device("cuda:1")
    assert D.resolve_device("auto") == torch.device("cuda")


def test_auto_falls_back_to_the_cpu_loudly(no_cuda, capsys):
    assert D.resolve_device("auto", why="evaluation of m.pt") == torch.device("cpu")
    err = capsys.readouterr().err
    assert "WARNING" in err and "evaluation of m.pt" in err and "built with CUDA 13.0" in err and "CPU" in err


@pytest.mark.parametrize("value, fails", [("1", True), ("2", True), ("0", False), ("", False)])
def test_auto_fails_where_the_job_asked_for_a_gpu(no_cuda, monkeypatch, value, fails):
    monkeypatch.setenv(D.ENV_REQUIRE_GPU, value)
    if fails:
        with pytest.raises(D.NoCudaDevice, match=f"a GPU \\(its resources: {D.ENV_REQUIRE_GPU}={value}\\)"):
            D.resolve_device("auto")
    else:
        assert D.resolve_device("auto") == torch.device("cpu")
    assert D.resolve_device("cpu") == torch.device("cpu")  # an explicit CPU job is never refused


def test_bad_names_are_errors():
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        D.resolve_device("gpu")


def test_cli_require_gpu_makes_the_fallback_an_error(no_cuda, monkeypatch, tmp_path, capsys):
    from avb.cli import main
    monkeypatch.setenv(D.ENV_REQUIRE_GPU, "0")  # restored after the test (main sets it)
    (tmp_path / "s.json").write_text(json.dumps({"device": "auto"}))
    assert main(["evaluate", str(tmp_path / "missing.pt"), "--config", str(tmp_path / "s.json"), "--out-csv",
                 str(tmp_path / "e.csv"), "--out-json", str(tmp_path / "e.json"), "--require-gpu"]) == 1
    assert "NoCudaDevice" in capsys.readouterr().err


def test_device_info_of_the_cpu():
    info = D.device_info("cpu")
    assert info["type"] == "cpu" and info["torch"] == torch.__version__ and info["torch_cuda"] == torch.version.cuda
    assert info["threads"] == torch.get_num_threads() and info["name"]
    line = D.describe(info)
    assert line.startswith("device cpu ") and f"torch {torch.__version__}" in line
    json.dumps(info)  # JSON-able (eval.json)


def test_host_info_imports_no_torch_and_provenance_records_it(tmp_path):
    code = ("import sys, json; from avb.report import provenance as P; "
            f"rid = P.started({str(tmp_path / 'p.json')!r}, ['snakemake'], ['train'], 1); "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            f"print(json.dumps(P.load({str(tmp_path / 'p.json')!r})[0]['devices']))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    devices = json.loads(out.stdout)
    assert devices["torch"] == torch.__version__.split("+")[0] and devices["torch_cuda"] == torch.version.cuda
    assert isinstance(devices["gpus"], list)
    from avb.report import provenance as P
    assert P.devices({"devices": devices}).startswith(f"torch {devices['torch']} (CUDA build {devices['torch_cuda']})")


def _avb_helper():
    """The workflow's ``avb(args, gpu)`` shell-command helper, from workflow/rules/common.smk."""
    src = (ROOT / "workflow" / "rules" / "common.smk").read_text()
    m = re.search(r"^def avb\(.*?(?=^\S)", src, re.S | re.M)
    scope: dict = {}
    exec(m.group(0), scope)
    return scope["avb"]


def test_every_gpu_rule_requires_its_gpu():
    """Each rule with a `gpu` resource passes it to its job as AVB_REQUIRE_GPU; rules without one do not."""
    avb = _avb_helper()
    assert "AVB_REQUIRE_GPU={resources.gpu};" in avb("train x", gpu=True)
    assert "AVB_REQUIRE_GPU" not in avb("report x")
    n_gpu_rules = 0
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        for block in re.split(r"^rule ", smk.read_text(), flags=re.M)[1:]:
            name = block.split(":", 1)[0]
            shell = block.split("shell:", 1)[1] if "shell:" in block else ""
            if "gpu=gpus(" in block:
                n_gpu_rules += 1
                assert "gpu=True" in shell, f"{smk.name}: rule {name} asks for a GPU but does not require it"
            else:
                assert "gpu=True" not in shell, f"{smk.name}: rule {name} has no gpu resource"
    assert n_gpu_rules == 6  # train, evaluate, ais_convergence, toy_train, toy_evaluate, schools_fit
