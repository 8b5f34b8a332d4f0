"""One eight-schools fit (``avb schools fit``): a method trained by the one loop (``avb.train.fit``: checkpoints,
resume, NaN guard, metrics CSV) with posterior snapshots during training (``avb.schools_kl.Snapshots``, for Figure 3),
then its posterior draws, ELBO estimate and ``fit.json``. The model and methods: ``avb.schools``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from . import io
from .schools import draw, elbo_estimate
from .schools_kl import SNAPSHOT_FILE, Snapshots
from .train import fit, setup


def fit_method(run: dict[str, Any], out_dir: str | Path, progress: bool = False) -> dict[str, Any]:
    """Train one method with ``avb.train.fit`` (checkpoints, resume, NaN guard, metrics CSV); write ``samples.npz``
    (``run['n_samples']`` draws), ``snapshots.npz`` (draws during training for the KL curve, ``avb.schools_kl``) and
    ``fit.json`` into ``out_dir``."""
    out = Path(out_dir)
    model, batches, data_gen = setup(run)
    out.mkdir(parents=True, exist_ok=True)
    snapshots = Snapshots(model, run, out / SNAPSHOT_FILE)
    t0 = time.perf_counter()
    if 0 not in snapshots.samples:
        snapshots.take(0)               # the model as built (a resumed fit's model is this one until it loads)
    fit(model, batches, data_gen, run, out, progress, on_step=snapshots)
    seconds = time.perf_counter() - t0
    if snapshots.missing():             # e.g. resumed from a finished checkpoint after snapshots.npz was deleted
        print(f"[avb] {out / SNAPSHOT_FILE}: no snapshot at iterations {snapshots.missing()} (delete checkpoint.pt "
              f"to retrain them)", flush=True)
    samples = draw(model, run["n_samples"], run["seed"] + 2)
    elbo, elbo_se = elbo_estimate(model, min(run["n_samples"], 10000), run["seed"] + 3)
    with io.atomic_path(out / "samples.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, samples=samples)
    info = {"method": run["method"], "steps": run["train"]["steps"], "train_seconds": seconds, "elbo": elbo,
            "elbo_se": elbo_se, "elbo_is_bound": model.elbo_is_bound,
            "snapshot_iterations": sorted(snapshots.samples), "run": run}
    io.write_json(info, out / "fit.json")
    return info
