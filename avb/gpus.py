"""One GPU per job, or K jobs per GPU, on a workstation with several GPUs: each job takes a device slot for its
lifetime.

Snakemake caps how many GPU jobs run at once (each holds one ``gpu_slots``; ``--resources gpu_slots=N``, default 1
in ``profiles/default``); this module decides *which* GPU each running job gets. It is switched on by the
environment of the Snakemake invocation (jobs inherit it), never by a preset (a machine's GPUs are no setting of a
run):

* ``AVB_GPUS``: the devices to spread jobs over, as ``CUDA_VISIBLE_DEVICES`` takes them (``0,1`` or GPU UUIDs:
  the machine's own ids; a job's ``CUDA_VISIBLE_DEVICES`` is replaced by its slot's device). Unset or empty:
  nothing is done; every job uses the first visible GPU (what the scheduler or the user set). Ignored inside a
  SLURM job (``SLURM_JOB_ID`` set; sbatch passes the submitting shell's environment on): there the allocation's
  GPUs are SLURM's to assign.
* ``AVB_JOBS_PER_GPU``: K, the jobs that may share one device (default 1). Snakemake's ``gpu_slots`` should be
  K x the number of devices; a mismatch is safe: with more Snakemake slots than device slots, a job waits for a
  free device slot (logged), and no device ever holds more than K jobs.
* ``AVB_GPU_LOCK_DIR``: the folder of the lock files (default ``<tmp>/avb-gpu-slots-<uid>``).

A slot is an exclusive ``fcntl.flock`` on the lock file ``<device>.<k>.lock`` (one per device x K), held while the
job's process lives: the kernel releases it when the process exits, however it dies (SIGKILL included), so a killed
job's slot is free at once. Slots are tried slot-major (slot 0 of every device before slot 1 of any), so jobs
spread over the devices before they share one. The job then sets ``CUDA_VISIBLE_DEVICES`` to its device, before
torch initialises CUDA, so that ``auto`` / ``cuda`` mean that device (``cuda:0`` inside the job). A job whose device
is ``cpu``, or an explicit ``cuda:N`` (the user's choice, kept), takes no slot.

Like ``avb.config``, this module imports no torch.
"""
from __future__ import annotations

import dataclasses
import fcntl
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Callable

ENV_GPUS, ENV_PER_GPU, ENV_LOCK_DIR = "AVB_GPUS", "AVB_JOBS_PER_GPU", "AVB_GPU_LOCK_DIR"
ENV_JOBS_HINT = f"{ENV_PER_GPU} x the devices of {ENV_GPUS}"


@dataclasses.dataclass
class Slot:
    """A held device slot: device ``device`` (a ``CUDA_VISIBLE_DEVICES`` entry), slot ``index`` of ``per_device``."""

    device: str
    index: int
    per_device: int
    path: Path
    handle: IO[str] | None = dataclasses.field(default=None, repr=False)

    def release(self) -> None:
        """Give the slot back (closing the lock file releases the lock); idempotent."""
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def __enter__(self) -> "Slot":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def devices_from_env(environ: dict[str, str] | None = None) -> list[str]:
    """The device list of ``AVB_GPUS`` (empty where unset); an entry may be an index, a GPU or MIG UUID, not empty,
    and none twice."""
    env = os.environ if environ is None else environ
    raw = env.get(ENV_GPUS, "").strip()
    if not raw:
        return []
    devs = [d.strip() for d in raw.split(",")]
    if any(not d or not all(c.isalnum() or c in "-_:/" for c in d) for d in devs) or len(set(devs)) != len(devs):
        raise ValueError(f"{ENV_GPUS}={raw!r}: expected distinct device ids separated by commas, e.g. 0,1 "
                         f"(as CUDA_VISIBLE_DEVICES takes them)")
    return devs


def per_device_from_env(environ: dict[str, str] | None = None) -> int:
    """K of ``AVB_JOBS_PER_GPU`` (default 1)."""
    env = os.environ if environ is None else environ
    raw = env.get(ENV_PER_GPU, "").strip() or "1"
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{ENV_PER_GPU}={raw!r}: expected a whole number >= 1 (jobs sharing one GPU)")
    return int(raw)


def lock_dir_from_env(environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get(ENV_LOCK_DIR) or Path(tempfile.gettempdir()) / f"avb-gpu-slots-{os.getuid()}")


def _safe(device: str) -> str:
    return device.replace(":", "_").replace("/", "_")


def try_acquire(devices: list[str], per_device: int, lock_dir: str | os.PathLike) -> Slot | None:
    """The first free slot (slot-major: slot 0 of each device in order, then slot 1, ...), locked; None if all
    ``len(devices) x per_device`` slots are held."""
    folder = Path(lock_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(per_device):
        for dev in devices:
            path = folder / f"{_safe(dev)}.{k}.lock"
            handle = open(path, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")  # for a person only
            handle.flush()
            return Slot(dev, k, per_device, path, handle)
    return None


def acquire(devices: list[str], per_device: int, lock_dir: str | os.PathLike, poll_s: float = 2.0,
            timeout_s: float | None = None, say: Callable[[str], None] | None = None) -> Slot:
    """A free slot, waiting (polling every ``poll_s`` seconds) while all are held; ``TimeoutError`` after
    ``timeout_s`` (None: wait for ever). ``say`` is told once that the job waits."""
    if not devices:
        raise ValueError("no devices to take a slot of")
    t0, told = time.monotonic(), False
    while True:
        slot = try_acquire(devices, per_device, lock_dir)
        if slot is not None:
            return slot
        if timeout_s is not None and time.monotonic() - t0 >= timeout_s:
            raise TimeoutError(f"all {len(devices)} x {per_device} GPU slots in {lock_dir} stayed busy for "
                               f"{timeout_s:.0f} s")
        if not told and say is not None:
            say(f"all {len(devices)} x {per_device} GPU slots in {lock_dir} are busy (Snakemake's gpu_slots is "
                f"above {ENV_JOBS_HINT}); waiting for one")
            told = True
        time.sleep(poll_s)


_held: list[Slot] = []  # the slot of this process, kept open for its lifetime


def wants_slot(device: str) -> bool:
    """Whether a job on ``device`` takes a slot: ``auto`` and ``cuda`` do; ``cpu`` and an explicit ``cuda:N`` do not."""
    return device in ("auto", "cuda")


def claim(device: str, environ: dict[str, str] | None = None,
          say: Callable[[str], None] | None = None) -> Slot | None:
    """At the start of a job on ``device``: with ``AVB_GPUS`` set, take a slot for the life of this process and set
    ``CUDA_VISIBLE_DEVICES`` to its device; returns it (None where no slot is taken). Call it before anything
    initialises CUDA: after that, ``CUDA_VISIBLE_DEVICES`` would no longer count (a RuntimeError says so)."""
    env = os.environ if environ is None else environ
    say = say or (lambda msg: print(f"[avb] {msg}", file=sys.stderr, flush=True))
    devices = devices_from_env(env)
    if not devices:
        return None
    if env.get("SLURM_JOB_ID"):
        say(f"{ENV_GPUS}={env[ENV_GPUS]} ignored inside SLURM job {env['SLURM_JOB_ID']} (its GPUs are SLURM's)")
        return None
    if not wants_slot(device):
        say(f"device {device}: takes no GPU slot ({ENV_GPUS}={env[ENV_GPUS]} is for devices auto / cuda)")
        return None
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise RuntimeError("avb.gpus.claim: CUDA is already initialised in this process; a GPU slot must be taken "
                           "before the first CUDA call")
    slot = acquire(devices, per_device_from_env(env), lock_dir_from_env(env), say=say)
    env["CUDA_VISIBLE_DEVICES"] = slot.device
    _held.append(slot)
    say(f"GPU slot {slot.index + 1} of {slot.per_device} on device {slot.device} ({ENV_GPUS}={env[ENV_GPUS]}; "
        f"lock {slot.path}); CUDA_VISIBLE_DEVICES={slot.device}")
    return slot
