"""HyperRule and recipe transforms, model normalisation, and MixUp."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from bigtransfer.data import (
    MixUp,
    eval_recipe,
    hyperrule_eval,
    hyperrule_train,
    hyperrule_transforms,
    normalization,
    train_recipe,
)
from bigtransfer.data.transforms import ToNormalized, Unwrap
from bigtransfer.hyperrule import for_dataset
from bigtransfer.models import get_config

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def stripes(h: int = 20, w: int = 60) -> tv_tensors.Image:
    """Three vertical stripes, red | green | blue, as a uint8 CHW image."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 3], arr[:, w // 3: 2 * w // 3], arr[:, 2 * w // 3:] = RED, GREEN, BLUE
    return tv_tensors.Image(torch.from_numpy(arr).permute(2, 0, 1).contiguous())


def colour_at(x: torch.Tensor, col: int) -> tuple[float, ...]:
    """Mean RGB in [-1, 1] of column ``col``."""
    return tuple(round(v, 2) for v in x[:, :, col].mean(dim=1).tolist())


def test_hyperrule_eval_squashes_and_normalises_to_unit_range():
    x = hyperrule_eval(30)(stripes())
    assert type(x) is torch.Tensor and x.dtype == torch.float32 and x.shape == (3, 30, 30)
    # Squashed, not cropped: all three stripes survive, side by side.
    assert colour_at(x, 2) == (1.0, -1.0, -1.0)
    assert colour_at(x, 15) == (-1.0, 1.0, -1.0)
    assert colour_at(x, 27) == (-1.0, -1.0, 1.0)


def test_eval_recipe_resizes_the_shorter_side_and_centre_crops():
    x = eval_recipe(20, 20)(stripes())
    assert x.shape == (3, 20, 20)
    assert colour_at(x, 1) == colour_at(x, 18) == (-1.0, 1.0, -1.0)  # only the middle stripe is left
    y = eval_recipe(40, 32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))(stripes())
    assert y.shape == (3, 32, 32)
    assert y[1].max().item() == pytest.approx((1 - 0.456) / 0.224, abs=1e-4)


def test_hyperrule_train_crops_and_flips():
    img = stripes(16, 48)
    torch.manual_seed(0)
    t = hyperrule_train(48, 48)  # precrop == crop: the crop keeps everything, only the flip varies
    outs = [t(img) for _ in range(40)]
    assert all(o.shape == (3, 48, 48) for o in outs)
    left = {colour_at(o, 0) for o in outs}
    assert left == {(1.0, -1.0, -1.0), (-1.0, -1.0, 1.0)}  # both orientations appear
    no_flip = hyperrule_train(48, 48, flip=False)
    assert all(colour_at(no_flip(img), 0) == (1.0, -1.0, -1.0) for _ in range(20))
    assert not any(isinstance(s, v2.RandomHorizontalFlip) for s in no_flip.transforms)
    with_ra = hyperrule_train(40, 32, randaugment=(2, 20))
    ra = [s for s in with_ra.transforms if isinstance(s, v2.RandAugment)]
    assert len(ra) == 1 and (ra[0].num_ops, ra[0].magnitude) == (2, 20) and with_ra(img).shape == (3, 32, 32)
    kinds = [type(s) for s in with_ra.transforms]
    assert kinds.index(v2.RandomHorizontalFlip) < kinds.index(v2.RandAugment) < kinds.index(ToNormalized)
    cropped = hyperrule_train(160, 128)(img)
    assert cropped.shape == (3, 128, 128) and cropped.min() >= -1.0 and cropped.max() <= 1.0


def test_train_recipe_stages():
    rand = train_recipe(32, randaugment=(2, 9))
    kinds = [type(s) for s in rand.transforms]
    assert v2.RandomResizedCrop in kinds and v2.RandAugment in kinds and v2.ColorJitter not in kinds
    ra = next(s for s in rand.transforms if isinstance(s, v2.RandAugment))
    assert (ra.num_ops, ra.magnitude) == (2, 9)
    jitter = train_recipe(32, color_jitter=0.4, hflip=0.0)
    kinds = [type(s) for s in jitter.transforms]
    assert v2.ColorJitter in kinds and v2.RandomHorizontalFlip not in kinds and v2.RandAugment not in kinds
    cj = next(s for s in jitter.transforms if isinstance(s, v2.ColorJitter))
    assert cj.brightness == cj.contrast == cj.saturation == (0.6, 1.4)
    rrc = next(s for s in jitter.transforms if isinstance(s, v2.RandomResizedCrop))
    assert tuple(rrc.scale) == (0.08, 1.0)
    torch.manual_seed(1)
    imagenet = train_recipe(24, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), color_jitter=None)
    norm = next(s for s in imagenet.transforms if isinstance(s, v2.Normalize))
    assert tuple(norm.mean) == (0.485, 0.456, 0.406) and tuple(norm.std) == (0.229, 0.224, 0.225)
    for t in (rand, jitter, imagenet):
        out = t(stripes(50, 70))
        assert out.shape == (3, out.shape[1], out.shape[2]) and out.dtype == torch.float32


def test_normalisation_follows_the_pretrained_config():
    assert normalization(get_config("BiT-M-R50x1")) == ((0.5,) * 3, (0.5,) * 3)
    assert normalization(get_config("bit_resnet50")) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

    class Model:
        pretrained_cfg = {"mean": (0.1, 0.2, 0.3), "std": (1.0, 2.0, 3.0)}

    assert normalization(Model()) == ((0.1, 0.2, 0.3), (1.0, 2.0, 3.0))
    assert normalization(None) == ((0.5,) * 3, (0.5,) * 3)
    train, ev = hyperrule_transforms(for_dataset(100, 32), *normalization(Model()), flip=False)
    assert ev(stripes()).shape == (3, 128, 128) and train(stripes()).shape == (3, 128, 128)


# ---- MixUp ----

def test_mixup_lambda_is_seeded_by_the_generator_only():
    m = MixUp(0.1)
    a = [m.sample(torch.Generator().manual_seed(5)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    np.random.seed(123)
    torch.manual_seed(123)  # global state must not matter
    assert m.sample(torch.Generator().manual_seed(5)) == a[0]
    g = torch.Generator().manual_seed(0)
    draws = np.array([m.sample(g) for _ in range(2000)])
    assert len(set(draws.tolist())) > 1900 and ((draws >= 0) & (draws <= 1)).all()
    # Beta(0.1, 0.1) piles up near 0 and 1 (about 81 % within 0.1 of an end; uniform would give 20 %).
    assert ((draws < 0.1) | (draws > 0.9)).mean() > 0.7
    assert abs(draws.mean() - 0.5) < 0.05
    flat = np.array([MixUp(1.0).sample(g) for _ in range(2000)])
    assert 0.12 < ((flat < 0.1) | (flat > 0.9)).mean() < 0.28


def test_mix_blends_partners_and_mixes_the_loss():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 3, 4, 4, generator=g)
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    perm = MixUp.permutation(6, g)
    assert sorted(perm.tolist()) == list(range(6))
    xm, ya, yb = MixUp.mix(x, y, 0.3, perm)
    for i in range(6):
        torch.testing.assert_close(xm[i], 0.3 * x[i] + 0.7 * x[perm[i]])
        assert ya[i] == y[i] and yb[i] == y[perm[i]]
    logits = torch.randn(6, 6, generator=g)
    ce = torch.nn.CrossEntropyLoss()
    expected = 0.3 * ce(logits, y) + 0.7 * ce(logits, y[perm])
    torch.testing.assert_close(MixUp.mixed_loss(ce, logits, ya, yb, 0.3), expected)
    torch.testing.assert_close(MixUp.mixed_loss(ce, logits, ya, yb, 1.0), ce(logits, y))


def test_one_lambda_per_step_over_micro_batches():
    m = MixUp(0.1)
    x = torch.arange(8.0).reshape(8, 1)
    y = torch.arange(8)

    def step(seed):
        g = torch.Generator().manual_seed(seed)
        lam = m.sample(g)
        parts = [m.mix(xb, yb, lam, m.permutation(len(xb), g)) for xb, yb in zip(x.split(4), y.split(4), strict=True)]
        return lam, parts

    lam, parts = step(7)
    for (xm, ya, yb), xb in zip(parts, x.split(4), strict=True):
        # Every micro-batch uses the step's lambda and only partners from its own micro-batch.
        perm = yb - ya[0]  # labels equal positions, so the partner labels give the permutation back
        torch.testing.assert_close(xm, lam * xb + (1 - lam) * xb[perm])
        assert set(yb.tolist()) == set(ya.tolist())
    lam2, parts2 = step(7)
    assert lam2 == lam and all(torch.equal(a[0], b[0]) for a, b in zip(parts, parts2, strict=True))


def test_mixup_disabled_is_identity():
    m = MixUp(0.0)
    x, y = torch.randn(4, 2), torch.arange(4)
    xm, ya, yb, lam = m(x, y, torch.Generator().manual_seed(0))
    assert lam == 1.0 and xm is x and torch.equal(ya, y) and torch.equal(yb, y) and not m.enabled
    xm, ya, yb, lam = MixUp(0.2)(x, y, torch.Generator().manual_seed(0))
    assert 0 <= lam <= 1 and xm.shape == x.shape and sorted(yb.tolist()) == [0, 1, 2, 3]


def _as_torchvision_chain(pipeline: v2.Compose) -> v2.Compose:
    """The same pipeline in torchvision's own steps: no Unwrap, and ToDtype + Normalize + ToPureTensor."""
    steps = []
    for s in pipeline.transforms:
        if isinstance(s, ToNormalized):
            steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(s.mean, s.std), v2.ToPureTensor()]
        elif not isinstance(s, Unwrap):
            steps.append(s)
    return v2.Compose(steps)


@pytest.mark.parametrize("build", [
    lambda: hyperrule_train(40, 32), lambda: hyperrule_eval(32), lambda: eval_recipe(36, 32, (0.4, 0.5, 0.6)),
    lambda: train_recipe(32, scale=(0.4, 1.0)), lambda: train_recipe(32, randaugment=(2, 9), hflip=0.0),
])
def test_the_pipelines_give_torchvisions_numbers_bit_for_bit(build):
    pipeline = build()
    reference = _as_torchvision_chain(pipeline)
    assert isinstance(pipeline.transforms[0], Unwrap) and isinstance(pipeline.transforms[-1], ToNormalized)
    assert not any(isinstance(s, (Unwrap, ToNormalized)) for s in reference.transforms)  # torchvision's own steps
    rng = np.random.default_rng(0)
    for seed in range(8):
        image = tv_tensors.Image(torch.from_numpy(rng.integers(0, 256, (3, 45, 37), dtype=np.uint8)))
        torch.manual_seed(seed)
        ours = pipeline(image)
        torch.manual_seed(seed)
        theirs = reference(image)
        assert type(ours) is torch.Tensor and ours.dtype == torch.float32
        assert torch.equal(ours, theirs)
