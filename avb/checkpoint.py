"""A run folder's checkpoint: what it holds, reading it back (a corrupt one set aside for the one before), and
whether a run config may continue it (``config_change``). ``avb.train.fit`` writes it and resumes from it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import io

CHECKPOINT_KEYS = ("run", "step", "metrics", "model", "opt_primal", "opt_adversary", "batches", "rng")
# The run-config keys that may change between a checkpoint and its resumption (raising it continues the run).
CONTINUABLE_KEYS = ("train.steps",)
# Run-config sections that never change the training (monitoring: avb.monitor): they too may change on resumption.
UNTRAINED_SECTIONS = ("monitor.",)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_change(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """Why a checkpoint written for run config ``old`` cannot be continued under ``new``, or None where it can:
    the two may differ in ``CONTINUABLE_KEYS`` (``train.steps``) and ``UNTRAINED_SECTIONS`` (``monitor``) only."""
    a, b = _flat(old), _flat(new)
    changed = [k for k in sorted(a.keys() | b.keys()) if k not in CONTINUABLE_KEYS and not
               k.startswith(UNTRAINED_SECTIONS) and a.get(k, "<unset>") != b.get(k, "<unset>")]
    if not changed:
        return None
    shown = ", ".join(f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in changed[:5])
    return shown + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")


def load_checkpoint(out: Path) -> dict[str, Any] | None:
    """The newest readable checkpoint of run folder ``out`` (on the CPU), or None where there is none.

    A corrupt ``checkpoint.pt`` is moved to ``checkpoint.corrupt.pt`` (kept for inspection) and ``checkpoint.prev.pt``
    is used instead, both logged; with no readable checkpoint left, ``io.CorruptFile`` names them. A file holding
    more than tensors and plain values is never loaded and never skipped over: ``io.UnsafeFile``.
    """
    current, prev = out / "checkpoint.pt", out / "checkpoint.prev.pt"
    errors = []
    for path in (current, prev):
        if not path.exists():
            continue
        try:
            ck = io.load_torch(path, "cpu", CHECKPOINT_KEYS)
        except io.UnsafeFile:
            raise
        except io.CorruptFile as err:
            errors.append(str(err))
            if path == current:
                os.replace(current, out / "checkpoint.corrupt.pt")
                print(f"[avb] {err}; moved it to {out / 'checkpoint.corrupt.pt'}", flush=True)
            continue
        if path == prev:
            print(f"[avb] using the previous checkpoint {prev} (step {ck['step']})", flush=True)
        return ck
    if errors:
        raise io.CorruptFile(f"no readable checkpoint in {out}: {'; '.join(errors)}. Delete the checkpoint files "
                             f"to train {out} from the start")
    return None
