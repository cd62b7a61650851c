"""CIFAR readers: binary and python layouts written by the test, real pixels from foolbox, refusing unsafe pickles."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from bigtransfer.data import load_cifar, load_dataset
from bigtransfer.data.safepickle import RestrictedUnpickler, load_pickle
from bigtransfer.errors import DataError
from conftest import foolbox_files

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_NAMES = [f"fine{i:02d}" for i in range(100)]


def foolbox_images(prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """foolbox's real sample images ``<prefix>_NN_LABEL.png`` as (N, 32, 32, 3) uint8 and labels."""
    files = foolbox_files(f"{prefix}_*.png")
    if not files:
        pytest.skip(f"foolbox has no {prefix} images")
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    labels = np.array([int(re.match(rf"{prefix}_\d+_(\d+)\.png", f.name).group(1)) for f in files])
    return images, labels


def records(images: np.ndarray, labels: np.ndarray, coarse: np.ndarray | None = None) -> bytes:
    """CIFAR binary records: [coarse] label byte(s), then the red, green and blue 32x32 planes."""
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    heads = labels[:, None] if coarse is None else np.stack([coarse, labels], axis=1)
    return np.concatenate([heads.astype(np.uint8), planes], axis=1).tobytes()


def write_cifar10_bin(root: Path, images, labels, test_images, test_labels) -> Path:
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for i, (im, lab) in enumerate(zip(np.array_split(images, 5), np.array_split(labels, 5), strict=True), 1):
        (folder / f"data_batch_{i}.bin").write_bytes(records(im, lab))
    (folder / "test_batch.bin").write_bytes(records(test_images, test_labels))
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR10_NAMES) + "\n\n")
    return folder


class _Py2Pickler(pickle.Pickler):
    """Writes arrays the way Python 2 numpy did: str payloads, no '_codecs' global."""

    def reducer_override(self, obj):
        if isinstance(obj, np.ndarray):
            state = (1, obj.shape, obj.dtype, False, obj.tobytes().decode("latin1"))
            return np.ndarray.__reduce__(obj)[0], (np.ndarray, (0,), "b"), state
        if isinstance(obj, np.dtype):
            return np.dtype, (obj.str[1:], False, True), (3, "|", None, None, None, -1, -1, 0)
        return NotImplemented


def py2_pickle(obj) -> bytes:
    """A protocol-2 pickle naming 'numpy.core.multiarray', as in the CIFAR python-layout downloads."""
    import io

    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    data = buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"numpy._core" not in data and b"_codecs" not in data
    return data


def write_cifar_py(root: Path, name: str, images, labels, test_images, test_labels, protocol: str = "py2") -> Path:
    dump = py2_pickle if protocol == "py2" else (lambda o: pickle.dumps(o, protocol=4))
    key = "labels" if name == "cifar10" else "fine_labels"
    folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True)

    def batch(im, lab):
        d = {"data": im.transpose(0, 3, 1, 2).reshape(len(im), -1), key: [int(v) for v in lab]}
        if name == "cifar100":
            d["coarse_labels"] = [int(v) // 5 for v in lab]
        return {k.encode(): v for k, v in d.items()} if protocol == "py3" else d

    if name == "cifar10":
        for i, (im, lab) in enumerate(zip(np.array_split(images, 5), np.array_split(labels, 5), strict=True), 1):
            (folder / f"data_batch_{i}").write_bytes(dump(batch(im, lab)))
        (folder / "test_batch").write_bytes(dump(batch(test_images, test_labels)))
        (folder / "batches.meta").write_bytes(dump({"label_names": CIFAR10_NAMES, "num_cases_per_batch": 4}))
    else:
        (folder / "train").write_bytes(dump(batch(images, labels)))
        (folder / "test").write_bytes(dump(batch(test_images, test_labels)))
        (folder / "meta").write_bytes(dump({"fine_label_names": CIFAR100_NAMES, "coarse_label_names": ["c"] * 20}))
    return folder


@pytest.fixture(scope="module")
def cifar10_real():
    images, labels = foolbox_images("cifar10")
    return images, labels


def _check(ds, images, labels, classes):
    assert len(ds) == len(images)
    assert ds.classes == classes
    assert ds.image_size == (32, 32)
    assert ds.targets.dtype == np.int64
    np.testing.assert_array_equal(ds.targets, labels)
    for i in range(len(ds)):
        img, label = ds[i]
        assert isinstance(img, tv_tensors.Image) and img.dtype == torch.uint8 and img.shape == (3, 32, 32)
        np.testing.assert_array_equal(img.permute(1, 2, 0).numpy(), images[i])
        assert label == labels[i] and type(label) is int


def test_binary_layout_decodes_real_cifar10_pixels(tmp_path, cifar10_real):
    images, labels = cifar10_real
    folder = write_cifar10_bin(tmp_path, images, labels, images[:7], labels[:7])
    for path in (folder, tmp_path):  # the data folder itself or its parent
        _check(load_cifar("cifar10", path, "train"), images, labels, CIFAR10_NAMES)
        _check(load_cifar("cifar10", path, "test"), images[:7], labels[:7], CIFAR10_NAMES)
    _check(load_dataset(f"cifar10:{tmp_path}", "val"), images[:7], labels[:7], CIFAR10_NAMES)


def test_binary_layout_cifar100_uses_fine_labels(tmp_path):
    images, labels = foolbox_images("cifar100")
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    (folder / "train.bin").write_bytes(records(images, labels, coarse=labels // 5))
    (folder / "test.bin").write_bytes(records(images[::-1], labels[::-1], coarse=labels[::-1] // 5))
    (folder / "fine_label_names.txt").write_text("\n".join(CIFAR100_NAMES))
    (folder / "coarse_label_names.txt").write_text("\n".join(["c"] * 20))
    _check(load_dataset(f"cifar100:{tmp_path}"), images, labels, CIFAR100_NAMES)
    _check(load_dataset(f"cifar100:{folder}", "test"), images[::-1], labels[::-1], CIFAR100_NAMES)


@pytest.mark.parametrize("protocol", ["py2", "py3"])
def test_python_layout_cifar10(tmp_path, cifar10_real, protocol):
    images, labels = cifar10_real
    folder = write_cifar_py(tmp_path, "cifar10", images, labels, images[5:], labels[5:], protocol)
    _check(load_cifar("cifar10", tmp_path, "train"), images, labels, CIFAR10_NAMES)
    _check(load_cifar("cifar10", folder, "test"), images[5:], labels[5:], CIFAR10_NAMES)


def test_python_layout_cifar100(tmp_path):
    images, labels = foolbox_images("cifar100")
    write_cifar_py(tmp_path, "cifar100", images, labels, images[:3], labels[:3])
    _check(load_dataset(f"cifar100:{tmp_path}"), images, labels, CIFAR100_NAMES)
    _check(load_dataset(f"cifar100:{tmp_path}", "test"), images[:3], labels[:3], CIFAR100_NAMES)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, cifar10_real):
    images, labels = cifar10_real
    folder = write_cifar_py(tmp_path, "cifar10", images, labels, images, labels)
    marker = tmp_path / "pwned"
    (folder / "data_batch_2").write_bytes(pickle.dumps({"data": _Evil(marker), "labels": [0]}, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_2.*refused.*(posix|os)\.system"):
        load_cifar("cifar10", folder)
    assert not marker.exists()
    # The same pickle through the plain unpickler would have run the command: the test is meaningful.
    pickle.loads((folder / "data_batch_2").read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("module, name", [("builtins", "eval"), ("numpy", "load"), ("numpy", "frombuffer"),
                                          ("numpy.core.multiarray", "scalar"), ("subprocess", "Popen")])
def test_restricted_unpickler_refuses_other_globals(module, name):
    import io

    payload = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"."
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        RestrictedUnpickler(io.BytesIO(payload)).load()


def test_restricted_unpickler_reads_plain_arrays(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 12)
    for proto in (2, 3, 4):
        f = tmp_path / f"p{proto}"
        f.write_bytes(pickle.dumps({"a": arr, "l": [1, 2], "s": "x"}, protocol=proto) if proto > 2
                      else py2_pickle({"a": arr, "l": [1, 2], "s": "x"}))
        out = load_pickle(f)
        np.testing.assert_array_equal(out["a"], arr)
        assert out["l"] == [1, 2] and out["s"] == "x"


def test_truncated_and_missing_files_name_the_file(tmp_path, cifar10_real):
    images, labels = cifar10_real
    folder = write_cifar10_bin(tmp_path / "bin", images, labels, images, labels)
    data = (folder / "data_batch_3.bin").read_bytes()
    (folder / "data_batch_3.bin").write_bytes(data[:-100])
    with pytest.raises(DataError, match=r"data_batch_3\.bin.*truncated"):
        load_cifar("cifar10", folder)
    load_cifar("cifar10", folder, "test")  # the test split does not need that file
    (folder / "data_batch_3.bin").unlink()
    with pytest.raises(DataError, match=r"missing .*data_batch_3\.bin"):
        load_cifar("cifar10", folder)

    pyfolder = write_cifar_py(tmp_path / "py", "cifar10", images, labels, images, labels)
    data = (pyfolder / "test_batch").read_bytes()
    (pyfolder / "test_batch").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"test_batch.*truncated"):
        load_cifar("cifar10", pyfolder, "test")


def test_bad_labels_wrong_paths_and_splits(tmp_path, cifar10_real):
    images, labels = cifar10_real
    bad = labels.copy()
    bad[3] = 17
    folder = write_cifar10_bin(tmp_path, images, bad, images, labels)
    with pytest.raises(DataError, match="label 17 is outside the 10 classes"):
        load_cifar("cifar10", folder)
    with pytest.raises(DataError, match="no such file or folder"):
        load_cifar("cifar10", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no CIFAR files"):
        load_cifar("cifar10", tmp_path / "empty")
    with pytest.raises(DataError, match="'train' and 'test'"):
        load_cifar("cifar10", folder, "all")
    (folder / "batches.meta.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match="2 class names, expected 10"):
        load_cifar("cifar10", folder, "test")


def test_works_with_a_dataloader(tmp_path, cifar10_real):
    from bigtransfer.data import hyperrule_eval

    images, labels = cifar10_real
    write_cifar10_bin(tmp_path, images, labels, images, labels)
    ds = load_dataset(f"cifar10:{tmp_path}", transform=hyperrule_eval(64))
    x, y = next(iter(torch.utils.data.DataLoader(ds, batch_size=8)))
    assert x.shape == (8, 3, 64, 64) and x.dtype == torch.float32 and type(x) is torch.Tensor
    assert y.tolist() == labels[:8].tolist()
    assert x.min() >= -1.0 and x.max() <= 1.0
