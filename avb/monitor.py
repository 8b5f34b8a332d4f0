"""Watching a run while it trains: the metric CSV files, TensorBoard and validation (config ``monitor``; off by
default, when it writes nothing beyond train_metrics.csv and changes no output).

* CSV files (``train_metrics.csv``, and ``val_metrics.csv`` with validation, ``CsvLog``): each row is added as
  soon as it exists (every ``log_every`` steps) by **write-temp-and-replace**: the whole file, kept in memory, is
  written to a temporary file that is renamed over it, so a reader sees the file before or after the row, never
  part of it (the file always ends with a line break). These replacements are not fsynced; the durable copy is the
  checkpoint's, whose rows ``avb.train`` writes with fsync (``write_rows``) at every checkpoint and at the start
  of every run, which drops the rows a killed run added after its last checkpoint. So the file is at every moment
  a prefix of the uninterrupted run's file, and at the end equal to it byte for byte.
* TensorBoard (``monitor.tensorboard``): event files in ``<run>/tensorboard/`` with every train_metrics.csv column
  as ``train/<column>`` at each row, the validation numbers as ``val/<column>``, and a grid of the decoder's
  Bernoulli means at 64 fixed prior draws (``samples``) every ``sample_every`` steps and at the end. A resumed run
  purges the events after its checkpoint's step (``purge_step``), so the curves show no doubled stretch.
* Validation (``monitor.val_every`` > 0): ``avb.validate``; its rows in val_metrics.csv and in the checkpoint
  (``state_dict``), the best-validation weights in ``checkpoint.best.pt`` while the run trains and in
  ``model.best.pt`` at its end.

``Monitor`` is what ``avb.train.fit`` calls: ``begin`` once, ``log`` with each metrics row (a dict, read from the
device once per ``log_every``), ``after_step`` after each step, ``finish`` at the end, ``close`` always.
"""
from __future__ import annotations

import csv
import io as _io
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from . import io

TENSORBOARD_DIR = "tensorboard"
VAL_CSV = "val_metrics.csv"
GRID_SAMPLES = 64


def _lines(rows: Iterable[Mapping[str, Any]], fields: list[str], header: bool) -> str:
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)  # the csv module's default line break (\r\n), as every row has
    if header:
        w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def write_rows(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike, fields: list[str]) -> None:
    """The CSV file ``path`` (header ``fields``, then ``rows``) written atomically: temporary file, fsync, rename."""
    with io.atomic_path(path) as tmp:
        _write(tmp, _lines(rows, fields, header=True).encode())


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


class CsvLog:
    """A CSV file that grows by whole rows: each change replaces it atomically (a temporary file renamed over it),
    so that a reader sees the file before or after a row, never part of one.

    (Appending a line in one ``write`` is not enough: on ext4 a reader polling the file saw a line cut at a 4 KiB
    page boundary, tests/test_monitor.py.) The file's bytes are kept in memory, so a row costs one write of the
    file, no formatting of the rows before it. The replacements are not fsynced (``durable`` rewrites are): the
    durable copy is the checkpoint's, which ``avb.train`` writes with every checkpoint and at every start.
    """

    def __init__(self, path: str | os.PathLike, fields: list[str]):
        self.path, self.fields = Path(path), fields
        self._data = bytearray()

    def begin(self, rows: list[Mapping[str, Any]], resumed: bool) -> None:
        """At the start of a run: a resumed run's file rewritten durably (fsync) with the checkpoint's ``rows``; a
        run from step 0 removes the file of an earlier run, and its file appears with its first row (a run that
        stops before it, e.g. diverged at step 1, leaves none)."""
        data = _lines(rows, self.fields, header=True).encode()
        if resumed:
            with io.atomic_path(self.path) as tmp:
                _write(tmp, data)
        else:
            self.path.unlink(missing_ok=True)
        self._data = bytearray(data)

    def append(self, row: Mapping[str, Any]) -> None:
        """The file with ``row`` added (a failed write, e.g. a full disk, keeps the previous file and raises
        ``io.WriteFailed`` naming it)."""
        size = len(self._data)
        self._data += _lines([row], self.fields, header=False).encode()
        try:
            with io.atomic_path(self.path, sync=False) as tmp:
                _write(tmp, self._data)
        except BaseException:
            del self._data[size:]
            raise


def read_rows(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a CSV file as ``csv.DictReader`` gives them (a trailing partial line, which no writer here
    leaves, is ignored)."""
    text = Path(path).read_bytes().decode()
    if not text.endswith("\n"):
        text = text[:text.rfind("\n") + 1]
    return list(csv.DictReader(_io.StringIO(text, newline="")))


def settings_of(run: dict[str, Any]) -> dict[str, Any] | None:
    """The run config's ``monitor`` section with the schema's defaults filled in, or None where monitoring is off
    (no section: ``avb.jobs.train_config`` writes it only when something is on)."""
    given = run.get("monitor")
    if not given or run.get("experiment", "images") != "images":  # the toy and schools runs have no validation split
        return None
    from .config import section
    s = section("monitor", dict(given), "run config monitor section")
    return s if s["tensorboard"] or s["val_every"] > 0 else None


class TensorBoard:
    """Event files of one run in ``<out>/tensorboard/`` (``torch.utils.tensorboard``, imported only when used)."""

    def __init__(self, out: Path, purge_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out / TENSORBOARD_DIR), purge_step=purge_step)

    def scalars(self, prefix: str, row: Mapping[str, Any], step: int) -> None:
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(f"{prefix}/{key}", value, step)

    @torch.no_grad()
    def samples(self, model: torch.nn.Module, step: int, seed: int) -> None:
        """Decoder Bernoulli means at ``GRID_SAMPLES`` prior draws fixed by ``seed`` (8 x 8 grid, 28 x 28 images)."""
        from torchvision.utils import make_grid

        device = next(model.parameters()).device
        z = torch.randn(GRID_SAMPLES, model.z_dim, generator=torch.Generator().manual_seed(seed)).to(device)
        was_training = model.training
        model.eval()
        try:
            probs = torch.sigmoid(model.decoder(z)).float().cpu().view(GRID_SAMPLES, 1, 28, 28)
        finally:
            model.train(was_training)
        self.writer.add_image("samples", make_grid(probs, nrow=8, pad_value=1.0), step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Monitor:
    """TensorBoard and validation of one run, as its ``monitor`` settings ask (``settings`` None: both off; every
    method is then a no-op)."""

    def __init__(self, run: dict[str, Any], out: str | os.PathLike, settings: dict[str, Any] | None = None,
                 data_dir: str | os.PathLike | None = None):
        self.out, self.settings = Path(out), settings
        self.tb: TensorBoard | None = None
        self.validator = None
        self.val_rows: list[dict[str, float]] = []
        if settings and settings["val_every"] > 0:
            from .validate import VAL_FIELDS, Validator
            self.validator = Validator(run, settings, self.out, data_dir)
            self.val_log = CsvLog(self.out / VAL_CSV, VAL_FIELDS)

    @classmethod
    def for_run(cls, run: dict[str, Any], out: str | os.PathLike,
                data_dir: str | os.PathLike | None = None) -> "Monitor":
        """The monitor the run config ``run`` asks for (its ``monitor`` section; images runs only)."""
        return cls(run, out, settings_of(run), data_dir)

    def begin(self, step: int, state: dict[str, Any] | None) -> None:
        """At the start of a run at ``step`` (0, or the checkpoint's), with the checkpoint's ``state_dict`` (None
        from step 0): val_metrics.csv rewritten from the checkpoint's rows, checkpoint.best.pt kept or removed, the
        TensorBoard writer opened (purging the events after ``step``)."""
        if self.validator is not None:
            self.val_rows = [dict(r) for r in (state or {}).get("val_rows", [])] if step > 0 else []
            self.val_log.begin(self.val_rows, resumed=step > 0)
            self.validator.resume(step)
        if self.settings and self.settings["tensorboard"]:
            self.tb = TensorBoard(self.out, purge_step=step + 1 if step > 0 else None)  # the checkpoint's step stays

    def log(self, row: Mapping[str, Any]) -> None:
        """A train_metrics.csv row (``step`` and the means since the last row) to TensorBoard."""
        if self.tb is not None:
            self.tb.scalars("train", row, int(row["step"]))

    def due(self, step: int, n_steps: int) -> bool:
        """Whether ``after_step(model, step, n_steps)`` does anything (reads the model): the loop checks the
        parameters are finite before it does."""
        if self.validator is not None and self.validator.due(step, n_steps):
            return True
        return self.tb is not None and (step == n_steps or (self.settings["sample_every"] > 0
                                                            and step % self.settings["sample_every"] == 0))

    def after_step(self, model: torch.nn.Module, step: int, n_steps: int) -> float:
        """After iteration ``step``: a validation pass and a sample grid where they are due. Returns the seconds
        they took (0.0 when nothing was due), which the loop leaves out of its throughput."""
        if self.validator is None and self.tb is None:
            return 0.0
        t0 = time.perf_counter()
        if self.validator is not None and self.validator.due(step, n_steps):
            self._validate(model, step, final=step == n_steps)
        if self.tb is not None and (step == n_steps or (self.settings["sample_every"] > 0
                                                         and step % self.settings["sample_every"] == 0)):
            self.tb.samples(model, step, self.settings["seed"])
        return time.perf_counter() - t0

    def _validate(self, model: torch.nn.Module, step: int, final: bool) -> None:
        row = self.validator(model, step, final)
        self.val_rows.append(row)
        self.val_log.append(row)
        if self.tb is not None:
            self.tb.scalars("val", row, step)
        best = "" if self.validator.best is None else f" (best {self.validator.best:.2f})"
        print(f"[avb] step {step}: validation ELBO {row['elbo']:.2f}, IWAE {row['iwae']:.2f}{best}", flush=True)

    def finish(self, model: torch.nn.Module, step: int) -> None:
        """At the end (``step`` = train.steps): a pass at the last step where none was made (validation turned on
        for a run already trained), so that val_metrics.csv ends there, then model.best.pt published."""
        if self.validator is None:
            return
        if not self.val_rows or self.val_rows[-1]["step"] != step:
            self._validate(model, step, final=True)
        elif not self.validator.running_path.exists():
            self.validator(model, step, final=True)
        self.validator.publish()

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint holds of the monitor: the validation rows so far."""
        return {"val_rows": [dict(r) for r in self.val_rows]}

    def flush(self) -> None:
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
