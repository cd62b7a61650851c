"""Few-shot baselines: the same network from scratch and a linear probe (each with its own recipe laid over the
sweep's model, data and resolution), and logistic regression on raw pixels, computed here from the images alone."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import BitError

# flag -> the method's name in tables and results.json
BASELINES = {"scratch": "scratch", "probe": "linear probe", "pixels": "raw-pixel LR"}
RECIPES = {"scratch": "scratch", "probe": "probe"}  # the default recipe of each engine baseline
PIXEL_SIZE = 32  # images that are not one in-memory array are squashed to this many pixels a side


def parse_baselines(text: str | Sequence[str] | None) -> list[str]:
    """``"scratch,probe"`` -> the flags, in the order of ``BASELINES``; an unknown one is one clear error."""
    names = [t.strip() for t in (text.split(",") if isinstance(text, str) else text or []) if t.strip()]
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise BitError(f"unknown baseline '{unknown[0]}': choose from {', '.join(BASELINES)} (comma-separated)")
    return [n for n in BASELINES if n in names]


def baseline_methods(names: Sequence[str], recipes: dict[str, str] | None = None) -> dict[str, dict]:
    """Method name -> the settings its cells lay over the sweep's config, for the engine baselines in ``names``."""
    from ..recipes import recipe_settings

    recipes = {**RECIPES, **(recipes or {})}
    methods = {}
    if "scratch" in names:
        methods[BASELINES["scratch"]] = {**recipe_settings(recipes["scratch"]), "pretrained": False, "weights": None,
                                         "head_only": False}
    if "probe" in names:
        methods[BASELINES["probe"]] = {**recipe_settings(recipes["probe"]), "head_only": True}
    return methods


def pixel_matrix(dataset, size: int = PIXEL_SIZE, progress: bool = False) -> np.ndarray:
    """One row of uint8 pixels per image: an in-memory array as it is, any other set squashed to ``size`` px."""
    images = getattr(dataset, "images", None)
    if isinstance(images, np.ndarray):
        return images.reshape(len(images), -1)
    from torchvision.transforms.v2 import functional as F
    from tqdm.auto import tqdm

    rows = [F.resize(dataset.load_image(i), [size, size], antialias=True).numpy().reshape(-1)
            for i in tqdm(range(len(dataset)), desc="raw pixels", disable=not progress, leave=False)]
    return np.stack(rows) if rows else np.zeros((0, 3 * size * size), dtype=np.uint8)


def _score(y_true: np.ndarray, y_pred: np.ndarray, metric: str, num_classes: int) -> float:
    """``metric`` (%) as the engine's evaluation defines it, from the confusion matrix of these predictions."""
    from .evaluate import summarize

    n = int(max(num_classes, y_true.max(initial=-1) + 1, y_pred.max(initial=-1) + 1))
    confusion = np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)
    return float(summarize(confusion, 0)[metric])


def pixel_baseline(train_set, eval_set=None, metric: str = "balanced_accuracy", size: int = PIXEL_SIZE,
                   progress: bool = False) -> Callable[[int, int], float]:
    """``score(k, seed)``: logistic regression on raw pixels of the (k, seed) few-shot split, scored (%, ``metric``)
    on ``eval_set`` or, without one, on the rest of the split, as the engine's cells are."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    from ..data import fewshot_indices

    y = np.asarray(train_set.targets)

    @functools.cache
    def matrix(which: str) -> np.ndarray:
        return pixel_matrix(train_set if which == "train" else eval_set, size, progress)

    def score(k: int, seed: int) -> float:
        x = matrix("train")
        chosen = fewshot_indices(y, int(k), int(seed), train_set.classes)
        if eval_set is None:
            rest = np.setdiff1d(np.arange(len(y)), chosen, assume_unique=True)
            xe, ye = x[rest], y[rest]
        else:
            xe, ye = matrix("eval"), np.asarray(eval_set.targets)
        # one BLAS thread: beside training processes, more threads oversubscribe the cores and run far slower
        with threadpool_limits(1):
            clf = LogisticRegression(max_iter=2000).fit(x[chosen] / 255.0, y[chosen])
            return _score(ye, clf.predict(xe / 255.0), metric, len(train_set.classes))

    score.settings = {"classifier": "logistic regression (scikit-learn, L2, C=1, max_iter 2000)",
                      "features": f"raw pixels / 255 (in-memory sets as stored, others squashed to {size}x{size})"}
    return score
