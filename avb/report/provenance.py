"""Where a preset's numbers came from: one record per Snakemake invocation that ran jobs.

The Snakefile's ``onstart`` / ``onsuccess`` / ``onerror`` hooks append to ``results/<preset>/provenance.json``: the
commit (flagged when the tree had uncommitted changes), the machine, the software, the command line, the rules it
ran, when it started and how long it took, whether it succeeded, and (records from issue 15 on) ``devices``: the
torch build and the machine's GPUs (``avb.device.host_info``; each job's own device is in its log and eval.json).
``snakemake paper`` states these records beside the numbers. Imports no torch (the Snakefile imports this module in
every Snakemake call).
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import subprocess
import time
import uuid
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from .. import io
from ..device import host_info

ROOT = Path(__file__).resolve().parents[2]
DIRTY_IGNORED = (":(exclude)results", ":(exclude)paper")


def _run(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def commit() -> str:
    """HEAD of this checkout, with " (with uncommitted changes)" when tracked files other than outputs (results/,
    paper/: the published run is tracked and a render rewrites it) differ from it."""
    head = _run("git", "rev-parse", "HEAD")
    dirty = _run("git", "status", "--porcelain", "--untracked-files=no", "--", ".", *DIRTY_IGNORED)
    return head + (" (with uncommitted changes)" if dirty not in ("", "unknown") else "")


def machine() -> str:
    """OS, architecture, CPU model, core count and GPUs (from nvidia-smi, so no torch import)."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus = _run("nvidia-smi", "--query-gpu=name", "--format=csv,noheader") if shutil.which("nvidia-smi") else ""
    gpu = ", ".join(g for g in gpus.splitlines() if g.strip()) if gpus not in ("", "unknown") else "none"
    return f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores, GPU: {gpu}"


def software() -> str:
    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "absent"
    return f"Python {platform.python_version()}, torch {version('torch')}, snakemake {version('snakemake')}"


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def load(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records in ``path``; an empty list when it does not exist. A corrupt file is an error naming it."""
    p = Path(path)
    if not p.exists():
        return []
    try:
        records = json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{p}: not valid JSON ({err}); delete it or restore it from git") from err
    if not isinstance(records, list):
        raise ValueError(f"{p}: expected a JSON list of invocation records")
    return records


def started(path: str | os.PathLike, argv: Iterable[str], rules: Iterable[str], n_jobs: int) -> str:
    """Append a record for an invocation that is about to run ``n_jobs`` jobs of ``rules``; returns its id."""
    record = {"id": uuid.uuid4().hex, "started": now(), "start_unix": time.time(), "status": "running",
              "command": shlex.join(argv), "rules": sorted(set(rules)), "jobs": n_jobs, "commit": commit(),
              "machine": machine(), "software": software(), "devices": host_info()}
    io.write_json(load(path) + [record], path)
    return record["id"]


def finished(path: str | os.PathLike, record_id: str, status: str) -> None:
    """Close the record ``record_id``: its end time, wall time in seconds and ``status``."""
    records = load(path)
    for r in records:
        if r["id"] == record_id:
            r.update(finished=now(), wall_s=round(time.time() - r["start_unix"], 1), status=status)
    io.write_json(records, path)


def devices(record: dict[str, Any]) -> str:
    """One line for a record's ``devices`` (torch build, GPUs seen by nvidia-smi)."""
    d = record["devices"]
    gpus = ", ".join(f"{g['name']} (capability {g['capability']}, driver {g['driver']})" for g in d.get("gpus", []))
    return f"torch {d.get('torch')} (CUDA build {d.get('torch_cuda')}); GPUs: {gpus or 'none'}"


def markdown(records: list[dict[str, Any]], skip_rules: set[str] = frozenset({"paper"})) -> list[str]:
    """A Markdown table of the invocations that ran more than ``skip_rules``, their machines and total wall time."""
    rows = [r for r in records if set(r.get("rules", [])) - skip_rules]
    if not rows:
        return ["No provenance record (results produced before provenance.json existed, or by hand)."]
    lines = ["| started (UTC) | wall time | status | jobs | command | commit |", "|---|---|---|---|---|---|"]
    for r in rows:
        wall = f"{r['wall_s'] / 60:.1f} min" if "wall_s" in r else "(not finished)"
        status = r["status"] + (f" ({r['note']})" if r.get("note") else "")
        commit = r["commit"][:12] + r["commit"][40:]
        lines.append(f"| {r['started']} | {wall} | {status} | {r['jobs']} | `{r['command']}` | `{commit}` |")
    total = sum(r.get("wall_s", 0.0) for r in rows)
    lines += ["", f"* total wall time of these invocations: {total / 60:.1f} min",
              *(f"* machine: {m}" for m in dict.fromkeys(r["machine"] for r in rows)),
              *(f"* software: {s}" for s in dict.fromkeys(r["software"] for r in rows)),
              *(f"* devices: {d}" for d in dict.fromkeys(devices(r) for r in rows if "devices" in r))]
    return lines
