"""Data: verified sources, the official 55k/5k/10k split, dynamic vs static binarisation."""
import gzip
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from avb import data

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not beside the checkout")


@needs_shared
def test_mnist_split_sizes_and_order():
    s = data.load("mnist")
    assert (len(s.train), len(s.val), len(s.test)) == (55000, 5000, 10000)
    raw = np.frombuffer(gzip.open(SHARED / "MNIST/raw/train-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
    raw = raw.reshape(-1, 28, 28)
    # TF read_data_sets(validation_size=5000): the FIRST 5000 training images are the validation set.
    assert np.array_equal(s.val, raw[:5000]) and np.array_equal(s.train, raw[5000:])
    assert "../shared/data" in s.source


@needs_shared
def test_fashion_and_static_split_sizes():
    f = data.load("fashion_mnist")
    assert (len(f.train), len(f.val), len(f.test)) == (55000, 5000, 10000) and not f.static
    st = data.load("static_mnist")
    assert (len(st.train), len(st.val), len(st.test)) == (50000, 10000, 10000) and st.static


@needs_shared
def test_dynamic_binarisation_statistics():
    s = data.load("mnist")
    imgs = s.test[:2000]
    g = torch.Generator().manual_seed(0)
    a, b = data.binarize(imgs, False, g), data.binarize(imgs, False, g)
    assert set(torch.unique(a).tolist()) == {0.0, 1.0}
    # E[binary] = pixel/255 exactly; with fixed images the only noise is Bernoulli: sd <= sqrt(0.25 / n_pixels).
    target = imgs.astype(np.float64).mean() / 255
    sd = math.sqrt(0.25 / a.numel())
    assert abs(a.mean().item() - target) < 5 * sd
    assert abs(target - 0.13) < 0.01  # MNIST's mean intensity is ~0.13
    # Two reads of the same images are fresh draws: they differ, but only where 0 < pixel < 255.
    differ = (a != b).view(len(imgs), 28, 28).numpy()
    assert differ.mean() > 0.01
    assert not differ[(imgs == 0) | (imgs == 255)].any()


@needs_shared
def test_batches_redraw_each_read_and_static_is_fixed():
    s = data.load("mnist")
    g = torch.Generator().manual_seed(0)
    b = data.Batches(s, "val", 5000, g)  # the whole split, so both reads hold the same images (in another order)
    x1, p1 = next(b), b._perm.clone()
    b._pos = 0  # read the same permutation again
    x2 = next(b)
    assert torch.equal(b._perm, p1) and not torch.equal(x1, x2)
    st = data.load("static_mnist")
    assert set(np.unique(st.test).tolist()) == {0, 1}
    x_a = data.binarize(st.test[:100], True, torch.Generator().manual_seed(1))
    x_b = data.binarize(st.test[:100], True, torch.Generator().manual_seed(2))
    assert torch.equal(x_a, x_b) and torch.equal(x_a, torch.as_tensor(st.test[:100]).view(100, -1).float())
    assert abs(st.train.mean() - 0.1306) < 5e-4  # the published fraction of ones


def _copy_mnist(tmp_path: Path) -> Path:
    dst = tmp_path / "MNIST" / "raw"
    dst.mkdir(parents=True)
    for f in (SHARED / "MNIST" / "raw").iterdir():
        shutil.copy(f, dst / f.name)
    return tmp_path


@needs_shared
def test_checksum_mismatch_names_file_and_expected_value(tmp_path, monkeypatch):
    root = _copy_mnist(tmp_path)
    bad = root / "MNIST/raw/t10k-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-10] + b"0123456789")
    monkeypatch.setattr(data, "_CACHE", {})
    with pytest.raises(data.DataError, match=r"t10k-images-idx3-ubyte\.gz.*expected 9fb629c4189551a2d022fa330f9573f3"):
        data.load("mnist", data_dir=root)


@needs_shared
def test_missing_file_is_an_error_naming_it(tmp_path, monkeypatch):
    root = _copy_mnist(tmp_path)
    (root / "MNIST/raw/train-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setattr(data, "_CACHE", {})
    with pytest.raises(data.DataError, match=r"train-labels-idx1-ubyte\.gz.*d53e105ee54ea40749a09fcbcd1e9432"):
        data.load("mnist", data_dir=root)


@needs_shared
def test_source_order_config_then_env_then_shared(tmp_path, monkeypatch):
    cfg_root = _copy_mnist(tmp_path / "cfg")
    env_root = _copy_mnist(tmp_path / "env")
    monkeypatch.setattr(data, "_CACHE", {})
    monkeypatch.setenv("AVB_DATA_DIR", str(env_root))
    assert data.load("mnist", data_dir=cfg_root).source.startswith(f"config data_dir: {cfg_root}")
    assert data.load("mnist").source.startswith(f"env AVB_DATA_DIR: {env_root}")
    monkeypatch.delenv("AVB_DATA_DIR")
    assert data.load("mnist").source.startswith("../shared/data")
    # Reading never writes into the source folder.
    assert sorted(p.name for p in (cfg_root / "MNIST/raw").iterdir()) == sorted(
        p.name for p in (SHARED / "MNIST/raw").iterdir())


def test_unknown_dataset_and_split_are_named():
    with pytest.raises(ValueError, match="cifar"):
        data.load("cifar")


def _tiny_splits(static: bool = False, n: int = 40) -> "data.Splits":
    g = torch.Generator().manual_seed(3)
    imgs = torch.randint(0, 2 if static else 256, (n, 28, 28), generator=g, dtype=torch.uint8).numpy()
    return data.Splits(train=imgs, val=imgs[:8], test=imgs[:8], static=static, source="test")


@pytest.mark.parametrize("static", [False, True])
def test_device_path_on_the_cpu_gives_the_host_path_batches_and_resumes(static):
    """Batches(on_device=True) (what CUDA runs: images on the device once, a generator of the device's own) draws
    as the host path does: on the CPU the same batches from the same seed, without touching ``generator``; its
    state_dict holds that generator, so a restored copy continues the stream."""
    s = _tiny_splits(static)
    g_host, g_dev = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    host, dev = data.Batches(s, "train", 16, g_host), data.Batches(s, "train", 16, g_dev, on_device=True)
    before = g_dev.get_state()
    for _ in range(7):  # across epochs (40 images, 16 per batch: a new order every 2 batches)
        assert torch.equal(next(host), next(dev))
    assert torch.equal(g_dev.get_state(), before)
    state = dev.state_dict()
    assert "gen" in state
    want = [next(dev) for _ in range(5)]
    again = data.Batches(s, "train", 16, torch.Generator().manual_seed(99), on_device=True)
    again.load_state_dict(state)
    assert all(torch.equal(w, next(again)) for w in want)
    wrong = data.Batches(s, "train", 16, torch.Generator().manual_seed(12), on_device=True)
    assert not torch.equal(want[0], next(wrong)) or static  # the seed matters (static: same images, other order)


def binarised_rate_bounds(images: np.ndarray, n_reads: int, k: float = 5.0) -> tuple[float, float]:
    """The expected pixel rate of dynamically binarised ``images`` (mean pixel / 255) and k standard deviations
    of the mean of ``n_reads`` reads: each pixel is an independent Bernoulli(p_i), so the variance of the mean
    over N = n_reads x pixels draws is sum_i p_i (1 - p_i) / N^2 (per read)."""
    p = images.astype(np.float64).reshape(-1) / 255
    var = (p * (1 - p)).sum() / (len(p) ** 2 * n_reads)
    return p.mean(), k * math.sqrt(var)


def test_binomial_tolerance_sees_a_biased_binarisation():
    """The tolerance the GPU test uses: the CPU binarisation is within it, a threshold off by 1/255 is not."""
    s = _tiny_splits(n=256)
    target, tol = binarised_rate_bounds(s.train, 20)
    g = torch.Generator().manual_seed(0)
    rates = [data.binarize(s.train, False, g).mean().item() for _ in range(20)]
    assert abs(np.mean(rates) - target) < tol
    x = torch.as_tensor(s.train).reshape(len(s.train), -1).float()
    biased = [(torch.rand(x.shape, generator=g) <= (x + 1) / 255).float().mean().item() for _ in range(20)]
    assert abs(np.mean(biased) - target) > tol
