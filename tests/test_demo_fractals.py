"""The formula-driven fractal set: shapes, determinism, per-class independence, class structure, bad arguments."""

from __future__ import annotations

import numpy as np
import pytest

from bigtransfer.data import ArrayDataset
from bigtransfer.demo.fractals import fractals
from bigtransfer.errors import BitError


@pytest.fixture(scope="module")
def small() -> ArrayDataset:
    return fractals(classes=6, per_class=20, seed=3)


def test_shape_dtype_targets_and_names(small):
    assert isinstance(small, ArrayDataset) and small.name == "fractals"
    assert small.images.shape == (120, 28, 28, 1) and small.images.dtype == np.uint8
    assert np.array_equal(small.targets, np.repeat(np.arange(6), 20))
    assert small.classes == [f"fractal-{c:03d}" for c in range(6)]
    assert fractals(classes=2, per_class=3, size=12).images.shape == (6, 12, 12, 1)


def test_deterministic_and_seeded(small):
    assert np.array_equal(fractals(classes=6, per_class=20, seed=3).images, small.images)
    assert not np.array_equal(fractals(classes=6, per_class=20, seed=4).images, small.images)


def test_a_class_does_not_depend_on_the_others(small):
    more = fractals(classes=8, per_class=20, seed=3)
    assert np.array_equal(more.images[:120], small.images)


def test_no_blank_images(small):
    pixels = small.images.reshape(len(small), -1).astype(np.int64)
    spread = np.percentile(pixels, 99, axis=1) - np.percentile(pixels, 50, axis=1)
    assert spread.min() > 60
    assert ((pixels > pixels.min(axis=1, keepdims=True) + 60).mean(axis=1) > 0.02).all()


def test_classes_differ_more_than_their_instances(small):
    x = small.images.reshape(6, 20, -1).astype(np.float64) / 255
    first, second = x[:, :10].mean(axis=1), x[:, 10:].mean(axis=1)  # each class's mean over two halves
    between = np.mean([np.linalg.norm(first[i] - first[j]) for i in range(6) for j in range(6) if i != j])
    within = np.linalg.norm(first - second, axis=1).mean()
    assert between > 1.1 * within
    nearest = np.linalg.norm(x[:, 10:, None] - first[None, None], axis=3).argmin(axis=2)
    assert (nearest == np.arange(6)[:, None]).mean() > 0.3  # held-out nearest class mean; chance is 1/6
    assert not np.array_equal(x[0, 0], x[0, 1])


@pytest.mark.parametrize("kwargs", [{"classes": 1}, {"per_class": 0}, {"size": 7}, {"seed": -1},
                                    {"classes": 2.5}])
def test_bad_arguments_are_one_line_errors(kwargs):
    with pytest.raises(BitError) as caught:
        fractals(**kwargs)
    assert "\n" not in str(caught.value) and "fractals" in str(caught.value)
