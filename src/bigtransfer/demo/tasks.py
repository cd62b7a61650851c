"""The transfer suite: four downstream tasks from domains no upstream contains, built from what ships offline.

Besides scikit-learn's digits, three 32x32 grey tasks (``SUITE``) are generated, each a pure function of
``(per_class, seed)``: numpy's PCG64 draws every random choice and PIL draws every image on one thread, so the same
arguments give the same bytes wherever the same numpy, Pillow (FreeType) and matplotlib fonts are installed.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..data import ArrayDataset, load_digits
from ..errors import BitError

SIZE = 32  # output images are SIZE x SIZE x 1 uint8
BIG = 2 * SIZE  # glyphs and shapes are drawn at twice the size and box-averaged down: smooth edges
LETTERS = ("A", "E", "K", "M", "R", "T", "d", "f", "n", "y")
SHAPES = ("circle", "square", "triangle", "pentagon", "star", "cross", "arrow", "crescent", "heart", "bar")
TEXTURES = ("horizontal stripes", "vertical stripes", "checkerboard", "dots", "rings", "grid", "zigzag",
            "spokes", "blobs", "speckle")
SUITE = {
    "digits": "scikit-learn's 1,797 8x8 handwritten digit scans",
    "glyphs": "printed letters (A E K M R T d f n y) in the fonts that ship with matplotlib, 32x32",
    "shapes": "procedural geometric shapes, filled or outlined, on random grey levels, 32x32",
    "textures": "procedural texture families (stripes, checks, dots, rings, spokes, noise...), 32x32",
}
_TEXT_FONT = re.compile(r"(DejaVu(Sans|SansMono|Serif)(-\w+)?|STIXGeneral\w*|cm(r|b|ss|tt|ti|mi)10)\.ttf")


def _rng(per_class: int, seed: int, task: int) -> np.random.Generator:
    """The random stream of generated task number ``task``; checks the arguments first."""
    if int(per_class) < 1 or int(seed) < 0:
        raise BitError(f"a generated task needs per_class >= 1 and seed >= 0, got per_class={per_class}, seed={seed}")
    return np.random.Generator(np.random.PCG64([int(seed), task]))


def _dataset(images: list[np.ndarray], per_class: int, classes: tuple[str, ...], name: str) -> ArrayDataset:
    """Stack float images (class-major order) into a uint8 (N, 32, 32, 1) set."""
    stack = np.clip(np.rint(np.stack(images)), 0, 255).astype(np.uint8)[..., None]
    return ArrayDataset(stack, np.repeat(np.arange(len(classes)), per_class), list(classes), name)


def _shrink(canvas: Image.Image) -> np.ndarray:
    return np.asarray(canvas.resize((SIZE, SIZE), Image.Resampling.BOX), dtype=np.float64)


# ---------------------------------------------------------------- glyphs

def _render(font: ImageFont.FreeTypeFont, char: str) -> np.ndarray:
    """``char`` drawn white on black, its ink box centred on a BIG x BIG canvas."""
    left, top, right, bottom = font.getbbox(char, anchor="mm")
    canvas = Image.new("L", (BIG, BIG), 0)
    ImageDraw.Draw(canvas).text((BIG / 2 - (left + right) / 2, BIG / 2 - (top + bottom) / 2), char, fill=255,
                                font=font, anchor="mm")
    return np.asarray(canvas)


@functools.lru_cache(maxsize=4)
def font_files(text: str = "".join(LETTERS)) -> tuple[Path, ...]:
    """matplotlib's text fonts (sorted by name) that draw every character of ``text`` with a real glyph."""
    folder = Path(matplotlib.get_data_path(), "fonts", "ttf")
    found = []
    for path in sorted(folder.glob("*.ttf"), key=lambda p: p.name):
        if not _TEXT_FONT.fullmatch(path.name):
            continue
        font = ImageFont.truetype(str(path), 40)
        missing = _render(font, "\U0010fffd")  # a private-use code point: the font's .notdef box, if any
        glyphs = [_render(font, c) for c in text]
        if all(g.any() and not np.array_equal(g, missing) for g in glyphs):
            found.append(path)
    return tuple(found)


@functools.lru_cache(maxsize=2)
def _glyph_bank(text: str) -> tuple[tuple[np.ndarray, ...], ...]:
    """bank[f][c]: character ``c`` of ``text`` in font ``f`` of ``font_files(text)``, BIG x BIG."""
    return tuple(tuple(_render(ImageFont.truetype(str(p), 40), c) for c in text) for p in font_files(text))


def _affine(image: Image.Image, scale: float, angle: float, shift: np.ndarray, shear: float = 0.0) -> Image.Image:
    """``image`` zoomed by ``scale``, turned ``angle`` radians and sheared about its centre, then moved by ``shift``."""
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale  # the inverse map, written out (no BLAS rounding)
    a, b, d, e = cos + shear * sin, sin - shear * cos, -sin, cos
    x, y = BIG / 2 + shift[0], BIG / 2 + shift[1]
    data = (a, b, BIG / 2 - a * x - b * y, d, e, BIG / 2 - d * x - e * y)
    return image.transform(image.size, Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR)


def glyphs(per_class: int = 150, seed: int = 0) -> ArrayDataset:
    """Printed letters: per image a random font, size (x0.8-1.05), rotation (+-10 deg), shear (+-0.15), shift
    (+-2 px), ink and background grey, noise."""
    bank, rng = _glyph_bank("".join(LETTERS)), _rng(per_class, seed, 1)
    images = []
    for c in range(len(LETTERS)):
        for _ in range(per_class):
            glyph = Image.fromarray(bank[rng.integers(len(bank))][c])
            scale, angle, shear = rng.uniform(0.8, 1.05), np.deg2rad(rng.uniform(-10, 10)), rng.uniform(-0.15, 0.15)
            big = _affine(glyph, scale, angle, rng.uniform(-4, 4, size=2), shear)
            ink, back = rng.uniform(170, 255), rng.uniform(0, 60)
            images.append(back + (ink - back) * _shrink(big) / 255 + rng.normal(0, 6, (SIZE, SIZE)))
    return _dataset(images, per_class, LETTERS, "glyphs")


# ---------------------------------------------------------------- shapes

def _regular(n: int, inner: float | None = None, start: float = np.pi / 2) -> np.ndarray:
    """A regular n-gon (or, with ``inner``, an n-pointed star) of radius 1 with a vertex at angle ``start``."""
    k = 2 * n if inner else n
    t = start + 2 * np.pi * np.arange(k) / k
    r = np.where(np.arange(k) % 2, inner or 1.0, 1.0)
    return np.stack([r * np.cos(t), -r * np.sin(t)], axis=1)


def _crescent() -> np.ndarray:
    """The unit disc less a disc of radius 0.85 moved 0.5 to the right, as a polygon."""
    x = (1 - 0.85**2 + 0.5**2) / (2 * 0.5)  # where the two circles cross
    a, b = np.arctan2(np.sqrt(1 - x * x), x), np.arctan2(np.sqrt(1 - x * x), x - 0.5)
    outer = np.linspace(a, 2 * np.pi - a, 40)
    inner = np.linspace(2 * np.pi - b, b, 30)
    return np.concatenate([np.stack([np.cos(outer), np.sin(outer)], 1),
                           np.stack([0.5 + 0.85 * np.cos(inner), 0.85 * np.sin(inner)], 1)])


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 60, endpoint=False)
    x, y = 16 * np.sin(t) ** 3, 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([x, -y - 2.5], axis=1) / 16


@functools.lru_cache(maxsize=1)
def _outlines() -> tuple[np.ndarray, ...]:
    """Each class of SHAPES as a closed polygon about the origin, roughly within the unit disc."""
    plus = [(-1, -0.3), (-0.3, -0.3), (-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3)]
    cross = np.array(plus + [(-x, -y) for x, y in plus])
    arrow = np.array([(-1, -0.25), (0.2, -0.25), (0.2, -0.6), (1, 0), (0.2, 0.6), (0.2, 0.25), (-1, 0.25)])
    bar = np.array([(-1, -0.3), (1, -0.3), (1, 0.3), (-1, 0.3)])
    return (_regular(64), _regular(4, start=np.pi / 4) * 0.95, _regular(3) * 1.05,
            _regular(5), _regular(5, 0.42), cross, arrow, _crescent(), _heart(), bar)


def shapes(per_class: int = 150, seed: int = 0) -> ArrayDataset:
    """Geometric shapes: random radius (7-12 px), shift (+-2 px), rotation (+-25 deg), fill or outline (1-3 px),
    ink and background grey, noise."""
    outlines, rng = _outlines(), _rng(per_class, seed, 2)
    images = []
    for c in range(len(SHAPES)):
        for _ in range(per_class):
            radius, angle = rng.uniform(14, 24), np.deg2rad(rng.uniform(-25, 25))
            centre = BIG / 2 + rng.uniform(-4, 4, size=2)
            x, y = outlines[c][:, 0], outlines[c][:, 1]
            points = radius * np.stack([x * np.cos(angle) - y * np.sin(angle),
                                        x * np.sin(angle) + y * np.cos(angle)], 1) + centre
            back, ink = rng.uniform(0, 90), rng.uniform(150, 255)
            canvas = Image.new("L", (BIG, BIG), 0)
            draw, polygon = ImageDraw.Draw(canvas), [tuple(p) for p in points]
            if rng.random() < 0.5:
                draw.polygon(polygon, fill=255)
            else:
                draw.line(polygon + polygon[:1], fill=255, width=int(rng.integers(2, 7)), joint="curve")
            images.append(back + (ink - back) * _shrink(canvas) / 255 + rng.normal(0, 8, (SIZE, SIZE)))
    return _dataset(images, per_class, SHAPES, "shapes")


# ---------------------------------------------------------------- textures

def _field(c: int, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Texture class ``c`` of TEXTURES on pixel coordinates (x, y) about the centre, values in [-1, 1]."""
    period, phase, tilt = rng.uniform(5, 8), rng.uniform(0, np.pi / 2), np.deg2rad(rng.uniform(-10, 10))
    f = 2 * np.pi / period
    u, v = x * np.cos(tilt) + y * np.sin(tilt), y * np.cos(tilt) - x * np.sin(tilt)  # tilted axes
    cx, cy = rng.uniform(-2, 2, size=2)
    r, theta = np.hypot(x - cx, y - cy), np.arctan2(y - cy, x - cx)
    fields = {
        "horizontal stripes": lambda: np.sin(f * v + phase),
        "vertical stripes": lambda: np.sin(f * u + phase),
        "checkerboard": lambda: np.sign(np.sin(f * u / 1.5 + phase) * np.sin(f * v / 1.5 + phase)),
        "dots": lambda: 2 * (np.cos(f * u + phase) * np.cos(f * v + phase) > 0.5) - 1.0,
        "rings": lambda: np.sin(f * r + phase),
        "grid": lambda: 2 * np.maximum(np.cos(f * u + phase), np.cos(f * v + phase)) ** 8 - 1,
        "zigzag": lambda: np.sin(f * v + 2.5 * np.abs(((u * f / 4 + phase) % 2) - 1) * np.pi + phase),
        "spokes": lambda: np.sin(rng.integers(5, 9) * theta + phase),
        "blobs": lambda: _noise(rng, 3.0),
        "speckle": lambda: _noise(rng, 0.6),
    }
    return fields[TEXTURES[c]]()


def _noise(rng: np.random.Generator, scale: float) -> np.ndarray:
    """Smoothed white noise with features about ``scale`` pixels wide, normalised to [-1, 1]."""
    spectrum = np.fft.fft2(rng.normal(size=(SIZE, SIZE)))
    k = np.fft.fftfreq(SIZE)
    smooth = np.real(np.fft.ifft2(spectrum * np.exp(-((k[:, None] ** 2 + k[None] ** 2) * (np.pi * scale) ** 2))))
    return smooth / np.abs(smooth).max()


def textures(per_class: int = 150, seed: int = 0) -> ArrayDataset:
    """Texture families: random period (5-8 px), phase (0-90 deg), tilt (+-10 deg), centre (+-2 px), contrast,
    mean grey, noise."""
    y, x = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2
    rng = _rng(per_class, seed, 3)
    images = []
    for c in range(len(TEXTURES)):
        for _ in range(per_class):
            field = _field(c, x, y, rng)
            mean, contrast = rng.uniform(90, 165), rng.uniform(40, 90)
            images.append(mean + contrast * field + rng.normal(0, 8, (SIZE, SIZE)))
    return _dataset(images, per_class, TEXTURES, "textures")


# ---------------------------------------------------------------- registry

_MAKERS = {"glyphs": glyphs, "shapes": shapes, "textures": textures}


def task_data(name: str, per_class: int = 150, seed: int = 0) -> ArrayDataset:
    """The data set of suite task ``name`` (digits: scikit-learn's set as shipped; ``per_class``/``seed`` unused)."""
    if name == "digits":
        return load_digits()
    if name not in _MAKERS:
        raise BitError(f"unknown downstream task '{name}': choose one of {', '.join(SUITE)}")
    return _MAKERS[name](per_class, seed)
