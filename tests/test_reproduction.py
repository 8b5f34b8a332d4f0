"""The fixed golden config reproduces the outputs captured before the refactor (issue 14 item 7).

tests/golden/capture.py runs a small fixed config (MNIST vae / avb / avb_ac, the toy experiment, eight schools: gold
HMC and its four methods; one torch thread per job) through the top-level Snakefile; tests/golden/reference/ holds the
compared outputs of that run at commit 636cb1f (per-image evaluations, training metrics, the MNIST, toy and schools
summaries, Table 1 / Table 2 replicas, claims, per-parameter errors, the KL curve), less the wall-clock columns listed
in its manifest.json. This test reruns the config with this checkout's code and compares every remaining cell:

* same machine fingerprint as the capture (CPU model, torch's CPU capability and the environment variables that force
  other kernels, torch / numpy / scipy / Python versions, machine type, job threads; manifest.json):
  **bit-identical**: every number equal after reading it as a float, every other cell equal as text;
* another fingerprint (e.g. CI on an Intel Xeon where the capture ran on an AMD EPYC: other oneDNN / MKL / ATen
  kernels differ in the last bits of float32 results): **tolerance**: |new - old| <= RTOL * (|old| + the column's
  largest |old|), NaN where NaN, text cells still exact. RTOL = 1e-4: with torch, MKL and oneDNN forced onto other
  CPU kernels (ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=SSE41) 605 cells of the
  capture machine's run moved, by at most 8.1e-6 on that scale (an AIS effective sample size). So this mode sees a
  changed seed or update rule (the toy data stream seeded +2 instead of +1: 136 cells, up to 0.11) but not a change
  whose effect is as small as a kernel's rounding (AVB's encoder head initialised with std 1.1e-5 instead of 1e-5:
  19 cells, up to 1.25e-5, which only the bit-identical mode catches). tests/golden/README.md has the measurements.

It prints which mode it used and the largest deviation. Outputs that gain, lose or rename a column or a row fail in
both modes: the refactor may change the code, not its outputs' paths and contents.
"""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "reference"
RTOL = 1e-4


def _capture_module():
    spec = importlib.util.spec_from_file_location("golden_capture", ROOT / "tests" / "golden" / "capture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


capture = _capture_module()


def _floats(cells: list[str]) -> list[float] | None:
    """The cells as floats (an empty cell is NaN), or None when one is not a number (a text column)."""
    try:
        return [math.nan if c == "" else float(c) for c in cells]
    except ValueError:
        return None


def compare(want: dict, got: dict, exact: bool, rtol: float = RTOL) -> tuple[list[str], float, str]:
    """Differences between two {file: (header, rows)} sets, the largest deviation |new - old| / (|old| + column
    scale) over every numeric cell, and where it was."""
    problems, worst, where = [], 0.0, "-"
    if sorted(want) != sorted(got):
        problems.append(f"files differ: missing {sorted(set(want) - set(got))}, extra {sorted(set(got) - set(want))}")
    for name in sorted(set(want) & set(got)):
        (w_head, w_rows), (g_head, g_rows) = want[name], got[name]
        if w_head != g_head or len(w_rows) != len(g_rows):
            problems.append(f"{name}: columns {g_head} x {len(g_rows)} rows, golden {w_head} x {len(w_rows)} rows")
            continue
        for j, col in enumerate(w_head):
            w_cells, g_cells = [r[j] for r in w_rows], [r[j] for r in g_rows]
            w, g = _floats(w_cells), _floats(g_cells)
            if w is None or g is None:
                bad = [i for i, (a, b) in enumerate(zip(w_cells, g_cells)) if a != b]
                if bad:
                    problems.append(f"{name}: {col} row {bad[0]}: {g_cells[bad[0]]!r}, golden {w_cells[bad[0]]!r}")
                continue
            scale = max((abs(x) for x in w if not math.isnan(x)), default=0.0)
            for i, (a, b) in enumerate(zip(w, g)):
                if math.isnan(a) or math.isnan(b):
                    if math.isnan(a) != math.isnan(b):
                        problems.append(f"{name}: {col} row {i}: {b!r}, golden {a!r}")
                    continue
                dev = abs(b - a) / (abs(a) + scale) if a != b else 0.0
                if dev > worst:
                    worst, where = dev, f"{name}: {col} row {i} ({b!r} vs golden {a!r})"
                if (a != b) if exact else (abs(b - a) > rtol * (abs(a) + scale)):
                    problems.append(f"{name}: {col} row {i}: {b!r}, golden {a!r} (deviation {dev:.3g})")
    return problems, worst, where


def read_set(folder: Path, files: dict[str, list[str]], drop: bool) -> dict:
    return {rel: capture.read_table(folder / rel, tuple(excl) if drop else ()) for rel, excl in files.items()}


def test_compare_detects_a_last_bit_change_and_tolerates_it_only_across_machines():
    want = {"a.csv": (["x", "label"], [["-543.8139", "vae"], ["", "avb"]])}
    last_bit = {"a.csv": (["x", "label"], [[repr(math.nextafter(-543.8139, 0)), "vae"], ["", "avb"]])}
    assert compare(want, want, exact=True)[0] == []
    assert len(compare(want, last_bit, exact=True)[0]) == 1
    assert compare(want, last_bit, exact=False)[0] == []
    assert compare(want, {"a.csv": (["x", "label"], [["-543.5", "vae"], ["", "avb"]])}, exact=False)[0]
    assert compare(want, {"a.csv": (["x", "label"], [["-543.8139", "vae"], ["0", "avb"]])}, exact=False)[0]
    assert compare(want, {"a.csv": (["x", "label"], [["-543.8139", "VAE"], ["", "avb"]])}, exact=False)[0]
    assert compare(want, {"a.csv": (["x"], [["-543.8139"], [""]])}, exact=True)[0]


@pytest.mark.slow
def test_golden_config_reproduces_the_captured_outputs(tmp_path):
    manifest = json.loads((GOLDEN / "manifest.json").read_text())
    assert manifest["config"] == capture.CONFIG, "the golden config changed: recapture (tests/golden/README.md)"
    assert manifest["files"] == {k: list(v) for k, v in capture.COMPARED.items()}
    results = capture.run_pipeline(ROOT, tmp_path)
    want = read_set(GOLDEN, manifest["files"], drop=False)
    got = read_set(results, manifest["files"], drop=True)
    here = capture.fingerprint()
    exact = here == manifest["fingerprint"]
    problems, worst, where = compare(want, got, exact)
    differs = {k: (manifest["fingerprint"].get(k), v) for k, v in here.items() if manifest["fingerprint"].get(k) != v}
    mode = ("bit-identical (same fingerprint)" if exact
            else f"tolerance rtol={RTOL} (fingerprint (capture, here): {differs})")
    print(f"reproduction: mode {mode}; {sum(len(r) for _, r in want.values())} rows in {len(want)} files; "
          f"largest deviation {worst:.3g} at {where}")
    assert not problems, f"mode {mode}: {len(problems)} difference(s) from the golden outputs of " \
                         f"{manifest['commit'][:7]}:\n" + "\n".join(problems[:30])
