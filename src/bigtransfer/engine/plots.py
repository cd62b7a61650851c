"""Matplotlib figures a run writes: training curves, confusion matrix, accuracy against examples per class."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Collection, Iterator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from .runs import read_rows  # noqa: E402


def training_figure(rows: list[dict]) -> Figure | None:
    """Loss and learning rate (its own axis) against step and, when the rows hold evaluations, accuracy below."""
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "top1" in r]
    if not train:
        return None
    acc = None
    if evals:
        fig, (ax, acc) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True, height_ratios=[3, 2])
    else:
        fig, ax = plt.subplots(figsize=(7, 3.8))
    (loss_line,) = ax.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue", label="train loss")
    ax.set_ylabel("loss", color="tab:blue")
    ax.tick_params(axis="y", colors="tab:blue")
    ax.grid(alpha=0.3)
    handles = [loss_line]
    lr_rows = [r for r in train if isinstance(r.get("lr"), int | float)]
    if lr_rows:
        ax2 = ax.twinx()
        (lr_line,) = ax2.plot([r["step"] for r in lr_rows], [r["lr"] for r in lr_rows], color="tab:orange",
                              label="learning rate (right axis)")
        ax2.set_ylabel("learning rate", color="tab:orange")
        ax2.tick_params(axis="y", colors="tab:orange")
        ax2.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.1e}" if v else "0"))
        ax2.set_ylim(bottom=0)
        handles.append(lr_line)
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0, 1.01), ncol=len(handles), frameon=False)
    if acc is not None:
        e_steps = [r["step"] for r in evals]
        acc.plot(e_steps, [r["top1"] for r in evals], marker="o", color="tab:green", label="top-1")
        if all("top5" in r for r in evals):
            acc.plot(e_steps, [r["top5"] for r in evals], marker="s", color="tab:purple", alpha=0.6, label="top-5")
        last = evals[-1]
        acc.annotate(f"{last['top1']:.1f}%", (last["step"], last["top1"]), textcoords="offset points",
                     xytext=(0, -8), ha="center", va="top", fontsize=8, color="tab:green")
        acc.set_ylabel("eval accuracy (%)")
        acc.set_ylim(0, 105)
        acc.grid(alpha=0.3)
        acc.legend(loc="lower left", bbox_to_anchor=(0, 1.01), ncol=2, frameon=False)
    (ax if acc is None else acc).set_xlabel("step")
    _layout(fig)
    return fig


def plot_training(metrics_file: Path, out: Path) -> Path | None:
    """``training_figure`` of a run's ``metrics.jsonl``, written to ``out``; None when it has no training rows."""
    fig = training_figure(read_rows(metrics_file))
    return None if fig is None else _save(fig, out)


@contextlib.contextmanager
def _missing_glyphs_quiet() -> Iterator[None]:
    """Class names in a script the font lacks are drawn as boxes; matplotlib's warning per glyph is left out."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)
        yield


def _layout(fig: Figure, **kwargs) -> None:
    with _missing_glyphs_quiet():
        fig.tight_layout(**kwargs)


def _save(fig: Figure, out: Path, dpi: int = 120) -> Path:
    with _missing_glyphs_quiet():
        fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def confusion_figure(confusion: list[list[int]], classes: list[str], counts_up_to: int = 30) -> Figure:
    """Row-normalised confusion matrix (true class by row) with a colour bar, a title with n and top-1, and the
    counts written in the cells when there are at most ``counts_up_to`` classes."""
    counts = np.asarray(confusion, dtype=np.int64)
    m = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    n = len(classes)
    total = int(counts.sum())
    top1 = 100.0 * np.trace(counts) / max(total, 1)
    side = min(3.0 + 0.38 * n, 16)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("fraction of the true class")
    if n <= 40:
        ax.set_xticks(range(n), classes, rotation=90, fontsize=7 if n > 10 else 9)
        ax.set_yticks(range(n), classes, fontsize=7 if n > 10 else 9)
    if n <= counts_up_to:
        size = 10 if n <= 10 else 8 if n <= 20 else 7
        for i in range(counts.shape[0]):
            for j in range(counts.shape[1]):
                c = int(counts[i, j])
                colour = "white" if m[i, j] > 0.5 else ("black" if c else "0.7")
                ax.text(j, i, str(c), ha="center", va="center", fontsize=size, color=colour)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix: n = {total}, top-1 {top1:.1f}%")
    _layout(fig)
    return fig


def cell_texts(fig: Figure) -> list[str]:
    """The numbers written in the cells of a ``confusion_figure``, row by row."""
    return [t.get_text() for t in fig.axes[0].texts]


def plot_confusion(confusion: list[list[int]], classes: list[str], out: Path) -> Path:
    """``confusion_figure`` written to ``out``."""
    return _save(confusion_figure(confusion, classes), out)


def _draw_fewshot(ax, curves: dict[str, dict[int, list[float]]], metric: str, title: str = "",
                  band: bool = True) -> None:
    """One panel: a line per method, the mean over seeds (with a band of +-1 std), against k on a log axis."""
    for name, cells in curves.items():
        ks = sorted(k for k in cells if cells[k])
        mean = np.array([np.mean(cells[k]) for k in ks])
        std = np.array([np.std(cells[k]) for k in ks])
        line, = ax.plot(ks, mean, marker="o", label=name)
        if band:
            ax.fill_between(ks, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set_xscale("log")
    all_k = sorted({k for c in curves.values() for k in c})
    ax.set_xticks(all_k, [str(k) for k in all_k])
    ax.minorticks_off()
    ax.set_xlabel("examples per class")
    ax.set_ylabel(metric)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)


def plot_fewshot(curves: dict[str, dict[int, list[float]]], out: Path, metric: str = "accuracy (%)",
                 title: str = "") -> Path:
    """Accuracy against examples per class: one line per method, mean with a band of +-1 std (Fig. 6 shape)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    _draw_fewshot(ax, curves, metric, title)
    ax.legend()
    _layout(fig)
    return _save(fig, out)


def plot_fewshot_panels(panels: dict[str, dict[str, dict[int, list[float]]]], out: Path,
                        metric: str = "accuracy (%)", title: str = "", no_band: Collection[str] = ()) -> Path:
    """One few-shot panel per task (e.g. a transfer suite) side by side, with one legend for all; the panels named
    in ``no_band`` (e.g. a mean over tasks, whose spread is between tasks, not seeds) are drawn without bands."""
    n = len(panels)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows + 0.8), squeeze=False)
    for ax, (name, curves) in zip(axes.flat, panels.items(), strict=False):
        _draw_fewshot(ax, curves, metric, name, band=name not in no_band)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), frameon=False)
    if title:
        fig.suptitle(title)
    _layout(fig, rect=(0, 0.07, 1, 1))
    return _save(fig, out, dpi=110)
