"""Open what a run folder holds (config, final weights, class names), or a registered model, for inference."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import BitError, CheckpointError
from ..models import ResNetV2, create_model, get_config
from .config import DEFAULTS
from .evaluate import run_mode


@dataclass
class LoadedModel:
    model: ResNetV2
    cfg: dict  # a resolved run config (for a bare model name: enough to build its evaluation transform)
    classes: list[str] | None
    mode: str = "auto"  # the default inference path: a trained run's own (as its eval.json), else the fastest


def is_run_dir(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "config.yaml").is_file()


def load_run(source: str | Path, weights: str | None = None) -> LoadedModel:
    """A model for inference from a run folder, a weights file, or a registered name (pretrained or ``weights``).

    The checkpoint defines the head (its size and values); a name only picks the architecture.
    """
    if is_run_dir(source):
        return _from_run(Path(source), weights)
    path = Path(source)
    if path.is_file() or path.is_dir():  # a weights file, or a folder holding one (e.g. a Hugging Face folder)
        return _from_file(path, None)
    text = str(source)
    if "/" in text or text.startswith((".", "~")):
        raise BitError(f"no such run folder '{source}'; give a run folder (with config.yaml), a weights file or a "
                       f"model name ('bit models' lists them)")
    mc = get_config(text)
    if weights:
        return _from_file(Path(weights), mc.name)
    model = create_model(mc.name, pretrained=True).eval()
    cfg = {**_inference_cfg(model, {}), **pretrained_eval_settings(mc)}
    return LoadedModel(model, cfg, class_names(mc.labels))


def pretrained_eval_settings(mc) -> dict:
    """How a registered model's published weights are evaluated, where it differs from the squash resize."""
    if mc.weights_format == "mindspore":  # ImageNet-style validation: resize 256 (for 224), centre crop
        return {"transforms": "recipe", "eval_crop": mc.input_size, "eval_resize": round(mc.input_size * 256 / 224)}
    return {}


def _from_run(run: Path, weights: str | None) -> LoadedModel:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    final = Path(weights) if weights else run / "model.safetensors"
    if not final.exists():
        raise CheckpointError(f"{run} has no final weights ({final.name}); finish or resume the run first")
    model = create_model(cfg["model"], num_classes=int(cfg["num_classes"]))
    from ..weights import load_checkpoint

    load_checkpoint(model, final)
    classes_file = run / "classes.json"
    classes = json.loads(classes_file.read_text()) if classes_file.exists() else None
    return LoadedModel(model.eval(), cfg, classes, run_mode(str(cfg.get("precision", "fp32"))))


def _from_file(path: Path, name: str | None) -> LoadedModel:
    """A bare weights file: its metadata (ours) or its keys give the architecture, its head the classes."""
    from ..weights.convert import model_for, read_checkpoint

    if not path.exists():
        raise CheckpointError(f"{path}: no such weights file; check the path")
    loaded = read_checkpoint(path)
    model = model_for(loaded, name, str(path)).eval()
    meta = loaded.metadata
    cfg = _inference_cfg(model, meta)
    classes = None
    if meta.get("classes"):
        classes = json.loads(meta["classes"])
    elif (path.parent / "classes.json").is_file():
        classes = json.loads((path.parent / "classes.json").read_text())
    if classes is not None and len(classes) != model.num_classes:
        classes = None
    return LoadedModel(model, cfg, classes, run_mode(meta["precision"]) if meta.get("precision") else "auto")


def _inference_cfg(model: ResNetV2, meta: dict) -> dict:
    """Enough of a run config to build the evaluation transform for ``model`` (and its file's metadata)."""
    pc = model.pretrained_cfg or {}
    size = int(meta.get("eval_crop") or pc.get("input_size") or 224)
    cfg = {**DEFAULTS, "model": pc.get("name") or meta.get("model") or "", "num_classes": model.num_classes,
           "mean": list(pc.get("mean") or (0.5, 0.5, 0.5)), "std": list(pc.get("std") or (0.5, 0.5, 0.5)),
           "crop": size, "eval_crop": size, "precrop": size}
    cfg["transforms"] = meta.get("transforms") or cfg["transforms"]
    if meta.get("eval_resize"):
        cfg["eval_resize"] = int(meta["eval_resize"])
    if meta.get("precision"):
        cfg["precision"] = meta["precision"]
    return cfg


def class_names(labels: str | None) -> list[str] | None:
    """Names for a pretrained head's classes when the label file is available (else None: indices are shown)."""
    if labels == "cifar10":
        return ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    if labels is None:
        return None
    try:
        from ..weights.download import fetch_labels
    except ImportError:
        return None
    return fetch_labels(labels)
