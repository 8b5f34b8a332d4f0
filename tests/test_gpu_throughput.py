"""benchmarks/gpu_throughput.py (issue 15 item 6) on the CPU: without CUDA it says so in one line and exits 0; with
--device cpu --smoke its whole path runs (naive and project steps, AIS) and writes what `avb plan` reads. Its
numbers here are no measurement: speed is measured on a GPU only."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from avb import plan

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_throughput.py"
LAST = re.compile(r"^gpu train speedup vs naive: vae=(\S+) avb=(\S+) avb_ac=(\S+) ais_paper_run_min=(\S+)$")


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, even on a machine with one
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def test_without_cuda_one_line_and_exit_0(tmp_path):
    r = _run("--out", str(tmp_path / "t.json"), timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(r.stdout.splitlines()) == 1 and "no CUDA device" in r.stdout, r.stdout
    assert not (tmp_path / "t.json").exists()


def test_cpu_without_smoke_is_refused(tmp_path):
    r = _run("--device", "cpu", "--out", str(tmp_path / "t.json"), timeout=120)
    assert r.returncode == 2 and "--smoke" in r.stderr


def _module():
    spec = importlib.util.spec_from_file_location("gpu_throughput", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_options_each_precision_then_compile_on_the_fastest():
    """The speed options of gpu-loop (train.precision, train.compile), as the schema will declare them: each
    precision alone, then compile on the fastest; with no such keys, the project's default only."""
    g = _module()
    sets = g.option_sets({"precision": ["fp32", "tf32", "bf16"], "compile": [False, True]})
    assert sets == [{"precision": "fp32"}, {"precision": "tf32"}, {"precision": "bf16"},
                    {"compile": True, "precision": None}]
    assert g.option_sets({}) == [{}] and g.option_sets({"compile": [False, True]}) == [{}, {"compile": True}]
    project = {"precision=fp32": {"options": {"precision": "fp32"}, "images_per_s": 5.0},
               "precision=bf16": {"options": {"precision": "bf16"}, "images_per_s": 9.0},
               "precision=tf32": {"options": {"precision": "tf32"}, "error": "x"}}
    assert g.on_fastest(sets[-1], project) == {"compile": True, "precision": "bf16"}
    assert g.on_fastest(sets[-1], {}) == {"compile": True}
    assert g.label({"compile": True, "precision": "bf16"}) == "compile=True,precision=bf16"


@pytest.mark.slow
def test_smoke_run_on_the_cpu_writes_what_plan_reads(tmp_path):
    out = tmp_path / "t.json"
    r = _run("--device", "cpu", "--smoke", "--out", str(out), timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    m = LAST.match(r.stdout.splitlines()[-1])
    assert m, r.stdout[-2000:]
    assert all(math.isfinite(float(v)) and float(v) > 0 for v in m.groups())
    d = json.loads(out.read_text())
    assert d["smoke"] is True and d["device"]["device"] == "cpu"
    for method in ("vae", "avb", "avb_ac"):
        t = d["train"][method]
        assert t["arch"] == ("conv1" if method == "vae" else "conv0")
        assert t["naive_images_per_s"]["fp32"] > 0 and t["best"]["images_per_s"] > 0
        assert float(m.group(1 + ("vae", "avb", "avb_ac").index(method))) == pytest.approx(
            t["speedup_vs_naive_tf32"], abs=0.006)
        a = d["ais"][method]
        # smoke: one leapfrog step, official leapfrog -> 2 position updates (gradient evaluations) per transition
        assert a["evals_per_transition"] == pytest.approx(2.0)
        assert a["paper_run_evals"] == pytest.approx(a["n_test"] * 1 * (1 + (a["ais_steps"] - 1) * 2))
    rates = plan.read_rates(out)
    assert set(rates.images_per_s) == set(rates.ais_evals_per_s) == {"vae", "avb", "avb_ac"}
    assert "SMOKE" in rates.source
