"""The demo's data: the upstream sets and their preparation, the downstream set, and the raw-pixel baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data import ArrayDataset, concat_datasets, ensure_fashion_mnist, load_fashion_mnist, load_mnist5k
from ..engine.baselines import pixel_baseline  # noqa: F401  (the demo's raw-pixel baseline)
from ..errors import BitError
from .config import DOWNSTREAMS, UPSTREAM_SIZES, UPSTREAMS, cache_root
from .fractals import fractals as make_fractals
from .tasks import task_data


def _subset(ds, n: int | None, seed: int = 0):
    """A seeded random subset of ``n`` images of an in-memory set (all of it when ``n`` is None or too large)."""
    if n is None or n >= len(ds):
        return ds
    idx = np.sort(np.random.Generator(np.random.PCG64(seed)).permutation(len(ds))[:n])
    return ArrayDataset(ds.images[idx], ds.targets[idx], ds.classes, ds.name)


def low_resolution(ds, sizes: tuple[int, int], seed: int = 0):
    """A copy of ``ds`` with each image shrunk to a seeded random square size in ``sizes`` and scaled back, so upstream
    features cover coarse versions of shapes too, as small or blurry downstream images (8x8 scans) look."""
    lo, hi = int(sizes[0]), int(sizes[1])
    h, w = ds.image_size
    if not 1 <= lo <= hi:
        raise BitError(f"low-resolution range {sizes} must be two sizes, smallest first, e.g. (8, 28)")
    size_of = np.random.Generator(np.random.PCG64([seed, 1])).integers(lo, hi + 1, size=len(ds))
    out = ds.images.copy()
    for s in np.unique(size_of):
        if s >= min(h, w):
            continue
        idx = np.flatnonzero(size_of == s)
        for chunk in np.array_split(idx, max(1, len(idx) // 4096)):
            x = torch.from_numpy(ds.images[chunk]).permute(0, 3, 1, 2).float()
            small = F.interpolate(x, size=(int(s), int(s)), mode="area")
            back = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
            out[chunk] = back.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return ArrayDataset(out, ds.targets, ds.classes, ds.name)


def balance_classes(ds, seed: int = 0):
    """A copy of ``ds`` where every class has as many images as the largest (small classes repeated, in order,
    then topped up at random), so training sees each class equally often."""
    counts = np.bincount(ds.targets, minlength=ds.num_classes)
    most = int(counts.max())
    rng = np.random.Generator(np.random.PCG64([seed, 3]))
    parts = []
    for c in np.flatnonzero(counts):
        members = np.flatnonzero(ds.targets == c)
        reps, extra = divmod(most, len(members))
        parts += [np.tile(members, reps), rng.choice(members, extra, replace=False)]
    idx = np.sort(np.concatenate(parts))
    return ArrayDataset(ds.images[idx], ds.targets[idx], ds.classes, ds.name)


def zoom_stretch(ds, zoom: tuple[float, float], stretch: float = 1.0, seed: int = 0):
    """A copy of ``ds`` where each image is zoomed about its centre by a seeded random factor in ``zoom`` and its
    width stretched against its height by up to ``stretch`` (scale and aspect-ratio jitter, drawn once)."""
    lo, hi = float(zoom[0]), float(zoom[1])
    if not 0 < lo <= hi or stretch < 1:
        raise BitError(f"zoom range {zoom} must be positive, smallest first, and stretch {stretch} at least 1")
    rng = np.random.Generator(np.random.PCG64([seed, 2]))
    n = len(ds)
    z = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
    a = np.exp(rng.uniform(-np.log(stretch), np.log(stretch), n))
    theta = np.zeros((n, 2, 3), dtype=np.float32)
    theta[:, 0, 0] = 1 / (z * np.sqrt(a))  # output x reads input x / zoom_x
    theta[:, 1, 1] = np.sqrt(a) / z
    out = np.empty_like(ds.images)
    for chunk in np.array_split(np.arange(n), max(1, n // 4096)):
        x = torch.from_numpy(ds.images[chunk]).permute(0, 3, 1, 2).float()
        grid = F.affine_grid(torch.from_numpy(theta[chunk]), list(x.shape), align_corners=False)
        y = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out[chunk] = y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return ArrayDataset(out, ds.targets, ds.classes, ds.name)


def fashion_mnist(split: str, home: Path | None = None):
    """Fashion-MNIST ``split``, fetched from Debian's package into the cache when the system has no copy."""
    folder = ensure_fashion_mnist(cache_root(home) / "datasets")
    return load_fashion_mnist(folder, split)


def upstream_data(kind: str, images: int | None = None, eval_images: int | None = None, home: Path | None = None,
                  low_res: tuple[int, int] | None = None, zoom: tuple[float, float] | None = None,
                  stretch: float = 1.0, balance: bool = False, fractals: tuple[int, int] = (100, 600)):
    """(train set, Fashion-MNIST test set labelled in the same classes or None) of upstream ``kind``; L is M (balanced
    as M is) followed by ``fractals`` = (classes, images per class) of IFS fractals, each image once."""
    if kind not in UPSTREAMS:
        raise BitError(f"unknown upstream '{kind}': choose from {', '.join(UPSTREAMS)}")
    fashion = fashion_mnist("train", home)
    train = fashion if kind == "S" else concat_datasets([fashion, load_mnist5k()], name="fashion-mnist+mnist5k")
    share = 1.0 if images is None else min(1.0, images / UPSTREAM_SIZES[kind])
    train = _subset(train, None if images is None else round(share * len(train)))
    if balance:
        train = balance_classes(train)
    if kind == "L":
        classes, per_class = fractals
        extra = make_fractals(classes, max(1, round(share * per_class)))
        train = concat_datasets([train, extra], name="fashion-mnist+mnist5k+fractals")
    if zoom or stretch > 1:
        train = zoom_stretch(train, zoom or (1.0, 1.0), stretch)
    if low_res:
        train = low_resolution(train, low_res)
    if eval_images == 0:
        return train, None
    full = fashion_mnist("test", home)
    return train, _subset(ArrayDataset(full.images, full.targets, train.classes, "fashion-mnist:test"), eval_images)


def downstream_data(name: str, per_class: int = 150):
    """A downstream task (one split; each few-shot cell is scored on the images it did not train on)."""
    if name == "mnist5k":
        return load_mnist5k()
    if name not in DOWNSTREAMS:
        raise BitError(f"unknown downstream '{name}': choose from {', '.join(DOWNSTREAMS)}")
    return task_data(name, per_class)
