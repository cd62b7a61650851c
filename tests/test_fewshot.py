"""Few-shot sampling: deterministic, balanced, without replacement, and clear about classes that are too small."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bigtransfer.data import ArrayDataset, fewshot_indices, fewshot_split, fewshot_subset
from bigtransfer.errors import DataError

labels_strategy = st.lists(st.integers(0, 4), min_size=1, max_size=80).map(np.array)


def test_pinned_indices():
    # Computed once with PCG64; they must never change, on any machine or numpy version we support.
    targets = np.repeat(np.arange(3), 5)
    assert fewshot_indices(targets, 2, 0).tolist() == [2, 4, 6, 9, 10, 12]
    assert fewshot_indices(targets, 2, 1).tolist() == [0, 4, 5, 8, 12, 13]
    assert fewshot_indices(np.array([2, 0, 1, 2, 0, 1, 1, 0, 2, 2, 0, 1]), 1, 42).tolist() == [0, 10, 11]


@settings(max_examples=60, deadline=None)
@given(targets=labels_strategy, k=st.integers(1, 4), seed=st.integers(0, 2**32))
def test_properties(targets, k, seed):
    counts = np.bincount(targets)
    present = np.flatnonzero(counts)
    if counts[present].min() < k:
        with pytest.raises(DataError, match="fewer than the"):
            fewshot_indices(targets, k, seed)
        return
    idx = fewshot_indices(targets, k, seed)
    assert idx.dtype == np.int64
    assert np.array_equal(idx, np.sort(idx)) and len(np.unique(idx)) == len(idx)  # sorted, no repeats
    assert np.bincount(targets[idx], minlength=len(counts))[present].tolist() == [k] * len(present)  # balanced
    assert np.array_equal(idx, fewshot_indices(targets.tolist(), k, seed))  # same seed, same answer


def test_different_seeds_differ_and_global_state_is_ignored():
    targets = np.repeat(np.arange(10), 100)
    runs = {tuple(fewshot_indices(targets, 5, s)) for s in range(20)}
    assert len(runs) == 20
    first = fewshot_indices(targets, 5, 3)
    np.random.seed(0)
    np.random.random(10)
    assert np.array_equal(first, fewshot_indices(targets, 5, 3))
    # Across seeds every example of a class gets picked sometimes: it is a sample, not a fixed prefix.
    small = np.repeat(np.arange(10), 20)
    picked = np.concatenate([fewshot_indices(small, 5, s) for s in range(200)])
    assert len(np.unique(picked)) == 200  # a given example is missed by all 200 draws with chance 0.75**200


def test_errors_name_the_class_and_its_size():
    targets = np.array([0, 0, 0, 1, 2, 2, 2])
    with pytest.raises(DataError, match=r"class 'dog' has only 1 example\(s\), fewer than the 2"):
        fewshot_indices(targets, 2, 0, classes=["cat", "dog", "eel"])
    with pytest.raises(DataError, match=r"class 'fox' has only 0 example"):
        fewshot_indices(targets, 1, 0, classes=["cat", "dog", "eel", "fox"])
    with pytest.raises(DataError, match="class '1' has only 1"):
        fewshot_indices(targets, 3, 0)
    for bad_k in (0, -1, 1.5, True):
        with pytest.raises(DataError, match="positive integer"):
            fewshot_indices(targets, bad_k, 0)
    with pytest.raises(DataError, match="non-negative integer"):
        fewshot_indices(targets, 1, -1)


def _toy(n_per_class: int = 6, classes: int = 4) -> ArrayDataset:
    n = n_per_class * classes
    images = np.arange(n, dtype=np.uint8).repeat(4).reshape(n, 2, 2, 1)  # pixel value = index
    return ArrayDataset(images, np.arange(n) % classes, [f"c{i}" for i in range(classes)], "toy")


def test_split_is_disjoint_and_complete():
    ds = _toy()
    train, rest = fewshot_split(ds, 2, seed=9)
    assert len(train) == 8 and len(rest) == 16
    assert set(train.indices) | set(rest.indices) == set(range(24)) and not set(train.indices) & set(rest.indices)
    assert np.array_equal(train.indices, fewshot_subset(ds, 2, 9).indices)
    assert train.classes == ds.classes and train.image_size == (2, 2)
    assert np.bincount(train.targets).tolist() == [2, 2, 2, 2] and np.bincount(rest.targets).tolist() == [4] * 4
    for sub in (train, rest):
        for j in range(len(sub)):
            img, label = sub[j]
            assert int(img[0, 0, 0]) == sub.indices[j] and label == ds.targets[sub.indices[j]]
    train.transform = lambda im: im.float()  # each subset can carry its own pipeline
    assert train[0][0].dtype.is_floating_point and rest.transform is None and not rest[0][0].dtype.is_floating_point
    with pytest.raises(DataError, match="class 'c0' has only 6"):
        fewshot_split(ds, 7, 0)


@pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="scikit-learn is not installed")
def test_on_real_digits():
    from bigtransfer.data import load_dataset

    ds = load_dataset("digits")
    for k in (1, 2, 5, 10):
        train, rest = fewshot_split(ds, k, seed=0)
        assert len(train) == 10 * k and len(rest) == len(ds) - 10 * k
        assert np.bincount(train.targets).tolist() == [k] * 10
    a, b = fewshot_subset(ds, 5, 1), fewshot_subset(ds, 5, 2)
    assert not np.array_equal(a.indices, b.indices)
