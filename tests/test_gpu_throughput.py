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


def test_option_sets_with_the_speed_keys_of_the_schema():
    """The speed options gpu-loop adds (train.precision, train.compile enums): each precision eager, then the row
    as the preset sets it (compiled) and the other compile modes but max-autotune; without the keys, the row only."""
    g = _module()
    opts = {"precision": ["fp32", "tf32", "bf16"], "compile": ["none", "default", "reduce-overhead", "max-autotune"]}
    row = {"precision": "tf32", "compile": "default", "channels_last": True}
    assert g.option_sets(row, opts) == [
        ("eager", {"precision": "fp32", "compile": "none"}), ("eager", {"precision": "tf32", "compile": "none"}),
        ("eager", {"precision": "bf16", "compile": "none"}), ("compiled", {}),
        ("compiled", {"compile": "reduce-overhead"})]
    eager_row = {"precision": "bf16", "compile": "none"}
    sets = g.option_sets(eager_row, opts)
    assert ("eager", {}) in sets and ("compiled", {}) not in sets          # the eager row is measured as it is
    assert g.option_sets({}, {}) == [("eager", {})]
    assert g.label({}) == "as the preset" and g.label({"precision": "bf16", "compile": "none"}) == \
        "precision=bf16,compile=none"


def test_schema_options_are_read_from_the_schema():
    g = _module()
    got = g.schema_options("train")
    assert set(got) <= {"precision", "compile"}
    assert all(isinstance(v, list) and v for v in got.values())


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
        assert t["naive_images_per_s"]["fp32"] > 0 and t["preset"]["images_per_s"] > 0
        assert float(m.group(1 + ("vae", "avb", "avb_ac").index(method))) == pytest.approx(
            t["speedup_vs_naive_tf32"], abs=0.006)
        a = d["ais"][method]
        # smoke: one leapfrog step, official leapfrog -> 2 position updates (gradient evaluations) per transition
        assert a["evals_per_transition"] == pytest.approx(2.0)
        assert a["paper_run_evals"] == pytest.approx(a["n_test"] * 1 * (1 + (a["ais_steps"] - 1) * 2))
    rates = plan.read_rates(out)
    assert set(rates.images_per_s) == set(rates.ais_evals_per_s) == {"vae", "avb", "avb_ac"}
    assert "SMOKE" in rates.source
