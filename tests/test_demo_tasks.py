"""The transfer suite's generated downstream tasks: determinism, layout, content and difficulty."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from bigtransfer.data import ArrayDataset
from bigtransfer.demo import tasks
from bigtransfer.errors import BitError

GENERATED = ("glyphs", "shapes", "textures")


@pytest.fixture(scope="module")
def full():
    """Each generated task at its default size (150 per class, seed 0), built once."""
    return {name: tasks.task_data(name) for name in GENERATED}


def _digest(ds: ArrayDataset) -> str:
    return hashlib.sha256(ds.images.tobytes() + ds.targets.tobytes()).hexdigest()


@pytest.mark.parametrize("name", GENERATED)
def test_same_seed_same_bytes_other_seed_other_images(name):
    a, b, c = tasks.task_data(name, 12, 3), tasks.task_data(name, 12, 3), tasks.task_data(name, 12, 4)
    assert a.images.tobytes() == b.images.tobytes() and np.array_equal(a.targets, b.targets)
    assert not np.array_equal(a.images, c.images)
    assert (a.images != c.images).reshape(len(a), -1).any(1).all()  # every image is redrawn


def test_bytes_do_not_depend_on_thread_settings():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [_digest(tasks.task_data(n, 5, 7)) for n in GENERATED]
    with threadpoolctl.threadpool_limits(1):
        assert [_digest(tasks.task_data(n, 5, 7)) for n in GENERATED] == before


@pytest.mark.parametrize("name", GENERATED)
def test_layout_balanced_classes_and_non_blank_images(name, full):
    ds = full[name]
    assert isinstance(ds, ArrayDataset) and ds.name == name
    assert ds.images.shape == (1500, 32, 32, 1) and ds.images.dtype == np.uint8
    assert len(set(ds.classes)) == ds.num_classes == 10
    assert np.bincount(ds.targets, minlength=10).tolist() == [150] * 10
    assert ds.image_size == (32, 32) and ds[0][0].shape == (3, 32, 32)
    spread = ds.images.reshape(len(ds), -1).std(1)
    assert spread.min() > 10  # a blank image is pure noise, std <= 8
    small = tasks.task_data(name, per_class=3)
    assert small.images.shape == (30, 32, 32, 1) and np.bincount(small.targets).tolist() == [3] * 10


@pytest.mark.parametrize("name", GENERATED)
def test_classes_differ_more_than_two_halves_of_one_class(name, full):
    ds = full[name]
    x = ds.images[..., 0].astype(np.float64)
    x = (x - x.mean((1, 2), keepdims=True)) / x.std((1, 2), keepdims=True)
    f = np.concatenate([x.reshape(len(x), -1), np.abs(np.fft.fft2(x)).reshape(len(x), -1) / 32], 1)
    halves = [np.stack([f[ds.targets == c][h::2].mean(0) for c in range(10)]) for h in (0, 1)]
    rms = np.sqrt(((halves[0][:, None] - halves[1][None]) ** 2).mean(-1))  # rms[c, d]: half 0 of c vs half 1 of d
    within = np.diag(rms)
    between = (rms + rms.T) / 2 / ((within[:, None] + within[None]) / 2)
    np.fill_diagonal(between, np.inf)
    assert between.min() > 1.25, np.unravel_index(between.argmin(), between.shape)


def test_glyphs_use_many_fonts_that_draw_the_letters():
    fonts = tasks.font_files()
    assert len(fonts) > 3 and list(fonts) == sorted(fonts, key=lambda p: p.name)
    assert len({p.name.split("-")[0][:6] for p in fonts}) >= 3  # DejaVu, STIX and Computer Modern
    assert not any(n in p.name for p in fonts for n in ("cmex", "cmsy", "LastResort", "Display"))
    assert tasks.font_files("A\u4e00") == ()  # no shipped text font has CJK ideographs
    assert len(set(tasks.LETTERS)) == 10 and not any(c.isdigit() for c in tasks.LETTERS)


def test_task_data_registry():
    assert set(tasks.SUITE) == {"digits", *GENERATED} and all(tasks.SUITE.values())
    digits = tasks.task_data("digits")
    assert digits.name == "digits" and len(digits) == 1797 and digits.num_classes == 10
    with pytest.raises(BitError) as caught:
        tasks.task_data("letters")
    message = str(caught.value)
    assert "\n" not in message and "letters" in message and all(n in message for n in tasks.SUITE)
    for bad in ({"per_class": 0}, {"seed": -1}):
        with pytest.raises(BitError, match="per_class >= 1"):
            tasks.task_data("shapes", **bad)


@pytest.mark.parametrize("name", GENERATED)
def test_raw_pixels_learn_each_task_but_do_not_solve_it(name, full):
    pytest.importorskip("sklearn")
    from threadpoolctl import threadpool_limits

    from bigtransfer.demo.data import pixel_baseline

    with threadpool_limits(1):  # a 1,024-feature fit: BLAS threads only wait on each other on a busy machine
        score = pixel_baseline(full[name])(10, 0)
    assert 20.0 < score < 99.0, score
