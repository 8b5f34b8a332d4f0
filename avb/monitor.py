"""Watching a run while it trains: the metric CSV files, TensorBoard and validation (config ``monitor``; off by
default, when it writes nothing beyond train_metrics.csv and changes no output).

* CSV files (``train_metrics.csv``, and ``val_metrics.csv`` with validation): each row is **appended** as soon as it
  exists (every ``log_every`` steps), as one whole line in one ``os.write`` on a descriptor opened with ``O_APPEND``,
  so that a reader of the growing file sees whole rows only (the file always ends with a line break); a failed
  write (full disk) is cut back to the last whole row and raises ``io.WriteFailed``. Appends are not fsynced: the
  durable copy is the checkpoint's, whose rows ``avb.train`` writes atomically (``write_rows``: temporary file,
  fsync, rename) with every checkpoint and at the start of every run, which drops the rows a killed run appended
  after its last checkpoint. So the file is at every moment a prefix of the uninterrupted run's file, and at the
  end equal to it byte for byte.
* TensorBoard (``monitor.tensorboard``): event files in ``<run>/tensorboard/`` with every train_metrics.csv column
  as ``train/<column>`` at each row, the validation numbers as ``val/<column>``, and a grid of the decoder's
  Bernoulli means at 64 fixed prior draws (``samples``) every ``sample_every`` steps and at the end. A resumed run
  purges the events after its checkpoint's step (``purge_step``), so the curves show no doubled stretch.
* Validation (``monitor.val_every`` > 0): ``avb.validate``; its rows in val_metrics.csv and in the checkpoint
  (``state_dict``), the best-validation weights in ``model.best.pt``.

``Monitor`` is what ``avb.train.fit`` calls: ``begin`` once, ``log`` with each metrics row (a dict, read from the
device once per ``log_every``), ``after_step`` after each step, ``finish`` at the end, ``close`` always.
"""
from __future__ import annotations

import csv
import io as _io
import math
import os
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
        tmp.write_bytes(_lines(rows, fields, header=True).encode())


def append_row(row: Mapping[str, Any], path: str | os.PathLike, fields: list[str]) -> None:
    """Append ``row`` to the CSV file ``path`` as one whole line in one write (``O_APPEND``): a reader never sees
    part of it. A write that fails, or writes only part of the line, is cut back to the file's previous end and
    raises ``io.WriteFailed`` naming the file and the free space."""
    line = _lines([row], fields, header=False).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        size = os.fstat(fd).st_size
        try:
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(28, f"only {written} of {len(line)} bytes written")
        except OSError as err:
            os.ftruncate(fd, size)
            raise io.WriteFailed(err.errno or 5, f"could not append to {path}: {err.strerror or err}; "
                                 f"{io.free_space(Path(path).parent)} free on its file system (its rows up to the "
                                 f"last one are kept)") from err
    finally:
        os.close(fd)


def read_rows(path: str | os.PathLike) -> list[dict[str, str]]:
    """The whole rows of a CSV file written by ``write_rows`` / ``append_row`` (a trailing partial line, which a
    writer never leaves, is ignored)."""
    text = Path(path).read_text(newline="")
    if not text.endswith("\n"):
        text = text[:text.rfind("\n") + 1]
    return list(csv.DictReader(_io.StringIO(text, newline="")))


def settings_of(run: dict[str, Any]) -> dict[str, Any] | None:
    """The run config's ``monitor`` section with the schema's defaults filled in, or None where monitoring is off
    (no section: ``avb.jobs.train_config`` writes it only when something is on)."""
    given = run.get("monitor")
    if not given:
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
            from .validate import Validator
            self.validator = Validator(run, settings, self.out, data_dir)

    @classmethod
    def for_run(cls, run: dict[str, Any], out: str | os.PathLike,
                data_dir: str | os.PathLike | None = None) -> "Monitor":
        """The monitor the run config ``run`` asks for (its ``monitor`` section; images runs only)."""
        return cls(run, out, settings_of(run), data_dir)

    @property
    def val_csv(self) -> Path:
        return self.out / VAL_CSV

    def begin(self, step: int, state: dict[str, Any] | None) -> None:
        """At the start of a run at ``step`` (0, or the checkpoint's), with the checkpoint's ``state_dict`` (None
        from step 0): val_metrics.csv rewritten from the checkpoint's rows, model.best.pt kept or removed, the
        TensorBoard writer opened (purging the events after ``step``)."""
        if self.validator is not None:
            self.val_rows = [dict(r) for r in (state or {}).get("val_rows", [])] if step > 0 else []
            from .validate import VAL_FIELDS
            write_rows(self.val_rows, self.val_csv, VAL_FIELDS)
            self.validator.resume(step)
        if self.settings and self.settings["tensorboard"]:
            self.tb = TensorBoard(self.out, purge_step=step if step > 0 else None)

    def log(self, row: Mapping[str, Any]) -> None:
        """A train_metrics.csv row (``step`` and the means since the last row) to TensorBoard."""
        if self.tb is not None:
            self.tb.scalars("train", row, int(row["step"]))

    def after_step(self, model: torch.nn.Module, step: int, n_steps: int) -> None:
        """After iteration ``step``: a validation pass and a sample grid where they are due."""
        if self.validator is not None and self.validator.due(step, n_steps):
            self._validate(model, step, final=step == n_steps)
        if self.tb is not None and (step == n_steps or (self.settings["sample_every"] > 0
                                                         and step % self.settings["sample_every"] == 0)):
            self.tb.samples(model, step, self.settings["seed"])

    def _validate(self, model: torch.nn.Module, step: int, final: bool) -> None:
        from .validate import VAL_FIELDS
        row = self.validator(model, step, final)
        self.val_rows.append(row)
        append_row(row, self.val_csv, VAL_FIELDS)
        if self.tb is not None:
            self.tb.scalars("val", row, step)
        best = "" if self.validator.best is None else f" (best {self.validator.best:.2f})"
        print(f"[avb] step {step}: validation ELBO {row['elbo']:.2f}, IWAE {row['iwae']:.2f}{best}", flush=True)

    def finish(self, model: torch.nn.Module, step: int) -> None:
        """At the end (``step`` = train.steps): a pass at the last step where none was made (validation turned on
        for a run already trained), so that val_metrics.csv ends there and model.best.pt exists."""
        if self.validator is None:
            return
        if not self.val_rows or self.val_rows[-1]["step"] != step:
            self._validate(model, step, final=True)
        elif not self.validator.best_path.exists():
            self.validator(model, step, final=True)

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
