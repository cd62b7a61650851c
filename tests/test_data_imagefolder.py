"""ImageFolder: every image mode Pillow hands us ends up RGB uint8; bad files and layouts give one clear error."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from bigtransfer.data import ImageFolder, load_dataset
from bigtransfer.errors import DataError
from conftest import foolbox_files

RNG = np.random.default_rng(0)


def rgb(h: int = 12, w: int = 10) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path: Path, img: Image.Image, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def exif_rotated(path: Path) -> np.ndarray:
    """A JPEG stored 8 wide x 4 high, left half red and right half blue, with EXIF orientation 6 (90 deg CW)."""
    arr = np.zeros((4, 8, 3), np.uint8)
    arr[:, :4] = (255, 0, 0)
    arr[:, 4:] = (0, 0, 255)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6
    save(path, img, quality=100, exif=exif)
    return np.rot90(arr, k=-1)  # what a viewer shows: red on top, blue below, 4 wide x 8 high


def corrupt_and_expected(folder: Path) -> dict[str, np.ndarray]:
    """Write one file per mode into folder/<class>; return the RGB arrays the reader must produce (by file name)."""
    expected: dict[str, np.ndarray] = {}
    a = rgb()
    save(folder / "cat" / "rgb.png", Image.fromarray(a))
    expected["rgb.png"] = a
    grey = RNG.integers(0, 256, (9, 7), dtype=np.uint8)
    save(folder / "cat" / "grey.png", Image.fromarray(grey, "L"))
    expected["grey.png"] = np.repeat(grey[..., None], 3, axis=-1)
    rgba = RNG.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    save(folder / "cat" / "alpha.png", Image.fromarray(rgba, "RGBA"))
    expected["alpha.png"] = rgba[..., :3]
    wide = np.array([[0, 257, 32896], [65535, 514, 1000]], dtype=np.uint16)
    save(folder / "cat" / "deep16.png", Image.fromarray(wide))  # 16-bit grey
    expected["deep16.png"] = np.repeat(np.rint(wide / 257).astype(np.uint8)[..., None], 3, axis=-1)
    pal = Image.fromarray(rgb(5, 5)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    save(folder / "dog" / "palette.gif", pal)
    expected["palette.gif"] = np.asarray(pal.convert("RGB"))
    cmyk = Image.fromarray(rgb(8, 8)).convert("CMYK")
    save(folder / "dog" / "cmyk.jpg", cmyk, quality=95)
    with Image.open(folder / "dog" / "cmyk.jpg") as im:
        assert im.mode == "CMYK"
        expected["cmyk.jpg"] = np.asarray(im.convert("RGB"))
    b = rgb(16, 16)
    save(folder / "dog" / "photo.JPEG", Image.fromarray(b), quality=90)
    with Image.open(folder / "dog" / "photo.JPEG") as im:
        expected["photo.JPEG"] = np.asarray(im)
    expected["rotated.jpg"] = exif_rotated(folder / "dog" / "rotated.jpg")
    (folder / "dog" / "notes.txt").write_text("not an image")  # ignored: not an image extension
    save(folder / "dog" / ".hidden.png", Image.fromarray(rgb()))  # ignored: hidden
    return expected


@pytest.fixture()
def tree(tmp_path):
    expected = corrupt_and_expected(tmp_path / "data" / "train")
    save(tmp_path / "data" / "val" / "cat" / "v1.png", Image.fromarray(rgb(20, 30)))
    save(tmp_path / "data" / "val" / "dog" / "v2.bmp", Image.fromarray(rgb(20, 30)))
    return tmp_path / "data", expected


def test_every_mode_is_read_as_rgb(tree):
    root, expected = tree
    ds = load_dataset(f"imagefolder:{root}")
    assert ds.classes == ["cat", "dog"]
    assert sorted(p.name for p in ds.paths) == sorted(expected)
    assert np.bincount(ds.targets).tolist() == [4, 4]
    for i, path in enumerate(ds.paths):
        img, label = ds[i]
        assert isinstance(img, tv_tensors.Image) and img.dtype == torch.uint8 and img.shape[0] == 3
        assert label == ds.classes.index(path.parent.name)
        got, want = img.permute(1, 2, 0).numpy(), expected[path.name]
        assert got.shape == want.shape, path.name
        if path.name == "rotated.jpg":  # lossy: compare the colour halves
            assert got[:4, :, 0].mean() > 200 and got[:4, :, 2].mean() < 60
            assert got[4:, :, 2].mean() > 200 and got[4:, :, 0].mean() < 60
        else:
            np.testing.assert_array_equal(got, want, err_msg=path.name)


def test_splits_and_image_size(tree):
    root, _ = tree
    val = ImageFolder(root, "val")
    assert len(val) == 2 and val.classes == ["cat", "dog"] and val.image_size == (20, 30)
    assert ImageFolder(root, "test").paths == val.paths  # 'test' falls back to val/
    assert load_dataset(f"imagefolder:{root}/train", "train").classes == ["cat", "dog"]  # no split folders
    with pytest.raises(DataError, match="is split into"):
        ImageFolder(root, "all")


def test_real_jpegs_from_foolbox(tmp_path):
    files = foolbox_files("imagenet_*.jpg")
    if not files:
        pytest.skip("foolbox ships no ImageNet samples")
    for f in files:
        label = re.match(r"imagenet_\d+_(\d+)\.jpg", f.name).group(1)
        (tmp_path / f"n{int(label):04d}").mkdir(exist_ok=True)
        (tmp_path / f"n{int(label):04d}" / f.name).write_bytes(f.read_bytes())
    ds = ImageFolder(tmp_path)
    assert len(ds) == len(files) and len(ds.classes) == len({p.parent.name for p in ds.paths})
    for i in (0, len(ds) // 2, len(ds) - 1):
        with Image.open(ds.paths[i]) as im:
            np.testing.assert_array_equal(ds[i][0].permute(1, 2, 0).numpy(), np.asarray(im.convert("RGB")))
    sizes = []  # (H, W) of every image; all of them fit in the size sample
    for f in files:
        with Image.open(f) as im:
            sizes.append((im.height, im.width))
    assert ds.image_size == tuple(int(v) for v in np.median(sizes, axis=0))
    assert len(set(sizes)) > 1  # mixed sizes, so the median is a real check


def _corrupt_tree(root: Path) -> None:
    for cls in ("a", "b"):
        for j in range(3):
            save(root / cls / f"{j}.png", Image.fromarray(rgb(8, 8)))
    (root / "a" / "garbage.png").write_bytes(b"\x89PNG not really" + bytes(100))
    png = (root / "b" / "0.png").read_bytes()
    (root / "b" / "cut.png").write_bytes(png[: len(png) // 2])
    save(root / "b" / "big.jpg", Image.fromarray(rgb(64, 64)), quality=95)
    jpg = (root / "b" / "big.jpg").read_bytes()
    (root / "b" / "cut.jpg").write_bytes(jpg[: len(jpg) // 2])


def test_corrupt_images_fail_naming_the_file_or_are_skipped(tmp_path):
    _corrupt_tree(tmp_path)
    ds = ImageFolder(tmp_path)
    assert len(ds) == 10
    bad = {p.name: i for i, p in enumerate(ds.paths) if p.name in ("garbage.png", "cut.png", "cut.jpg")}
    for name, i in bad.items():
        with pytest.raises(DataError, match=rf"{re.escape(name)}.*skip_corrupt"):
            ds[i]
    ds[ds.paths.index(tmp_path / "b" / "big.jpg")]  # the intact neighbours read fine

    skipped = load_dataset(f"imagefolder:{tmp_path}", skip_corrupt=True)
    assert sorted(p.name for p in skipped.skipped) == ["cut.jpg", "cut.png", "garbage.png"]
    assert len(skipped) == 7 and np.bincount(skipped.targets).tolist() == [3, 4]
    for i in range(len(skipped)):
        assert skipped[i][0].shape[0] == 3


def test_layout_errors(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        ImageFolder(tmp_path / "nothing")
    save(tmp_path / "one" / "only" / "x.png", Image.fromarray(rgb()))
    with pytest.raises(DataError, match="single class folder 'only'"):
        ImageFolder(tmp_path / "one")
    save(tmp_path / "hole" / "a" / "x.png", Image.fromarray(rgb()))
    (tmp_path / "hole" / "b").mkdir()
    (tmp_path / "hole" / "b" / "readme.txt").write_text("no images")
    with pytest.raises(DataError, match=r"class folder '.*hole/b' holds no images"):
        ImageFolder(tmp_path / "hole")
    save(tmp_path / "split" / "train" / "a" / "x.png", Image.fromarray(rgb()))
    save(tmp_path / "split" / "train" / "b" / "x.png", Image.fromarray(rgb()))
    with pytest.raises(DataError, match="has no 'val' folder"):
        ImageFolder(tmp_path / "split", "val")
    with pytest.raises(DataError, match="no split folders"):
        ImageFolder(tmp_path / "hole", "val")
    with pytest.raises(DataError, match="unknown split"):
        ImageFolder(tmp_path / "split", "holdout")
