"""Golden outputs of one small, fixed pipeline run (issue 14 item 7: proof that a refactor changed no number).

The run goes through the most stable interface the project has, the top-level Snakefile on its command line
(``snakemake -s <repo>/Snakefile --cores 2 <targets> --configfile <CONFIG>``), never through the package's Python API:
the API may change, the output paths and their contents may not. CONFIG covers MNIST (vae, avb, avb_ac: tiny MLP, 20
steps, tiny AIS), the toy experiment (its three methods, 20 steps) and eight schools (gold HMC and its four methods,
20 steps), every job on one torch thread.

    python tests/golden/capture.py tests/golden/reference                  # the code of this checkout
    python tests/golden/capture.py --repo /path/to/checkout tests/golden/reference

writes the compared outputs (COMPARED, less the columns it names: wall-clock timings) under DEST, at their paths
below results/<preset>/, and DEST/manifest.json: the commit and fingerprint of the capture, the command, the config
and the file list. tests/test_reproduction.py reruns CONFIG and compares (see its docstring). Nothing here imports the
``avb`` package: the pipeline's jobs run the code of ``--repo`` (its Snakefile puts that checkout first on PYTHONPATH,
and so does this script, for the Snakefile's own imports).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BIN = Path(sys.executable).parent
PRESET = "golden"

# Frozen: changing any value here invalidates the golden outputs (recapture from the commit they came from).
CONFIG: dict = {
    "preset": PRESET,
    "datasets": ["mnist"],
    "methods": ["vae", "avb", "avb_ac"],
    "z_dims": [2],
    "seeds": [0],
    "threads": 1,
    "model": {"arch": "mlp", "hidden": 32, "eps_dim": 4, "eps_nbasis": 2, "adv_hidden": 16, "adv_embed": 16,
              "adv_layers": 1},
    "train": {"steps": 20, "batch_size": 32, "checkpoint_every": 10, "log_every": 5, "device": "cpu"},
    "eval": {"n_test": 8, "batch_size": 8, "ais_steps": 3, "ais_chains": 2, "elbo_samples": 2, "iwae_samples": 4,
             "bdmc_images": 2, "device": "cpu"},
    "report": {"n_samples": 4},
    "convergence": {"enabled": False},
    "toy": {
        "enabled": True, "threads": 1, "seed": 0, "methods": ["vae", "avb", "avb_ac"],
        "model": {"hidden": 16, "eps_dim": 8, "adv_hidden": 16, "adv_blocks": 1, "ac_nbasis": 2, "ac_eps_dim": 4},
        "train": {"steps": 20, "batch_size": 32, "lr": 1.0e-3, "lr_adversary": 1.0e-3, "checkpoint_every": 10,
                  "log_every": 5, "device": "cpu"},
        "eval": {"grid_size": 20, "n_samples": 50, "kde_samples": 50, "scatter_samples": 8, "device": "cpu"},
    },
    "schools": {
        "enabled": True, "threads": 1, "seed": 0, "device": "cpu",
        "methods": ["advi_meanfield", "advi_fullrank", "avb", "avb_ac"],
        "n_samples": 200, "kl_every": 10, "kl_samples": 60,
        "gold": {"chains": 4, "warmup": 30, "draws": 100, "thin": 1},
        "advi": {"steps": 20, "batch_size": 16, "checkpoint_every": 10, "log_every": 5},
        "avb": {"steps": 20, "batch_size": 32, "hidden": 16, "noise_dim": 4, "adv_hidden": 16, "adv_blocks": 1,
                "checkpoint_every": 10, "log_every": 5},
        "metrics": {"divergence_samples": 50, "divergence_repeats": 2, "quad_grid": 101, "kl_repeats": 2},
    },
}

# Environment variables that make torch, MKL or oneDNN take other kernels (other last bits): part of the fingerprint.
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
# torch threads of every job of CONFIG (threads, toy.threads, schools.threads): part of the fingerprint.
JOB_THREADS = 1

_TRAIN_TIMING = ("images_per_s",)
_MNIST_RUNS = [f"runs/mnist/{m}/z2/seed0" for m in CONFIG["methods"]]
# Compared outputs (paths below results/<preset>/) -> the columns left out: wall-clock timings and throughputs
# (no output here holds a path or a machine name; every other column is compared).
COMPARED: dict[str, tuple[str, ...]] = {
    **{f"{run}/eval_per_image.csv": () for run in _MNIST_RUNS},
    **{f"{run}/train_metrics.csv": _TRAIN_TIMING for run in _MNIST_RUNS},
    "summary.csv": ("eval_seconds",),
    "table2.csv": (),
    "claims.csv": (),
    "toy/summary.csv": ("eval_seconds",),
    "toy/table1.csv": (),
    **{f"toy/{m}/train_metrics.csv": _TRAIN_TIMING for m in CONFIG["toy"]["methods"]},
    "schools/summary.csv": ("seconds",),
    "schools/per_parameter.csv": (),
    "schools/kl_curve.csv": (),
    **{f"schools/{m}/train_metrics.csv": _TRAIN_TIMING for m in CONFIG["schools"]["methods"]},
}


def fingerprint() -> dict:
    """What decides whether a rerun can be bit-identical: CPU model, the kernels torch dispatches to on it (and the
    environment variables that force other kernels), library versions, the machine type and the jobs' torch threads."""
    import numpy
    import scipy
    import torch

    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor() or "unknown"
    return {"cpu_model": model, "machine": platform.machine(), "torch_cpu_capability":
            torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__, "numpy": numpy.__version__,
            "scipy": scipy.__version__, "python": platform.python_version(), "torch_threads": JOB_THREADS,
            "kernel_env": {k: os.environ.get(k) for k in KERNEL_ENV}}


def _env(repo: Path) -> dict[str, str]:
    """The environment of the run: ``repo`` first on PYTHONPATH, the venv off PATH (jobs find their interpreter
    through the Snakefile, as a user's unactivated ``.venv/bin/snakemake`` does)."""
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p).resolve() != BIN.resolve()]
    pythonpath = os.pathsep.join([str(repo), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "PATH": os.pathsep.join(path), "PYTHONPATH": pythonpath}


def command(repo: Path, workdir: Path, config: Path, cores: int = 2) -> list[str]:
    targets = [f"results/{PRESET}/{p}" for p in COMPARED]
    return [str(BIN / "snakemake"), "-s", str(repo / "Snakefile"), "-d", str(workdir), "--cores", str(cores),
            *targets, "--configfile", str(config)]


def run_pipeline(repo: Path, workdir: Path, cores: int = 2, timeout: float = 1800) -> Path:
    """Run CONFIG with the code of ``repo`` in ``workdir``; returns results/<preset>/. Raises naming the failure."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / f"{PRESET}.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    r = subprocess.run(command(repo, workdir, cfg, cores), capture_output=True, text=True, env=_env(repo),
                       cwd=workdir, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"snakemake on {repo / 'Snakefile'} failed (exit {r.returncode}):\n"
                           f"{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    return workdir / "results" / PRESET


def read_table(path: Path, drop: tuple[str, ...] = ()) -> tuple[list[str], list[list[str]]]:
    """A compared CSV as its header and rows of cell text (no parsing: the text as written), less the columns
    ``drop``. Raises naming the file if a column to drop is missing or a row is ragged."""
    with open(path, newline="") as f:
        header, *rows = list(csv.reader(f))
    missing = [c for c in drop if c not in header]
    if missing:
        raise KeyError(f"{path}: excluded column(s) {missing} not found (columns: {header})")
    if any(len(row) != len(header) for row in rows):
        raise ValueError(f"{path}: a row has not the {len(header)} cells of the header")
    keep = [i for i, c in enumerate(header) if c not in drop]
    return [header[i] for i in keep], [[row[i] for i in keep] for row in rows]


def write_table(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([header, *rows])


def _git(repo: Path, *args: str) -> str:
    r = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else "unknown"


def capture(repo: Path, dest: Path, workdir: Path | None = None, argv: list[str] | None = None) -> dict:
    """Run CONFIG with ``repo``'s code and write the compared outputs and manifest.json under ``dest``."""
    with tempfile.TemporaryDirectory(prefix="avb-golden-") as tmp:
        work = workdir or Path(tmp)
        results = run_pipeline(repo, work)
        if dest.exists():
            shutil.rmtree(dest)
        for rel, drop in COMPARED.items():
            write_table(dest / rel, *read_table(results / rel, drop))
    manifest = {
        "commit": _git(repo, "rev-parse", "HEAD"),
        "tree_clean": _git(repo, "status", "--porcelain", "--untracked-files=no") == "",
        "fingerprint": fingerprint(),
        "command": " ".join(argv or sys.argv),
        "snakemake": " ".join(command(repo, Path("<workdir>"), Path(f"<workdir>/{PRESET}.yaml"))),
        "config": CONFIG,
        "files": {rel: list(drop) for rel, drop in COMPARED.items()},
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", type=Path, help="folder of the golden outputs (replaced)")
    parser.add_argument("--repo", type=Path, default=ROOT, help="checkout whose code runs (default: this one)")
    parser.add_argument("--workdir", type=Path, help="keep the pipeline run here (default: a temporary folder)")
    args = parser.parse_args(argv)
    manifest = capture(args.repo.resolve(), args.dest.resolve(), args.workdir and args.workdir.resolve(),
                       ["python", "tests/golden/capture.py", *(argv if argv is not None else sys.argv[1:])])
    print(json.dumps({k: manifest[k] for k in ("commit", "tree_clean", "fingerprint")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
