"""``bit predict`` at scale (workers, globs, CSV/JSONL output, corrupt images) and ``bit embed`` (features, index,
nearest-neighbour search) on a one-step BiT-R14x0.5 run over tiny images."""

from __future__ import annotations

import csv
import json
import re
import shutil

import numpy as np
import pytest
import torch

from bigtransfer.cli.main import main
from conftest import class_folders, fails


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A one-step 2-class run and its 12 training images (20x20 PNGs)."""
    root = tmp_path_factory.mktemp("predict_embed")
    folder = class_folders(root / "data", {"cat": 6, "dog": 6})
    out = root / "run"
    assert main(["finetune", "--data", f"imagefolder:{folder}", "--steps", "1", "--out", str(out), "--model",
                 "BiT-R14x0.5", "--no-pretrained", "--workers", "0", "--quiet", "--batch-size", "8", "--set",
                 "crop=32", "--set", "precrop=36", "--eval-split", "none"]) == 0
    return {"run": str(out), "data": folder, "images": sorted(str(p) for p in folder.rglob("*.png"))}


def console(out: str) -> dict[str, list[tuple[str, float]]]:
    """``PATH: class p%, ...`` lines as {path: [(class, percent), ...]}."""
    lines = [ln for ln in out.splitlines() if ": " in ln and ln.endswith("%")]
    return {ln.split(": ", 1)[0]: [(m.group(1), float(m.group(2))) for m in re.finditer(r"(\w+) ([\d.]+)%",
                                                                                        ln.split(": ", 1)[1])]
            for ln in lines}


@pytest.mark.slow
def test_predict_output_files_match_the_per_image_path(tiny, tmp_path, capsys):
    run, data = tiny["run"], str(tiny["data"])
    assert main(["predict", run, data, "--mode", "fp32", "--batch-size", "1", "--workers", "0", "--quiet"]) == 0
    single = console(capsys.readouterr().out)
    assert list(single) == tiny["images"]
    common = ["--mode", "fp32", "--batch-size", "5", "--workers", "2", "--quiet", "--top", "2"]
    assert main(["predict", run, data, "--output", str(tmp_path / "p.csv"), *common]) == 0
    out = capsys.readouterr().out
    assert console(out).keys() == single.keys() and f"written: {tmp_path / 'p.csv'}" in out  # 12 images: printed
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "class_1", "prob_1", "class_2", "prob_2"]
    assert [r[0] for r in rows[1:]] == tiny["images"]
    assert main(["predict", run, data, "--output", str(tmp_path / "p.jsonl"), *common]) == 0
    lines = [json.loads(ln) for ln in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [ln["path"] for ln in lines] == tiny["images"]
    for row, line in zip(rows[1:], lines, strict=True):
        want = single[row[0]]
        assert row[1] == line["top"][0]["class"] == want[0][0]
        assert abs(float(row[2]) * 100 - want[0][1]) < 0.051 and abs(line["top"][0]["prob"] - float(row[2])) < 1e-6
        assert sum(t["prob"] for t in line["top"]) == pytest.approx(1.0, abs=1e-5)  # two classes: all of it
    fails(["predict", run, data, "--output", str(tmp_path / "p.txt")], capsys,
          r"--output '.*p\.txt': unknown format '\.txt'; end the file name with \.csv or \.jsonl")
    assert not (tmp_path / "p.txt").exists()


def test_predict_globs_summary_and_print(tiny, tmp_path, capsys):
    run, data = tiny["run"], tiny["data"]
    assert main(["predict", run, f"{data}/*/[0-2].png", "--quiet"]) == 0
    assert list(console(capsys.readouterr().out)) == [str(data / c / f"{i}.png") for c in ("cat", "dog")
                                                      for i in range(3)]
    assert main(["predict", run, f"{data}/**/5.png", str(data / "cat" / "0.png"), "--quiet"]) == 0
    assert list(console(capsys.readouterr().out)) == [str(data / "cat" / "5.png"), str(data / "dog" / "5.png"),
                                                      str(data / "cat" / "0.png")]
    fails(["predict", run, f"{data}/*/*.jpg"], capsys, r"no images match '.*/\*/\*\.jpg'; check the pattern")
    many = tmp_path / "many"
    for copy in range(2):
        shutil.copytree(data, many / str(copy))
    assert main(["predict", run, str(many), "--output", str(tmp_path / "m.csv"), "--quiet"]) == 0
    out = capsys.readouterr().out.strip()
    assert re.fullmatch(r"predicted 24 images in [\d.]+ s \([\d.]+ img/s, mode \w+.*\); top-2 written to .*m\.csv",
                        out), out
    assert main(["predict", run, str(many), "--output", str(tmp_path / "m.csv"), "--print", "--quiet"]) == 0
    assert len(console(capsys.readouterr().out)) == 24
    assert len((tmp_path / "m.csv").read_text().splitlines()) == 25


def test_predict_corrupt_images_stop_or_are_skipped(tiny, tmp_path, capsys):
    folder = tmp_path / "imgs"
    shutil.copytree(tiny["data"], folder)
    (folder / "dog" / "3.png").write_bytes(b"not a png" * 20)
    args = ["predict", tiny["run"], str(folder), "--workers", "2", "--batch-size", "4", "--quiet"]
    err = fails([*args, "--output", str(tmp_path / "p.csv")], capsys,
                r"cannot read image '.*dog/3\.png': UnidentifiedImageError")
    assert "Traceback" not in err and not (tmp_path / "p.csv").exists()
    assert main([*args, "--output", str(tmp_path / "p.csv"), "--skip-corrupt"]) == 0
    captured = capsys.readouterr()
    assert re.search(r"skipped 1 unreadable image\(s\) of 12, e\.g\. '.*dog/3\.png'", captured.err)
    paths = [r[0] for r in csv.reader((tmp_path / "p.csv").open())][1:]
    assert len(paths) == 11 and str(folder / "dog" / "3.png") not in paths


def reference_features(run: str, paths: list[str]) -> torch.Tensor:
    """The plain model's pre-logits, one image at a time, on the eval transform's tensors."""
    from bigtransfer.data.paths import read_image
    from bigtransfer.data.transforms import build_transforms
    from bigtransfer.engine.runs import open_run

    loaded = open_run(run)
    tf = build_transforms(loaded.cfg)[1]
    model = loaded.model.eval()
    with torch.no_grad():
        return torch.cat([model.forward_head(model.forward_features(tf(read_image(p))[None]), pre_logits=True)
                          for p in paths])


@pytest.mark.slow
def test_embed_features_index_and_nearest_neighbours(tiny, tmp_path, capsys):
    run, data = tiny["run"], tiny["data"]
    out = tmp_path / "feats"
    assert main(["embed", run, str(data), "--out", str(out), "--workers", "2", "--batch-size", "5", "--quiet"]) == 0
    assert re.search(r"embedded 12 images in .* \(1024 features each, mode fp32\); written: .*feats\.npy, "
                     r".*feats\.index\.csv", capsys.readouterr().out)
    features = np.load(tmp_path / "feats.npy")
    assert features.dtype == np.float32 and features.shape == (12, 1024)
    rows = list(csv.DictReader((tmp_path / "feats.index.csv").open()))
    assert [r["path"] for r in rows] == tiny["images"] and [r["row"] for r in rows] == [str(i) for i in range(12)]
    want = reference_features(run, tiny["images"])
    assert torch.allclose(torch.from_numpy(features), want, atol=1e-5, rtol=0)

    assert main(["embed", "--query", str(data / "dog"), "--index", str(tmp_path / "feats.npy"), "--k", "3",
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    queries = re.findall(r"query: (.*)", printed)
    assert queries == [p for p in tiny["images"] if "/dog/" in p]
    firsts = re.findall(r"^1, ([\d.]+), (.*), -$", printed, re.M)
    assert [p for _, p in firsts] == queries and all(abs(float(s) - 1) < 1e-5 for s, _ in firsts)
    assert len(re.findall(r"^[123], ", printed, re.M)) == 3 * len(queries)
    fails(["embed", "--query", str(data / "dog" / "0.png"), "--index", str(tmp_path / "none.npy")], capsys,
          r"no such index file '.*none\.npy'; write the index first")


@pytest.mark.slow
def test_embed_a_data_split_records_labels(tiny, tmp_path, capsys):
    out = tmp_path / "split.npy"
    assert main(["embed", tiny["run"], "--data", f"imagefolder:{tiny['data']}", "--out", str(out), "--quiet",
                 "--workers", "0"]) == 0
    rows = list(csv.DictReader((tmp_path / "split.index.csv").open()))
    assert {r["label"] for r in rows} == {"cat", "dog"}
    assert all(f"/{r['label']}/" in r["path"] for r in rows)
    by_path = dict(zip((r["path"] for r in rows), np.load(out), strict=True))
    want = reference_features(tiny["run"], [r["path"] for r in rows[:3]]).numpy()
    np.testing.assert_allclose(np.stack([by_path[r["path"]] for r in rows[:3]]), want, atol=1e-5, rtol=0)
    assert main(["embed", tiny["run"], "--query", rows[0]["path"], "--index", str(out), "--k", "1", "--quiet"]) == 0
    assert re.search(rf"^1, 1\.0000\d\d, {re.escape(rows[0]['path'])}, {rows[0]['label']}$|"
                     rf"^1, 0\.99999\d, {re.escape(rows[0]['path'])}, {rows[0]['label']}$",
                     capsys.readouterr().out, re.M)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        fails(["embed", tiny["run"], str(tiny["data"]), "--out", str(tmp_path / "p"), "--format", "parquet"],
              capsys, r"--format parquet needs pyarrow; install it")
        return
    assert main(["embed", tiny["run"], str(tiny["data"]), "--out", str(tmp_path / "p"), "--format", "parquet",
                 "--quiet"]) == 0
    assert main(["embed", "--query", tiny["images"][0], "--index", str(tmp_path / "p.parquet"), "--k", "1"]) == 0
    assert re.search(rf"^1, [\d.]+, {re.escape(tiny['images'][0])}, -$", capsys.readouterr().out, re.M)


def test_open_run_reads_a_run_and_its_weights_file_alike(tiny, tmp_path):
    from bigtransfer.engine import runs
    from bigtransfer.errors import CheckpointError

    run = runs.open_run(tiny["run"])
    bare = runs.open_run(f"{tiny['run']}/{runs.FINAL_WEIGHTS}")
    assert run.classes == bare.classes == ["cat", "dog"] and run.input_size == bare.input_size == 32
    assert run.mean == bare.mean and run.std == bare.std and run.mode == bare.mode
    assert run.facts == bare.facts
    assert torch.equal(run.model.head.conv.weight, bare.model.head.conv.weight)
    copy = tmp_path / "copy"
    copy.mkdir()
    runs.write_final_weights(copy, run.model.state_dict(), run.cfg, list(reversed(run.classes)))
    again = runs.open_run(copy / runs.FINAL_WEIGHTS)
    assert again.classes == ["dog", "cat"] and json.loads((copy / runs.CLASSES).read_text()) == ["dog", "cat"]
    assert again.facts["mean"] == run.mean and torch.equal(again.model.head.conv.weight, run.model.head.conv.weight)
    with pytest.raises(CheckpointError, match="a run folder needs config.yaml"):
        runs.open_run(tmp_path)  # a folder holding neither a run config nor a weights file
