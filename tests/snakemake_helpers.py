"""Running the project's Snakefile from tests, and reading what Snakemake printed."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def snakemake(workdir: Path, *args: str, timeout: float = 900, path_first: Path | None = None,
              snakefile: Path = ROOT / "Snakefile", default_profile: bool = False) -> subprocess.CompletedProcess:
    """``<venv>/bin/snakemake -s <snakefile> -d workdir *args``, with the venv taken *off* PATH: calling the venv's
    snakemake without activating the venv must work (jobs run Snakemake's own interpreter). ``path_first``: a folder
    put first on PATH (e.g. holding a fake tool).

    Tests state every option they rely on: Snakemake's own loading of profiles/default (beside the Snakefile) is
    switched off with ``--workflow-profile none`` unless ``default_profile`` (tests of that profile) or ``args``
    name a workflow profile of their own."""
    path = [p for p in os.environ["PATH"].split(os.pathsep) if Path(p).resolve() != BIN.resolve()]
    env = {**os.environ, "PATH": os.pathsep.join(([str(path_first)] if path_first else []) + path)}
    profile = [] if default_profile or "--workflow-profile" in args else ["--workflow-profile", "none"]
    return subprocess.run([str(BIN / "snakemake"), "-s", str(snakefile), "-d", str(workdir), *profile, *args],
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
