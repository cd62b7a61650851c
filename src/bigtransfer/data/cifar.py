"""CIFAR-10 and CIFAR-100 in the binary layout (``*-bin``) and the python layout (``*-py``), found from a folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import ArrayDataset
from .safepickle import load_pickle

PIXELS = 3 * 32 * 32
SPLITS = {"train": "train", "test": "test", "val": "test"}

# name -> {layout: (folder, {split: files}, meta file)}
LAYOUTS = {
    "cifar10": {
        "binary": ("cifar-10-batches-bin", {"train": [f"data_batch_{i}.bin" for i in range(1, 6)],
                                            "test": ["test_batch.bin"]}, "batches.meta.txt"),
        "python": ("cifar-10-batches-py", {"train": [f"data_batch_{i}" for i in range(1, 6)],
                                           "test": ["test_batch"]}, "batches.meta"),
    },
    "cifar100": {
        "binary": ("cifar-100-binary", {"train": ["train.bin"], "test": ["test.bin"]}, "fine_label_names.txt"),
        "python": ("cifar-100-python", {"train": ["train"], "test": ["test"]}, "meta"),
    },
}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


def find_layout(name: str, path: str | Path) -> tuple[str, Path]:
    """(layout, folder) for CIFAR ``name`` at ``path``: the data folder itself or the folder that holds it."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"{name}: no such file or folder '{root}'; pass {name}:PATH to the extracted data set")
    for layout, (folder, files, meta) in LAYOUTS[name].items():
        for candidate in (root, root / folder):
            if (candidate / meta).is_file() or (candidate / files["test"][0]).is_file():
                return layout, candidate
    wanted = " or ".join(f"'{f}'" for f, _, _ in LAYOUTS[name].values())
    raise DataError(f"{name}: '{root}' holds no CIFAR files; point {name}:PATH at {wanted} or its parent folder")


def _read_binary(file: Path, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    record = label_bytes + PIXELS
    raw = np.fromfile(file, dtype=np.uint8)
    if raw.size == 0 or raw.size % record:
        raise DataError(f"{file}: {raw.size} bytes is not a whole number of {record}-byte records; "
                        f"the file is truncated, download the data set again")
    raw = raw.reshape(-1, record)
    # CIFAR-100 records start with the coarse label, then the fine one; we use the fine label.
    return raw[:, label_bytes:], raw[:, label_bytes - 1].astype(np.int64)


def _read_python(file: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _str_keys(load_pickle(file), file)
    label_key = "labels" if name == "cifar10" else "fine_labels"
    data, labels = batch.get("data"), batch.get(label_key)
    if not isinstance(data, np.ndarray) or labels is None:
        raise DataError(f"{file}: expected 'data' (an array) and '{label_key}'; this is not a {name} batch file")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        raise DataError(f"{file}: 'data' is {data.dtype} {data.shape}, expected uint8 (N, {PIXELS}); "
                        f"the file is corrupt")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(data),):
        raise DataError(f"{file}: {len(data)} images but {labels.size} labels; the file is corrupt")
    return data, labels


def _str_keys(obj: object, file: Path) -> dict:
    if not isinstance(obj, dict):
        raise DataError(f"{file}: expected a dict in the pickle, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _class_names(name: str, layout: str, folder: Path) -> list[str]:
    meta = folder / LAYOUTS[name][layout][2]
    if not meta.is_file():
        raise DataError(f"{name}: missing '{meta}'; the extracted data set is incomplete")
    if layout == "binary":
        names = [n for line in meta.read_text(encoding="utf-8", errors="replace").splitlines() if (n := line.strip())]
    else:
        entry = _str_keys(load_pickle(meta), meta).get("label_names" if name == "cifar10" else "fine_label_names")
        names = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in entry or []]
    if len(names) != NUM_CLASSES[name]:
        raise DataError(f"{meta}: found {len(names)} class names, expected {NUM_CLASSES[name]}; "
                        f"is this {name}?")
    return names


def load_cifar(name: str, path: str | Path, split: str = "train", transform: Callable | None = None) -> ArrayDataset:
    """CIFAR-10 (``name="cifar10"``) or CIFAR-100 (``"cifar100"``, fine labels) ``split`` from ``path``."""
    if split not in SPLITS:
        raise DataError(f"{name} has the splits 'train' and 'test', not '{split}'")
    layout, folder = find_layout(name, path)
    classes = _class_names(name, layout, folder)
    batches = []
    for fname in LAYOUTS[name][layout][1][SPLITS[split]]:
        file = folder / fname
        if not file.is_file():
            raise DataError(f"{name}: missing '{file}'; the extracted data set is incomplete")
        batches.append(_read_binary(file, 1 if name == "cifar10" else 2) if layout == "binary"
                       else _read_python(file, name))
    images, labels = zip(*batches, strict=True)
    nhwc = np.concatenate(images).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return ArrayDataset(np.ascontiguousarray(nhwc), np.concatenate(labels), classes, f"{name}:{split}", transform)
