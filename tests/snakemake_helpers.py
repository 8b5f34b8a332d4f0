"""Running the project's Snakefile from tests, and reading what Snakemake printed."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def snakemake(workdir: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """``snakemake -s <repo>/Snakefile -d workdir *args`` with the project's venv first on PATH."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "-d", str(workdir), *args],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=workdir)


def job_stats(text: str) -> dict[str, int]:
    """The 'Job stats' table of a Snakemake run or dry run as {rule: count}."""
    lines = text.split("Job stats:")[1].strip().splitlines()[2:]
    stats = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        stats[parts[0]] = int(parts[1])
    return stats
