"""Open what a run folder holds (config, final weights, class names), or a registered model, for inference."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml
from safetensors.torch import load_file

from ..errors import BitError, CheckpointError
from ..models import ResNetV2, create_model, get_config
from .config import DEFAULTS


@dataclass
class LoadedModel:
    model: ResNetV2
    cfg: dict  # a resolved run config (for a bare model name: enough to build its evaluation transform)
    classes: list[str] | None


def is_run_dir(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "config.yaml").is_file()


def load_run(source: str | Path, weights: str | None = None) -> LoadedModel:
    """A model from a run folder (its ``model.safetensors``) or from a registered name (pretrained or ``weights``)."""
    if is_run_dir(source):
        run = Path(source)
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        final = Path(weights) if weights else run / "model.safetensors"
        if not final.is_file():
            raise CheckpointError(f"{run} has no final weights ({final.name}); finish or resume the run first")
        model = create_model(cfg["model"], num_classes=int(cfg["num_classes"]))
        if final.suffix == ".safetensors":
            try:
                state = load_file(final)
            except Exception as e:
                raise CheckpointError(f"{final}: unreadable safetensors ({e}); the file is corrupt") from None
            from ..weights.common import load_into

            load_into(model, state, str(final))
        else:
            from ..weights import load_checkpoint

            load_checkpoint(model, final)
        classes_file = run / "classes.json"
        classes = json.loads(classes_file.read_text()) if classes_file.exists() else None
        return LoadedModel(model.eval(), cfg, classes)
    if Path(source).exists():
        raise BitError(f"{source} is not a run folder (no config.yaml); to use a checkpoint file pass "
                       f"--model NAME --weights {source}")
    mc = get_config(str(source))
    model = create_model(mc.name, pretrained=weights is None, weights=weights).eval()
    cfg = {**DEFAULTS, "model": mc.name, "num_classes": model.num_classes, "mean": list(model.pretrained_cfg["mean"]),
           "std": list(model.pretrained_cfg["std"]), "crop": mc.input_size, "eval_crop": mc.input_size,
           "precrop": mc.input_size}
    if mc.weights_format == "mindspore":  # ImageNet-style validation: resize 256 (for 224), centre crop
        cfg.update(transforms="recipe", eval_resize=round(mc.input_size * 256 / 224))
    return LoadedModel(model, cfg, class_names(mc.labels))


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
