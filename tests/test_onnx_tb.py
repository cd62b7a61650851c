"""What a deployer and a watcher get from a run: ONNX metadata with a working onnxruntime example, TensorBoard
event files (also across a resume), and readable training and confusion plots."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from bigtransfer.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "onnxruntime_example.py"
TINY = ["finetune", "--data", "digits", "--steps", "12", "--model", "BiT-R14x0.5", "--no-pretrained", "--workers", "0",
        "--quiet", "--batch-size", "8", "--set", "crop=32", "--set", "precrop=36", "--val-split", "0.2",
        "--eval-every", "6", "--set", "log_every=2", "--save-every", "6", "--lr", "0.05"]


def rows_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of the run's event files as (step, value) pairs, as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def expected_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars the rows of ``metrics.jsonl`` call for."""
    want: dict[str, list[tuple[int, float]]] = {}
    for row in rows_of(run):
        keys = ("top1", "top5", "balanced_accuracy") if "top1" in row else ("loss", "lr", "img_per_s")
        for key in keys:
            want.setdefault(f"{'eval' if 'top1' in row else 'train'}/{key}", []).append((row["step"], row[key]))
    return want


def assert_same_scalars(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for tag in want:
        assert [s for s, _ in got[tag]] == [s for s, _ in want[tag]], tag
        assert np.allclose([v for _, v in got[tag]], [v for _, v in want[tag]], rtol=1e-5, atol=1e-12), tag


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    pytest.importorskip("tensorboard")
    out = tmp_path_factory.mktemp("tiny") / "run"
    assert main([*TINY, "--out", str(out)]) == 0
    return out


# --- TensorBoard -------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_event_files_hold_train_and_eval_scalars_at_their_steps(tiny_run):
    got = scalars(tiny_run)
    assert [s for s, _ in got["train/loss"]] == [2, 4, 6, 8, 10, 12]
    assert [s for s, _ in got["train/lr"]] == [2, 4, 6, 8, 10, 12]
    assert [s for s, _ in got["train/img_per_s"]] == [2, 4, 6, 8, 10, 12]
    assert [s for s, _ in got["eval/top1"]] == [6, 12]
    assert {"eval/top5", "eval/balanced_accuracy"} <= set(got)
    assert_same_scalars(got, expected_scalars(tiny_run))


def test_no_tensorboard_writes_no_event_files(tmp_path):
    out = tmp_path / "run"
    args = ["finetune", "--data", "digits", "--steps", "2", "--model", "BiT-R14x0.5", "--no-pretrained", "--workers",
            "0", "--quiet", "--batch-size", "8", "--set", "crop=32", "--set", "precrop=36", "--eval-split", "none",
            "--set", "log_every=1", "--no-tensorboard", "--out", str(out)]
    assert main(args) == 0
    assert [r["step"] for r in rows_of(out)] == [1, 2]  # metrics.jsonl as always
    assert "tensorboard: false" in (out / "config.yaml").read_text()
    assert not (out / "tensorboard").exists()
    assert not list(out.rglob("events.out.tfevents.*"))


@pytest.mark.slow
def test_resumed_run_repeats_no_step(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    # as if killed after logging step 12 but before its checkpoint: the newest checkpoint is step 6
    (run / "model.safetensors").unlink()
    shutil.rmtree(run / "checkpoints" / "step_00000012")
    (run / "checkpoints" / "latest").write_text("step_00000006\n")
    assert {s for s, _ in scalars(run)["train/loss"]} == {2, 4, 6, 8, 10, 12}  # the old events are there
    assert main([*TINY, "--out", str(run)]) == 0
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2
    got = scalars(run)
    assert [s for s, _ in got["train/loss"]] == [2, 4, 6, 8, 10, 12]
    assert [s for s, _ in got["eval/top1"]] == [6, 12]
    assert_same_scalars(got, expected_scalars(run))
    assert_same_scalars({k: v for k, v in got.items() if k != "train/img_per_s"},
                        {k: v for k, v in scalars(tiny_run).items() if k != "train/img_per_s"})


def test_event_log_is_a_no_op_when_disabled_or_without_tensorboard(tmp_path, monkeypatch):
    from bigtransfer.engine.tensorboard import EventLog

    row = {"step": 1, "loss": 1.0, "lr": 0.1, "img_per_s": 3.0}
    off = EventLog(tmp_path / "a", enabled=False)
    off.log(row)
    off.close()
    assert not (tmp_path / "a").exists()
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    missing = EventLog(tmp_path / "b", enabled=True)
    missing.log(row)
    missing.close()
    assert not missing.enabled and not (tmp_path / "b").exists()


# --- ONNX --------------------------------------------------------------------------------------------------------
def export_meta(source: Path, out: Path, *flags: str) -> dict[str, str]:
    ort = pytest.importorskip("onnxruntime")
    assert main(["export", str(source), "--onnx", str(out), *flags]) == 0
    assert not list(out.parent.glob(f".{out.name}.*"))  # written atomically
    return dict(ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).get_modelmeta()
                .custom_metadata_map)


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The tiny run exported with ``bit export`` (checked with onnxruntime), and its metadata props."""
    out = tmp_path_factory.mktemp("onnx") / "run.onnx"
    return out, export_meta(tiny_run, out)


@pytest.mark.slow
def test_export_writes_classes_and_preprocessing_as_metadata(tiny_run, exported, tmp_path):
    from bigtransfer import __version__

    meta = exported[1]
    assert json.loads(meta["classes"]) == json.loads((tiny_run / "classes.json").read_text()) == list("0123456789")
    assert json.loads(meta["mean"]) == [0.5, 0.5, 0.5] and json.loads(meta["std"]) == [0.5, 0.5, 0.5]
    assert (meta["input_size"], meta["transforms"], meta["resize"]) == ("32", "hyperrule", "32")
    assert "squash-resize to 32 x 32" in meta["preprocessing"]
    assert (meta["model"], meta["num_classes"], meta["producer"]) == ("BiT-R14x0.5", "10", f"bigtransfer {__version__}")
    # the bare weights file carries the same facts in its safetensors metadata
    bare = tmp_path / "bare" / "model.safetensors"
    bare.parent.mkdir()
    shutil.copy(tiny_run / "model.safetensors", bare)
    from_file = export_meta(bare, tmp_path / "bare.onnx", "--no-check")
    assert from_file == meta


@pytest.mark.slow
def test_export_without_class_names_writes_label_names(r14_file, tmp_path):
    meta = export_meta(r14_file, tmp_path / "r14.onnx", "--size", "32", "--no-check")
    assert json.loads(meta["classes"]) == [f"LABEL_{i}" for i in range(10)]
    assert meta["input_size"] == "32" and meta["transforms"] == "hyperrule"


def test_recipe_metadata_keeps_the_resize_ratio_at_another_size():
    from bigtransfer.export import onnx_metadata

    facts = {"model": "m", "num_classes": 2, "classes": ["a", "b"], "mean": [0.1, 0.2, 0.3], "std": [1.0, 1.0, 1.0],
             "transforms": "recipe", "eval_crop": 224, "eval_resize": 256}
    assert onnx_metadata(facts, 224)["resize"] == "256"
    meta = onnx_metadata(facts, 112)
    assert (meta["resize"], meta["input_size"]) == ("128", "112")
    assert "shorter side to 128" in meta["preprocessing"] and "centre-crop 112 x 112" in meta["preprocessing"]


def run_example(onnx: Path, image: Path, capsys, monkeypatch) -> list[tuple[str, float]]:
    """The documented example, executed as a script; its printed (class, probability) lines."""
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), str(onnx), str(image)])
    capsys.readouterr()
    exec(compile(EXAMPLE.read_text(), str(EXAMPLE), "exec"), {"__name__": "__main__"})
    lines = capsys.readouterr().out.strip().splitlines()
    return [(name, float(p)) for name, p in (line.rsplit(": ", 1) for line in lines)]


def predicted(run: Path, image: Path, capsys) -> list[tuple[str, float]]:
    """``bit predict RUN IMAGE --mode fp32``: its printed top-5 as (class, probability)."""
    capsys.readouterr()
    assert main(["predict", str(run), str(image), "--mode", "fp32"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(f"{image}: "))
    pairs = [item.rsplit(" ", 1) for item in line[len(f"{image}: "):].split(", ")]
    return [(name, float(p.rstrip("%")) / 100) for name, p in pairs]


def digit_png(path: Path, index: int, size: tuple[int, int] | None = None) -> Path:
    from PIL import Image

    from bigtransfer.data import load_dataset

    image = Image.fromarray(load_dataset("digits", "train").load_image(index).numpy().transpose(1, 2, 0))
    (image.resize(size, Image.NEAREST) if size else image).save(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("transforms", ["hyperrule", "recipe"])
def test_onnxruntime_example_gives_the_top5_of_bit_predict(tiny_run, exported, tmp_path, capsys, monkeypatch,
                                                           transforms):
    run, (onnx, meta) = tiny_run, exported
    if transforms == "recipe":  # the same weights, evaluated with a shorter-side resize and a centre crop
        run = tmp_path / "recipe_run"
        shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("tensorboard", "checkpoints"))
        text = (run / "config.yaml").read_text()
        assert "transforms: hyperrule\n" in text and "eval_resize: null\n" in text
        (run / "config.yaml").write_text(text.replace("transforms: hyperrule\n", "transforms: recipe\n")
                                         .replace("eval_resize: null\n", "eval_resize: 36\n"))
        onnx = tmp_path / "model.onnx"
        meta = export_meta(run, onnx)
    assert meta["transforms"] == transforms and meta["resize"] == ("36" if transforms == "recipe" else "32")
    images = [digit_png(tmp_path / "digit.png", 5), digit_png(tmp_path / "tall.png", 17, (40, 52))]
    for image in images:
        got, want = run_example(onnx, image, capsys, monkeypatch), predicted(run, image, capsys)
        assert [c for c, _ in got] == [c for c, _ in want], (image, got, want)
        assert np.allclose([p for _, p in got], [p for _, p in want], atol=1e-3), (image, got, want)
        assert got[0][1] > got[-1][1] + 0.02  # a real ranking, not a near tie


# --- plots -------------------------------------------------------------------------------------------------------
def synthetic_rows(steps: int = 200, log_every: int = 10, eval_every: int = 50) -> list[dict]:
    rows = []
    for s in range(log_every, steps + 1, log_every):
        lr = 3e-3 * min(1.0, s / 40) * (0.1 if s > 120 else 1.0)
        rows.append({"step": s, "loss": 2.3 * np.exp(-s / 80) + 0.1, "lr": lr, "img_per_s": 50.0})
        if s % eval_every == 0:
            rows.append({"step": s, "top1": 40 + s / 5, "top5": 70 + s / 10, "balanced_accuracy": 38 + s / 5})
    return rows


def test_training_plot_has_its_own_lr_axis_from_every_row_and_the_eval_accuracy(tmp_path):
    import matplotlib.pyplot as plt

    from bigtransfer.engine.plots import plot_training, training_figure

    rows = synthetic_rows()
    train = [r for r in rows if "loss" in r]
    fig = training_figure(rows)
    loss_ax, acc_ax, lr_ax = fig.axes
    assert lr_ax.get_ylabel() == "learning rate" and loss_ax.get_ylabel() == "loss"
    (lr_line,) = lr_ax.lines
    assert list(lr_line.get_xdata()) == [r["step"] for r in train]  # every logged row
    assert np.allclose(lr_line.get_ydata(), [r["lr"] for r in train])
    fig.canvas.draw()
    labels = [t.get_text() for t in lr_ax.get_yticklabels() if t.get_text() not in ("", "0")]
    assert labels and all("e-0" in t for t in labels)  # a labelled scale in scientific notation
    legend = loss_ax.get_legend()
    assert legend.get_window_extent().y0 >= loss_ax.get_window_extent().y1 - 1  # above the plot, covering nothing
    top1 = acc_ax.lines[0]
    assert list(top1.get_xdata()) == [50, 100, 150, 200] and acc_ax.get_ylabel() == "eval accuracy (%)"
    plt.close(fig)
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = plot_training(metrics, tmp_path / "training.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    no_eval = training_figure(train)
    assert len(no_eval.axes) == 2  # loss and its lr twin, no accuracy panel
    plt.close(no_eval)
    assert training_figure([r for r in rows if "top1" in r]) is None


def test_confusion_plot_writes_counts_colour_bar_and_title(tmp_path):
    import matplotlib.pyplot as plt

    from bigtransfer.engine.plots import cell_texts, confusion_figure, plot_confusion

    confusion = [[5, 1, 0], [2, 7, 0], [0, 3, 12]]
    fig = confusion_figure(confusion, ["cat", "dog", "fox"])
    assert cell_texts(fig) == ["5", "1", "0", "2", "7", "0", "0", "3", "12"]
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "fraction of the true class"  # the colour bar
    assert fig.axes[0].get_title() == "confusion matrix: n = 30, top-1 80.0%"
    plt.close(fig)
    many = confusion_figure(np.eye(31, dtype=int).tolist(), [str(i) for i in range(31)])
    assert cell_texts(many) == [] and "top-1 100.0%" in many.axes[0].get_title()  # too many classes for counts
    plt.close(many)
    out = plot_confusion(confusion, ["cat", "dog", "fox"], tmp_path / "confusion.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_class_names_the_font_lacks_draw_without_warnings(tmp_path):
    import warnings

    from bigtransfer.engine.plots import plot_confusion

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = plot_confusion([[3, 1], [0, 4]], ["日本", "café"], tmp_path / "confusion.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [w for w in caught if "Glyph" in str(w.message)], [str(w.message) for w in caught]
