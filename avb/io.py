"""File input / output that fails clearly.

Output is atomic: written to a temporary file ``.<name>.<random>.tmp`` beside the target, fsynced, then renamed over
it; a write that fails (a full disk, a quota) raises ``WriteFailed`` naming the file and the free space, and the
previous file is kept. Torch files are read with ``torch.load(weights_only=True)`` only (``load_torch``): tensors and
plain values load, anything else (a pickled object, i.e. code) is refused with ``UnsafeFile`` and never executed;
an unreadable file raises ``CorruptFile``. Both name the file. ``require_finite`` / ``check_eval_jsons`` refuse
non-finite results.
"""
from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

log = logging.getLogger("avb.io")

# The temporary files atomic_path makes: "." + target name + "." + mkstemp's 8 random characters + ".tmp".
TEMP_PATTERN = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
# Errors of a write that ran out of room (OSError) and torch's writer's wording for the same (RuntimeError).
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_TORCH_WRITE_FAILURE = ("inline_container", "PytorchStreamWriter", "unexpected pos", "file write failed")
# What torch's weights-only unpickler says of a file that wants to import or call something.
_UNSAFE = re.compile(r"GLOBAL|global|allowlisted|safe_globals|reduce|Can only (build|create)")


class WriteFailed(OSError):
    """An output file could not be written (full disk, quota, I/O error); the previous file is kept."""


class CorruptFile(RuntimeError):
    """A file exists but cannot be read (truncated, corrupt, not the expected format)."""


class UnsafeFile(CorruptFile):
    """A torch file holds something other than tensors and plain values; it was not loaded."""


class NonFiniteResult(ValueError):
    """A result that must be a number is NaN or infinite."""


def _size(n: float) -> str:
    unit = "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            break
        n /= 1024
    return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"


def free_space(folder: str | os.PathLike) -> str:
    """Free space on the file system of ``folder``, human-readable ("unknown" where it cannot be read)."""
    try:
        return _size(shutil.disk_usage(folder).free)
    except OSError:
        return "unknown"


def _write_failure(err: BaseException) -> str | None:
    """Why ``err`` is a failed write (a reason to report), or None where it is some other error."""
    if isinstance(err, OSError) and err.errno in _FULL_ERRNOS | {errno.EIO}:
        return os.strerror(err.errno)
    if isinstance(err, RuntimeError) and any(m in str(err) for m in _TORCH_WRITE_FAILURE):
        return f"torch could not write the file ({str(err).splitlines()[0][:200]})"
    return None


@contextmanager
def atomic_path(path: str | os.PathLike, backup: str | os.PathLike | None = None,
                sync: bool = True) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces ``path``, on error it is removed and ``path`` is untouched.

    With ``backup``, an existing ``path`` is renamed to ``backup`` just before the new file takes its place (a kill
    between the two renames leaves ``backup`` only). ``sync=False`` skips the fsync before the rename: the
    replacement is still atomic for readers, but not durable across a power loss (for a file rewritten often whose
    durable copy is written elsewhere: ``avb.monitor.CsvLog``).

    A failed write (disk full, quota exceeded, I/O error; also torch's writer's RuntimeError for the same) raises
    ``WriteFailed`` naming ``path`` and the free space left on its file system.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are shared files, so honour the umask instead
    try:
        yield Path(tmp)
        if sync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        if backup is not None and path.exists():
            os.replace(path, backup)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        reason = _write_failure(err)
        if reason is None or isinstance(err, WriteFailed):
            raise
        if os.path.exists(tmp):
            os.unlink(tmp)  # first, so that the free space reported counts the room the partial file took
        kept = f"the previous {path.name} is kept" if path.exists() else f"{path.name} was not written"
        raise WriteFailed(err.errno if isinstance(err, OSError) else errno.EIO,
                          f"could not write {path}: {reason}; {free_space(path.parent)} free on its file system "
                          f"({kept})") from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files ``atomic_path`` leaves behind when a process is killed mid-write (top level of
    ``folder`` only); each removal is logged. Returns the removed paths."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in sorted(folder.iterdir()):
        if TEMP_PATTERN.match(p.name) and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
            log.warning("removed %s, a partial file left by a killed write", p)
    return removed


def save_torch(obj: Any, path: str | os.PathLike, backup: str | os.PathLike | None = None) -> None:
    """``torch.save`` atomically (``backup``: see ``atomic_path``). Save tensors and plain values only:
    ``load_torch`` refuses anything else."""
    import torch  # here, not at import: the Snakefile uses this module and must not pay for importing torch
    with atomic_path(path, backup) as tmp:
        torch.save(obj, tmp)


def load_torch(path: str | os.PathLike, map_location: Any = "cpu", required: Iterable[str] = ()) -> dict:
    """A dict saved by ``save_torch``, read with ``torch.load(weights_only=True)``: no pickled code runs.

    Raises ``FileNotFoundError``, ``UnsafeFile`` (objects other than tensors and plain values: refused, never
    executed) or ``CorruptFile`` (unreadable, not a dict, or lacking a key of ``required``), each naming ``path``.
    """
    import pickle

    import torch
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of non-torch files; the error says it
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's restricted unpickler refused the file: an object it would have to import or call is unsafe;
        # anything else it stumbled over (an unknown opcode in random bytes) is damage
        lines = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
        what = next((line for line in lines if _UNSAFE.search(line)), None)
        if str(err).startswith("Weights only load failed") and what is not None:
            raise UnsafeFile(f"{path}: refused to load: it holds more than tensors and plain values ({what}); "
                             f"avb never unpickles objects. Delete the file (or restore it from a trusted copy)"
                             ) from None
        reason = next((line for line in lines if not line.startswith(("Please file", "Check the documentation"))),
                      "unpickling error")
        raise CorruptFile(f"{path}: cannot be read as a torch file ({reason[:200]}); it is truncated or corrupt"
                          ) from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError, TypeError) as err:
        first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise CorruptFile(f"{path}: cannot be read as a torch file ({type(err).__name__}: {first}); it is truncated "
                          f"or corrupt") from None
    if not isinstance(obj, dict):
        raise CorruptFile(f"{path}: holds a {type(obj).__name__}, not the dict avb writes")
    missing = [k for k in required if k not in obj]
    if missing:
        raise CorruptFile(f"{path}: lacks {', '.join(missing)}; not a file avb wrote")
    return obj


def require_finite(columns: Mapping[str, Iterable[float]], what: str) -> None:
    """Raise ``NonFiniteResult`` naming ``what`` if any value of ``columns`` (name -> values) is NaN or infinite."""
    for name, values in columns.items():
        vals = [float(v) for v in (values if isinstance(values, Iterable) else [values])]
        bad = [i for i, v in enumerate(vals) if not math.isfinite(v)]
        if bad:
            raise NonFiniteResult(f"{what}: {name} is not finite for {len(bad)} of {len(vals)} value(s) (first: "
                                  f"index {bad[0]}, {vals[bad[0]]}); refusing to write or report it")


# eval.json fields that must be numbers (others may be NaN by design: iwae for plain AVB, se with one image, bdmc_*
# when disabled).
EVAL_FINITE_FIELDS = ("log_px_ais", "elbo")


def check_eval_jsons(paths: Iterable[str | os.PathLike]) -> None:
    """Refuse (``NonFiniteResult``, naming the file) any eval.json whose log p(x) or ELBO is missing, NaN or
    infinite: the report path calls this before it reads the files into tables."""
    for p in paths:
        try:
            d = json.loads(Path(p).read_text())
        except (OSError, ValueError) as err:
            raise CorruptFile(f"{p}: cannot be read as JSON ({err})") from None
        for key in EVAL_FINITE_FIELDS:
            v = d.get(key) if isinstance(d, dict) else None
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise NonFiniteResult(f"{p}: {key} = {v!r} is not a finite number; the run's evaluation is "
                                      f"refused (retrain or re-evaluate it)")


def write_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(obj: Any, path: str | os.PathLike) -> None:
    write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def write_csv(df, path: str | os.PathLike) -> None:
    """Write a pandas DataFrame as CSV atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
