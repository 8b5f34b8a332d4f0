"""Datasets: MNIST / Fashion-MNIST with dynamic binarisation and Larochelle's static binarised MNIST.

Where the files come from (the choice is logged):
  1. the ``data_dir`` config key, else 2. the ``AVB_DATA_DIR`` environment variable: an explicit folder is the only
     source. If it is missing, or lacks a file the dataset needs, that is an error naming the folder and the file:
     no fallback to another folder or a download;
  3. without either, ``../shared/data`` beside the checkout (when present, and it must then hold all of a
     dataset's files or none), else 4. a download into the cache dir (``AVB_CACHE_DIR`` or ``~/.cache/avb``) via
     torchvision / urllib.
Every file read (images and labels; found or downloaded) is checked against its published checksum before use; a
truncated or corrupt file is an error naming it. Source folders are only read.

Splits (fixed, as the official code's ``tools/download_mnist.py`` with TF ``read_data_sets(validation_size=5000)``):
MNIST / Fashion-MNIST training file images 0..4999 are the validation set, 5000..59999 the training set
(55k/5k), the 10k test file is the test set. Static MNIST keeps Larochelle's 50k/10k/10k files.
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("avb.data")

DATASETS = ("mnist", "fashion_mnist", "static_mnist")

# Published md5 of the official .gz files (LeCun / Zalando; identical to torchvision's resources).
_IDX_FILES: dict[str, tuple[str, dict[str, str]]] = {
    "mnist": ("MNIST", {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }),
    "fashion_mnist": ("FashionMNIST", {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }),
}
# Published SHA-1 of Larochelle's decompressed .amat files.
_STATIC_FILES = {
    "train": "cf70514ec5f481e54ad3eb0e6c03c83326ff96f8",
    "valid": "13418487742e6ea6d48db7b5187353a20b1b1f8c",
    "test": "ca70bd7775e182596dec148d4dc1bc6bd6c4c5f4",
}
_STATIC_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_{}.amat"
N_VALIDATION = 5000


class DataError(RuntimeError):
    """A data file is missing, corrupt or unreadable."""


@dataclass(frozen=True)
class Splits:
    """Images of one dataset as uint8 arrays [N, 28, 28]: grey levels 0..255, or 0/1 when ``static``."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    static: bool
    source: str

    def get(self, split: str) -> np.ndarray:
        if split not in ("train", "val", "test"):
            raise ValueError(f"unknown split {split!r}; expected train, val or test")
        return getattr(self, split)


def _digest(data: bytes, algo: str) -> str:
    return hashlib.new(algo, data).hexdigest()


def _repo_shared() -> list[Path]:
    here = Path(__file__).resolve().parent.parent
    return [Path.cwd() / ".." / "shared" / "data", here.parent / "shared" / "data"]


def cache_dir() -> Path:
    return Path(os.environ.get("AVB_CACHE_DIR", Path.home() / ".cache" / "avb"))


def explicit_root(data_dir: str | os.PathLike | None = None) -> tuple[str, Path] | None:
    """The folder the user named (config ``data_dir``, else ``AVB_DATA_DIR``) with its label, or None."""
    if data_dir:
        return "config data_dir", Path(data_dir)
    if os.environ.get("AVB_DATA_DIR"):
        return "env AVB_DATA_DIR", Path(os.environ["AVB_DATA_DIR"])
    return None


def candidate_roots(data_dir: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """Roots to search, in order, each with a label saying where it came from: the explicit folder alone where
    there is one, else ``../shared/data`` (where present)."""
    explicit = explicit_root(data_dir)
    if explicit is not None:
        return [explicit]
    roots: list[tuple[str, Path]] = []
    for p in _repo_shared():
        if p.is_dir():
            roots.append(("../shared/data", p.resolve()))
            break
    return roots


def _read_checked(path: Path, algo: str, expected: str, decompress: bool = False) -> bytes:
    """The bytes of ``path`` (decompressed first with ``decompress``) after checking their ``algo`` digest."""
    if not path.is_file():
        raise DataError(f"missing data file {path} (expected {algo} {expected})")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read data file {path}: {err}") from None
    try:
        data = gzip.decompress(raw) if decompress else raw
    except (EOFError, OSError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise DataError(f"data file {path} ({len(raw)} bytes) is truncated or not a gzip file ({err}); replace it "
                        f"(expected {algo} {expected})") from None
    got = _digest(data, algo)
    if got != expected:
        raise DataError(f"checksum mismatch for {path} ({len(raw)} bytes): {algo} is {got}, expected {expected}; the "
                        f"file is corrupt or truncated, replace it")
    return raw if not decompress else data


def _parse_idx_images(gz: bytes) -> np.ndarray:
    buf = gzip.decompress(gz)
    magic, n, rows, cols = np.frombuffer(buf[:16], dtype=">u4")
    if magic != 2051:
        raise DataError(f"not an idx3 image file (magic {magic})")
    return np.frombuffer(buf, dtype=np.uint8, offset=16).reshape(int(n), int(rows), int(cols)).copy()


def _parse_amat(text: bytes, n_expected: int) -> np.ndarray:
    # Each value is one character followed by a space or a newline: exactly two bytes per pixel.
    arr = np.frombuffer(text, dtype=np.uint8)
    if arr.size != n_expected * 784 * 2:
        raise DataError(f"binarised MNIST file has {arr.size} bytes, expected {n_expected * 784 * 2}")
    return (arr[::2] - ord("0")).reshape(n_expected, 28, 28).copy()


def _find(name: str, files: dict[str, str], algo: str, data_dir) -> tuple[str, Path] | None:
    """First root that holds the dataset's files. A root holding only some of them is an error; so is an explicit
    folder (``explicit_root``) that is missing or lacks one of them (it is the only source then)."""
    explicit = explicit_root(data_dir)
    if explicit is not None:
        label, root = explicit
        if not root.is_dir():
            raise DataError(f"{name}: the {label} folder {root} does not exist; an explicit data folder is the only "
                            f"source (unset it to use ../shared/data or a download)")
        missing = [r for r in files if not (root / r).is_file()]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise DataError(f"{name}: missing data file {root / missing[0]} in the {label} folder {root} (expected "
                            f"{algo} {files[missing[0]]}){more}; an explicit data folder is the only source (unset "
                            f"it to use ../shared/data or a download)")
        return label, root
    for label, root in candidate_roots(data_dir):
        present = {r: (root / r).is_file() for r in files}
        if all(present.values()):
            return label, root
        if any(present.values()):
            r = next(r for r, ok in present.items() if not ok)
            raise DataError(f"{name}: missing data file {root / r} in {label} (expected {algo} {files[r]})")
        log.info("%s: no files under %s (%s); trying the next source", name, root, label)
    return None


def _load_idx(name: str, data_dir) -> Splits:
    folder, files = _IDX_FILES[name]
    hit = _find(name, {f"{folder}/raw/{f}": md5 for f, md5 in files.items()}, "md5", data_dir)
    if hit is None:
        label, root = "torchvision download", cache_dir()
        _download_idx(name, root)
    else:
        label, root = hit
    imgs = {}
    for f, md5 in files.items():
        raw = _read_checked(root / folder / "raw" / f, "md5", md5)  # labels too: every file is verified
        if "images" in f:
            imgs[f] = _parse_idx_images(raw)
    train_all = imgs["train-images-idx3-ubyte.gz"]
    source = f"{label}: {root / folder / 'raw'}"
    log.info("dataset %s read from %s", name, source)
    return Splits(train=train_all[N_VALIDATION:], val=train_all[:N_VALIDATION],
                  test=imgs["t10k-images-idx3-ubyte.gz"], static=False, source=source)


def _download_idx(name: str, root: Path) -> None:
    import torchvision

    root.mkdir(parents=True, exist_ok=True)
    cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
    log.warning("dataset %s not found locally; downloading with torchvision into %s", name, root)
    for train in (True, False):
        cls(root=str(root), train=train, download=True)


def _load_static(data_dir) -> Splits:
    rel = {f"binarized_mnist/binarized_mnist_{s}.amat.gz": sha1 for s, sha1 in _STATIC_FILES.items()}
    hit = _find("static_mnist", rel, "sha1 of the decompressed file", data_dir)
    sizes = {"train": 50000, "valid": 10000, "test": 10000}
    out = {}
    if hit is None:
        root = cache_dir() / "binarized_mnist"
        label = "download"
        for s, sha1 in _STATIC_FILES.items():
            path = root / f"binarized_mnist_{s}.amat"
            if not path.is_file():
                _download_file(_STATIC_URL.format(s), path)
            out[s] = _parse_amat(_read_checked(path, "sha1", sha1), sizes[s])
        source = f"{label}: {root}"
    else:
        label, root = hit
        for s, sha1 in _STATIC_FILES.items():
            path = root / "binarized_mnist" / f"binarized_mnist_{s}.amat.gz"
            out[s] = _parse_amat(_read_checked(path, "sha1", sha1, decompress=True), sizes[s])
        source = f"{label}: {root / 'binarized_mnist'}"
    log.info("dataset static_mnist read from %s", source)
    return Splits(train=out["train"], val=out["valid"], test=out["test"], static=True, source=source)


def _download_file(url: str, path: Path) -> None:
    import urllib.request

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    log.warning("downloading %s to %s", url, path)
    urllib.request.urlretrieve(url, tmp)
    os.replace(tmp, path)


_CACHE: dict[tuple[str, str | None, str | None], Splits] = {}


def load(name: str, data_dir: str | os.PathLike | None = None) -> Splits:
    """Load (and memoise) the verified splits of dataset ``name``."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    key = (name, str(data_dir) if data_dir else None, os.environ.get("AVB_DATA_DIR"))
    if key not in _CACHE:
        _CACHE[key] = _load_static(data_dir) if name == "static_mnist" else _load_idx(name, data_dir)
    return _CACHE[key]


def binarize(images: np.ndarray | torch.Tensor, static: bool,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Images [N,28,28] -> float tensor [N,784] in {0,1} on the CPU.

    Dynamic binarisation (the official code's ``uniform <= pixel/255``) draws fresh Bernoulli pixels on every call.
    """
    x = torch.as_tensor(np.asarray(images)).reshape(len(images), -1)
    if static:
        return x.float()
    return (torch.rand(x.shape, generator=generator) <= x.float() / 255.0).float()


class Batches:
    """Endless shuffled minibatches of one split, binarised afresh on each read (unless static).

    On the host (the CPU path; default off CUDA): the images stay on the CPU, ``generator`` draws the order and the
    binarisation, each batch is copied to ``device``. On the device (``on_device``; default on CUDA): the uint8
    images go to ``device`` once, and the order and the binarisation are drawn there by a generator of the device's
    own, seeded with ``generator.initial_seed()`` (``generator`` itself is not used); its state is part of
    ``state_dict``, so a resumed run continues the same stream. The same draws as on the host (randperm, then
    ``uniform <= pixel / 255``): on the CPU both paths give identical batches; CUDA's generator gives other numbers
    from the same seed (reproducible on CUDA)."""

    def __init__(self, splits: Splits, split: str, batch_size: int, generator: torch.Generator,
                 device: torch.device | str = "cpu", on_device: bool | None = None):
        self.images = torch.as_tensor(splits.get(split))
        if batch_size > len(self.images):
            raise ValueError(f"batch_size {batch_size} exceeds the {len(self.images)} images of split {split!r}")
        self.static, self.batch_size, self.gen, self.device = splits.static, batch_size, generator, device
        self.on_device = torch.device(device).type == "cuda" if on_device is None else on_device
        if self.on_device:
            self.images = self.images.to(device)
            self.gen = torch.Generator(device=device).manual_seed(generator.initial_seed())
        self._perm: torch.Tensor | None = None
        self._pos = 0

    def state_dict(self) -> dict:
        if not self.on_device:
            return {"perm": self._perm, "pos": self._pos}
        return {"perm": None if self._perm is None else self._perm.cpu(), "pos": self._pos,
                "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        perm = state["perm"]
        if self.on_device:
            perm = None if perm is None else perm.to(self.device)
            if state.get("gen") is not None:  # absent: a checkpoint of the host path (another device)
                self.gen.set_state(state["gen"])
        self._perm, self._pos = perm, state["pos"]

    def __next__(self) -> torch.Tensor:
        n = len(self.images)
        if self._perm is None or self._pos + self.batch_size > len(self._perm):
            self._perm = (torch.randperm(n, generator=self.gen, device=self.device) if self.on_device
                          else torch.randperm(n, generator=self.gen))
            self._pos = 0
        idx = self._perm[self._pos:self._pos + self.batch_size]
        self._pos += self.batch_size
        if not self.on_device:
            return binarize(self.images[idx], self.static, self.gen).to(self.device)
        x = self.images[idx].reshape(len(idx), -1)
        if self.static:
            return x.float()
        return (torch.rand(x.shape, generator=self.gen, device=self.device) <= x.float() / 255.0).float()

    def __iter__(self):
        return self
