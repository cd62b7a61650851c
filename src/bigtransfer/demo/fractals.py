"""Formula-driven images: fractals of random iterated function systems (IFS), one system per class, in the
manner of FractalDB ("Pre-training without Natural Images", Kataoka et al., ACCV 2020).

A class is 2 to 4 random contractive affine maps whose attractor fills a moderate part of a grid; each image
renders a slightly perturbed copy of the system with the chaos game, then rotates, flips, scales, shifts
and shades it.
"""

from __future__ import annotations

import numpy as np

from ..data import ArrayDataset
from ..errors import BitError

MAX_STRETCH = 0.9  # a class's maps shrink every direction at least this much (largest singular value)
FILL_BAND = (0.12, 0.45)  # accepted fraction of a FILL_GRID x FILL_GRID grid that the attractor covers
FILL_GRID = 64
CHAINS, STEPS, BURN = 64, 40, 10  # chaos-game chains per image, iterations per chain, first ones dropped


def _stretch(params: np.ndarray) -> np.ndarray:
    """Largest singular value of each map's 2x2 matrix; ``params[..., :4]`` is (a, b, c, d)."""
    a, b, c, d = (params[..., i] for i in range(4))
    s = a * a + b * b + c * c + d * d
    det = a * d - b * c
    return np.sqrt((s + np.sqrt(np.maximum(s * s - 4 * det * det, 0.0))) / 2)


def _chaos(params: np.ndarray, cum: np.ndarray, chains: int, rng: np.random.Generator) -> tuple:
    """Chaos-game points (x, y), each (m, chains * (STEPS - BURN)), of m systems ``params`` (m, n, 6) whose
    maps are chosen with cumulative probabilities ``cum`` (n,)."""
    m, n, _ = params.shape
    table = params.reshape(m * n, 6).T.copy()  # (6, m * n): a, b, c, d, e, f of every map of every system
    base = (np.arange(m) * n)[:, None]
    a, b, c, d, e, f = np.moveaxis(params[:, 0], -1, 0)  # all chains start at the first map's fixed point,
    det = (1 - a) * (1 - d) - b * c  # which lies on the attractor
    x = np.repeat((((1 - d) * e + b * f) / det)[:, None], chains, axis=1)
    y = np.repeat(((c * e + (1 - a) * f) / det)[:, None], chains, axis=1)
    xs, ys = [], []
    for step in range(STEPS):
        k = np.minimum(np.searchsorted(cum, rng.random((m, chains)), side="right"), n - 1)
        a, b, c, d, e, f = np.take(table, base + k, axis=1)
        x, y = a * x + b * y + e, c * x + d * y + f
        if step >= BURN:
            xs.append(x)
            ys.append(y)
    return np.concatenate(xs, axis=1), np.concatenate(ys, axis=1)


def _to_pixels(x: np.ndarray, y: np.ndarray, size: int, scale: np.ndarray | float = 1.0,
               shift_x: np.ndarray | float = 0.0, shift_y: np.ndarray | float = 0.0) -> np.ndarray:
    """Flat pixel indices, per image, of points fitted to their bounding box (aspect kept) and then placed at
    ``scale`` (fraction of the frame) and offset ``shift`` (pixels) in a ``size`` x ``size`` frame."""
    lo_x, hi_x = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
    lo_y, hi_y = y.min(axis=1, keepdims=True), y.max(axis=1, keepdims=True)
    half = np.maximum(np.maximum(hi_x - lo_x, hi_y - lo_y), 1e-12) / 2
    radius = scale * (size / 2 - 0.01)
    col = (x - (lo_x + hi_x) / 2) / half * radius + size / 2 + shift_x
    row = (y - (lo_y + hi_y) / 2) / half * radius + size / 2 + shift_y
    col = np.clip(np.floor(col), 0, size - 1).astype(np.int64)
    row = np.clip(np.floor(row), 0, size - 1).astype(np.int64)
    return row * size + col


def _class_system(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random IFS (n, 6) with n in 2..4, parameters uniform in [-1, 1], contractive and with its filling
    rate in FILL_BAND, and its maps' cumulative probabilities, proportional to |det|."""
    while True:
        params = rng.uniform(-1, 1, (int(rng.integers(2, 5)), 6))
        if _stretch(params).max() >= MAX_STRETCH:
            continue
        weight = np.abs(params[:, 0] * params[:, 3] - params[:, 1] * params[:, 2]) + 1e-3
        cum = np.cumsum(weight / weight.sum())
        x, y = _chaos(params[None], cum, 1024, rng)
        if FILL_BAND[0] <= len(np.unique(_to_pixels(x, y, FILL_GRID))) / FILL_GRID**2 <= FILL_BAND[1]:
            return params, cum


def _instances(params: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """``m`` perturbed copies (m, n, 6) of a system: one map scaled by a factor in [0.9, 1.1], every parameter
    nudged by noise of sd 0.02, and any map stretched past 0.98 shrunk back to it."""
    n = len(params)
    out = np.repeat(params[None], m, axis=0)
    factor = np.ones((m, n))
    factor[np.arange(m), rng.integers(0, n, m)] = rng.uniform(0.9, 1.1, m)
    out = out * factor[..., None] + rng.normal(0, 0.02, out.shape)
    shrink = np.minimum(1.0, 0.98 / _stretch(out))
    out[..., :4] *= shrink[..., None]
    return out


def _render(params: np.ndarray, cum: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Grey uint8 images (m, size, size) of the systems ``params`` (m, n, 6): chaos game, random 90-degree
    rotation, flip, scale and shift, log-scaled density, random ink and background, light noise."""
    m = len(params)
    x, y = _chaos(params, cum, CHAINS, rng)
    turn = rng.integers(0, 4, (m, 1))  # a multiple of 90 degrees, so the rotation is exact
    cos, sin = np.array([1.0, 0.0, -1.0, 0.0])[turn], np.array([0.0, 1.0, 0.0, -1.0])[turn]
    flip = np.where(rng.random((m, 1)) < 0.5, -1.0, 1.0)
    x, y = flip * (cos * x - sin * y), sin * x + cos * y
    scale = rng.uniform(0.8, 1.0, (m, 1))
    shift_x, shift_y = (1 - scale) * (size / 2) * rng.uniform(-1, 1, (2, m, 1))
    pixels = _to_pixels(x, y, size, scale, shift_x, shift_y) + (np.arange(m) * size * size)[:, None]
    counts = np.bincount(pixels.ravel(), minlength=m * size * size).reshape(m, size, size)
    level = np.log1p(counts) / np.log1p(counts.max(axis=(1, 2), keepdims=True))
    ink = rng.uniform(150, 255, (m, 1, 1))
    back = rng.uniform(0, 60, (m, 1, 1))
    grey = back + (ink - back) * level + rng.normal(0, 6, (m, size, size))
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


def fractals(classes: int = 50, per_class: int = 1200, seed: int = 0, size: int = 28) -> ArrayDataset:
    """An in-memory set of ``classes`` x ``per_class`` grey ``size`` x ``size`` fractal images, class-major;
    class ``c`` depends only on ``(seed, c, per_class, size)``."""
    for name, value, least in (("classes", classes, 2), ("per_class", per_class, 1), ("size", size, 8),
                               ("seed", seed, 0)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < least:
            raise BitError(f"fractals: {name} must be an integer >= {least}, got {value!r}")
    images = np.empty((classes * per_class, size, size, 1), dtype=np.uint8)
    for c in range(classes):
        rng = np.random.Generator(np.random.PCG64([seed, c]))
        params, cum = _class_system(rng)
        images[c * per_class:(c + 1) * per_class, ..., 0] = _render(_instances(params, per_class, rng), cum,
                                                                      size, rng)
    targets = np.repeat(np.arange(classes), per_class)
    return ArrayDataset(images, targets, [f"fractal-{c:03d}" for c in range(classes)], "fractals")
