"""Batched inference over ``(image, index)`` data sets: class probabilities or pre-logit features, with workers."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..data.paths import collate_indexed
from ..models.fast import InferenceModel


class Batch(NamedTuple):
    """One batch of results: ``values[j]`` belongs to item ``indices[j]``; ``skipped`` items were unreadable."""

    indices: list[int]
    values: torch.Tensor
    skipped: list[int]


def run_batches(fn: Callable[[torch.Tensor], torch.Tensor], dataset: Dataset, *, batch_size: int = 64,
                workers: int = 2, device: torch.device | str = "cpu", progress: bool = False,
                desc: str = "predict") -> Iterator[Batch]:
    """``fn`` on each batch of ``dataset`` (items ``(tensor or None, index)``), in order; results on the CPU."""
    from tqdm.auto import tqdm

    device = torch.device(device)
    n = len(dataset)
    batches = -(-n // batch_size)
    workers = 0 if batches <= 1 else min(workers, batches)  # none for a single batch, at most one per batch
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate_indexed, pin_memory=device.type == "cuda")
    # A bar only on a terminal: piped output and captured logs keep one line per result or error.
    bar = tqdm(total=n, desc=desc, unit="img", leave=False, dynamic_ncols=True, disable=None if progress else True)
    try:
        for images, indices, skipped in loader:
            values = torch.empty(0) if images is None else fn(images.to(device, non_blocking=True)).float().cpu()
            bar.update(len(indices) + len(skipped))
            yield Batch(indices, values, skipped)
    finally:
        bar.close()


def predict_batches(model: InferenceModel, dataset: Dataset, *, batch_size: int = 64, workers: int = 2,
                    device: torch.device | str = "cpu", progress: bool = False) -> Iterator[Batch]:
    """Softmax probabilities (N x classes) of a prepared model, batch by batch."""
    return run_batches(lambda x: model(x).softmax(1), dataset, batch_size=batch_size, workers=workers,
                       device=device, progress=progress, desc="predict")


def pre_logits(model: InferenceModel, x: torch.Tensor) -> torch.Tensor:
    """``forward_head(forward_features(x), pre_logits=True)`` through the prepared model's mode, in fp32."""
    net = model.model
    if model.mode == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    amp = torch.autocast(x.device.type, dtype=torch.bfloat16) if model.bf16 else contextlib.nullcontext()
    with torch.inference_mode(), amp:
        return net.forward_head(net.forward_features(x), pre_logits=True).float()


def feature_batches(model: InferenceModel, dataset: Dataset, *, batch_size: int = 64, workers: int = 2,
                    device: torch.device | str = "cpu", progress: bool = False) -> Iterator[Batch]:
    """Pre-logit features (N x D) of a prepared model, batch by batch."""
    return run_batches(lambda x: pre_logits(model, x), dataset, batch_size=batch_size, workers=workers,
                       device=device, progress=progress, desc="embed")


def nearest(index: np.ndarray, queries: np.ndarray, k: int,
            use_faiss: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of ``index`` most cosine-similar to each query: (similarities, row ids), each Q x k; faiss
    (exact inner product) when installed and ``use_faiss``, else numpy, where ties go to the lower row."""

    def unit(a) -> np.ndarray:
        a = np.asarray(a, dtype=np.float32)
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    base, q = unit(index), unit(queries)
    k = min(k, len(base))
    if use_faiss:
        try:
            import faiss
        except ImportError:
            pass
        else:
            flat = faiss.IndexFlatIP(base.shape[1])
            flat.add(np.ascontiguousarray(base))
            sims, ids = flat.search(np.ascontiguousarray(q), k)
            return sims, ids.astype(np.int64)
    sims = np.empty((len(q), k), dtype=np.float32)
    ids = np.empty((len(q), k), dtype=np.int64)
    for start in range(0, len(q), 256):
        s = q[start:start + 256] @ base.T
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        for j, row in enumerate(top):
            order = row[np.lexsort((row, -s[j, row]))]
            ids[start + j] = order
            sims[start + j] = s[j, order]
    return sims, ids
