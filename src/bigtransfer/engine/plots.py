"""Matplotlib figures a run writes: training curves, confusion matrix, accuracy against examples per class."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_training(metrics_file: Path, out: Path) -> Path | None:
    """Loss and learning rate against step, from a run's ``metrics.jsonl``."""
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    train = [r for r in rows if "loss" in r]
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot([r["step"] for r in train], [r["lr"] for r in train], color="tab:orange", alpha=0.6, label="lr")
    ax2.set_ylabel("learning rate")
    fig.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_confusion(confusion: list[list[int]], classes: list[str], out: Path) -> Path:
    """Row-normalised confusion matrix (true class by row)."""
    m = np.asarray(confusion, dtype=float)
    m = m / np.maximum(m.sum(1, keepdims=True), 1)
    n = len(classes)
    size = min(2 + 0.35 * n, 16)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    if n <= 40:
        ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(n), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_fewshot(curves: dict[str, dict[int, list[float]]], out: Path, metric: str = "accuracy (%)",
                 title: str = "") -> Path:
    """Accuracy against examples per class: one line per method, mean with a band of +-1 std (Fig. 6 shape)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, cells in curves.items():
        ks = sorted(cells)
        mean = np.array([np.mean(cells[k]) for k in ks])
        std = np.array([np.std(cells[k]) for k in ks])
        line, = ax.plot(ks, mean, marker="o", label=name)
        ax.fill_between(ks, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set_xscale("log")
    all_k = sorted({k for c in curves.values() for k in c})
    ax.set_xticks(all_k, [str(k) for k in all_k])
    ax.set_xlabel("examples per class")
    ax.set_ylabel(metric)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
