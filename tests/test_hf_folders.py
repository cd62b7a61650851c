"""Hugging Face folders both ways: ``bit convert --to hf`` writes what transformers loads (weights, config,
preprocessor), and such a folder is accepted wherever a checkpoint is."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torchvision import tv_tensors

import bigtransfer as bt
from bigtransfer.cli.main import main
from bigtransfer.data.transforms import build_transforms
from bigtransfer.errors import CheckpointError
from bigtransfer.weights import load_checkpoint, read_npz, save_npz, save_safetensors
from bigtransfer.weights.convert import read_checkpoint, write_checkpoint
from bigtransfer.weights.hf import hf_preprocessor_config
from conftest import fails, randomized

transformers = pytest.importorskip("transformers")

ARCHS = {"R50x1": "BiT-M-R50x1", "R101x1": "BiT-M-R101x1"}
NO_KERNELS = ["--set", "fast_path=false"]  # one step needs no compiled CPU kernels


def export(model: torch.nn.Module, name: str, root) -> tuple:
    """``model`` saved as our safetensors, then ``bit convert FILE FOLDER --to hf``."""
    root.mkdir(parents=True, exist_ok=True)
    src = save_safetensors(model, root / "ours.safetensors", name)
    assert main(["convert", str(src), str(root / "hf"), "--to", "hf"]) == 0
    return root / "hf"


@pytest.fixture(scope="module", params=list(ARCHS))
def exported(request, tmp_path_factory):
    """A randomized 5-class model, its transformers folder, and transformers' two loads of it (each built once)."""
    name = ARCHS[request.param]
    model = randomized(name, num_classes=5, seed=3)
    folder = export(model, name, tmp_path_factory.mktemp(request.param))
    auto = transformers.AutoModelForImageClassification.from_pretrained(folder, output_loading_info=True)
    bit = transformers.BitForImageClassification.from_pretrained(folder, output_loading_info=True)
    return {"arch": request.param, "model": model, "folder": folder, "auto": auto, "bit": bit}


def rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def as_tensor(image: Image.Image) -> tv_tensors.Image:
    """What ``bit predict`` and the image folders hand to the eval transform: a uint8 CHW image."""
    return tv_tensors.Image(torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous())


def processed(folder, image: Image.Image) -> torch.Tensor:
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    return processor(image, return_tensors="pt")["pixel_values"][0]


@pytest.mark.slow
def test_transformers_loads_the_folder_with_every_key_and_our_logits(exported):
    for model, info in (exported["auto"], exported["bit"]):
        assert type(model).__name__ == "BitForImageClassification"
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    config = exported["auto"][0].config
    ours = exported["model"]
    assert config.model_type == "bit" and config.layer_type == "preactivation" and config.global_padding is None
    assert config.depths == list(ours.block_units) and config.embedding_size == 64
    assert config.hidden_sizes == [256, 512, 1024, 2048] and config.num_labels == 5
    assert config.id2label == {i: f"LABEL_{i}" for i in range(5)}
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        want = ours(x)
        for how in ("auto", "bit"):
            got = exported[how][0].eval()(pixel_values=x).logits
            diff = (got - want).abs().max().item()
            rel = diff / want.abs().max().item()
            print(f"{exported['arch']} ({how}): max |logit diff| {diff:.3g}, relative to the largest logit {rel:.3g}")
            assert want.abs().max() > 0.5 and rel < 1e-4


@pytest.mark.slow
def test_the_folder_round_trips_to_identical_weights(exported, tmp_path, capsys):
    folder, ours = exported["folder"], exported["model"]
    want = ours.state_dict()
    back = bt.create_model(ARCHS[exported["arch"]], weights=str(folder))
    assert back.num_classes == 5 and all(torch.equal(v, want[k]) for k, v in back.state_dict().items())
    loaded = load_checkpoint(bt.create_model(ARCHS[exported["arch"]], num_classes=5), folder)
    assert all(torch.equal(v, want[k]) for k, v in loaded.state_dict().items())
    if exported["arch"] == "R50x1":  # and through the command line, once
        assert main(["convert", str(folder), str(tmp_path / "back.npz")]) == 0
        assert "R50x1, 5 classes" in capsys.readouterr().out
        first = read_npz(save_npz(ours, tmp_path / "first.npz"))
        again = read_npz(tmp_path / "back.npz")
        assert first.keys() == again.keys() and all(np.array_equal(first[k], again[k]) for k in first)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 1-step digits run of BiT-R14x0.5 (expressible in transformers: embedding 32, hidden 128..1024)."""
    root = tmp_path_factory.mktemp("run")
    out = root / "run"
    assert main(["finetune", "--data", "digits", "--steps", "1", "--out", str(out), "--model", "BiT-R14x0.5",
                 "--no-pretrained", "--workers", "0", "--quiet", "--batch-size", "8", "--set", "crop=32",
                 "--set", "precrop=36", "--eval-split", "none", *NO_KERNELS]) == 0
    assert main(["convert", str(out), str(root / "hf"), "--to", "hf"]) == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    return {"run": out, "hf": root / "hf", "cfg": cfg, "classes": json.loads((out / "classes.json").read_text())}


@pytest.mark.slow
def test_a_run_exports_its_classes_and_its_eval_transform(run):
    model, info = transformers.AutoModelForImageClassification.from_pretrained(run["hf"], output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.id2label == dict(enumerate(run["classes"])) and model.config.num_labels == 10
    assert model.config.embedding_size == 32 and model.config.hidden_sizes == [128, 256, 512, 1024]
    processor = json.loads((run["hf"] / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 32, "width": 32} and processor["do_center_crop"] is False
    _, eval_tf = build_transforms(run["cfg"])
    ours = bt.create_model("BiT-R14x0.5", weights=str(run["run"] / "model.safetensors")).eval()
    worst = 0.0
    for image in (rgb(53, 37), rgb(20, 20, seed=1), rgb(31, 90, seed=2)):
        want, got = eval_tf(as_tensor(image)), processed(run["hf"], image)
        assert got.shape == want.shape == (3, 32, 32)
        worst = max(worst, (got - want).abs().max().item())
        with torch.no_grad():
            assert torch.allclose(model(pixel_values=got[None]).logits, ours(want[None]), atol=1e-4)
    print(f"AutoImageProcessor vs our eval transform (HyperRule): max |diff| {worst:.3g}")
    assert worst < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("size", [(60, 45), (45, 60), (36, 36)])
def test_the_recipe_processor_resizes_the_shorter_side_and_crops_the_centre(size, run, tmp_path):
    cfg = {**run["cfg"], "transforms": "recipe", "eval_resize": 36, "eval_crop": 32, "mean": [0.485, 0.456, 0.406],
           "std": [0.229, 0.224, 0.225]}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(hf_preprocessor_config(
        cfg["transforms"], cfg["eval_crop"], cfg["eval_resize"], cfg["mean"], cfg["std"])))
    image = rgb(*size, seed=4)
    want, got = build_transforms(cfg)[1](as_tensor(image)), processed(tmp_path, image)
    assert got.shape == want.shape == (3, 32, 32)
    assert (got - want).abs().max().item() < 1e-5


@pytest.mark.slow
def test_a_transformers_folder_is_read_with_its_classes_and_inputs(run, tmp_path, capsys):
    loaded = read_checkpoint(run["hf"])
    assert loaded.layout == "hf" and json.loads(loaded.metadata["classes"]) == run["classes"]
    assert loaded.metadata["transforms"] == "hyperrule" and loaded.metadata["eval_crop"] == "32"
    assert loaded.metadata["mean"] == ",".join(str(float(v)) for v in run["cfg"]["mean"])
    want = read_checkpoint(run["run"] / "model.safetensors").state
    assert loaded.state.keys() == want.keys() and all(torch.equal(loaded.state[k], want[k]) for k in want)
    # every entry point: create_model, bit convert (back to .npz and to ours), bit predict on the folder's file
    model = bt.create_model("BiT-R14x0.5", weights=str(run["hf"]))
    assert model.num_classes == 10 and all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
    assert main(["convert", str(run["hf"]), str(tmp_path / "back.npz")]) == 0
    assert main(["convert", str(run["hf"]), str(tmp_path / "back.safetensors")]) == 0
    for name in ("back.npz", "back.safetensors"):
        back = read_checkpoint(tmp_path / name).state
        assert all(torch.equal(back[k], want[k]) for k in want)
    rgb(40, 30).save(tmp_path / "a.png")
    capsys.readouterr()
    argv = ["predict", str(run["hf"] / "model.safetensors"), str(tmp_path / "a.png"), "--top", "2", "--mode", "fp32"]
    assert main(argv) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(tmp_path / "a.png")) and any(f" {c} " in line for c in run["classes"]), line
    # and a folder edited by hand: its config.json's labels win
    edited = tmp_path / "edited"
    shutil.copytree(run["hf"], edited)
    config = json.loads((edited / "config.json").read_text())
    config["id2label"] = {str(i): f"digit {i}" for i in range(10)}
    (edited / "config.json").write_text(json.dumps(config))
    assert json.loads(read_checkpoint(edited).metadata["classes"])[3] == "digit 3"


@pytest.mark.slow
def test_fine_tuning_starts_from_a_transformers_folder(run, tmp_path):
    out = tmp_path / "again"
    assert main(["finetune", "--data", "digits", "--steps", "1", "--out", str(out), "--model", "BiT-R14x0.5",
                 "--weights", str(run["hf"]), "--workers", "0", "--quiet", "--batch-size", "8", "--lr", "1e-9",
                 "--set", "crop=32", "--set", "precrop=36", "--eval-split", "none", *NO_KERNELS]) == 0
    start = read_checkpoint(run["run"] / "model.safetensors").state
    after = read_checkpoint(out / "model.safetensors").state
    assert torch.allclose(after["root.conv.weight"], start["root.conv.weight"], atol=1e-6)


def test_a_headless_export_is_a_bare_bit_model(tmp_path):
    model = randomized(num_classes=10)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.conv.")}
    write_checkpoint(state, tmp_path / "body.safetensors", "safetensors")
    assert main(["convert", str(tmp_path / "body.safetensors"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["BitModel"] and "id2label" not in config
    _, info = transformers.BitModel.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    back = read_checkpoint(tmp_path / "hf").state
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


@pytest.mark.slow
def test_destinations_and_foreign_configs_are_refused_in_one_line(run, tmp_path, capsys):
    src = run["run"] / "model.safetensors"
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me\n")
    fails(["convert", str(src), str(tmp_path / "busy"), "--to", "hf"], capsys,
          r"folder .*busy is not empty; pass --overwrite to replace its model files, or give a new folder")
    assert main(["convert", str(src), str(tmp_path / "busy"), "--to", "hf", "--overwrite"]) == 0
    assert (tmp_path / "busy" / "notes.txt").exists() and (tmp_path / "busy" / "config.json").exists()
    (tmp_path / "empty").mkdir()
    assert main(["convert", str(src), str(tmp_path / "empty"), "--to", "hf"]) == 0
    (tmp_path / "file").write_text("x")
    fails(["convert", str(src), str(tmp_path / "file"), "--to", "hf", "--overwrite"], capsys,
          r"file is a file; --to hf writes a folder .*give a folder name, or a \.safetensors name")
    fails(["convert", str(run["hf"]), str(run["hf"]), "--to", "hf", "--overwrite"], capsys,
          r"holds the source weights; write to another folder")
    fails(["convert", str(run["hf"]), str(run["hf"]), "--to", "npz", "--overwrite"], capsys,
          r"is a folder; give a file name, e.g. .*model\.npz")
    assert main(["convert", str(src), str(tmp_path / "alone.safetensors"), "--to", "hf"]) == 0  # the weights alone
    assert read_checkpoint(tmp_path / "alone.safetensors").layout == "hf"
    capsys.readouterr()
    for key, value, needle in (("model_type", "vit", r"model_type 'vit' is not a BiT model \('bit'\)"),
                               ("layer_type", "bottleneck", r"layer_type 'bottleneck' is not BiT's pre-activation"),
                               ("depths", [2, 1, 1, 1], r"config\.json has depths \[2, 1, 1, 1\] but the weights "
                                                        r"have \[1, 1, 1, 1\]")):
        foreign = tmp_path / f"foreign-{key}"
        shutil.copytree(run["hf"], foreign)
        config = json.loads((foreign / "config.json").read_text())
        config[key] = value
        (foreign / "config.json").write_text(json.dumps(config))
        fails(["convert", str(foreign), str(tmp_path / f"{key}.npz")], capsys, needle)
        with pytest.raises(CheckpointError, match=needle):
            bt.create_model("BiT-R14x0.5", weights=str(foreign))
