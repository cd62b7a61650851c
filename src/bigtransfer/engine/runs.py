"""The run folder's one owner: the names of its files, opening a run (or a weights file, or a registered model) for
inference, and writing a run's folder and its final weights."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import BitError, CheckpointError
from ..hub import create_model
from ..models import ResNetV2, get_config
from ..weights import atomic_write, load_checkpoint, read_checkpoint
from ..weights.folders import WEIGHT_SUFFIXES
from ..weights.loading import model_for
from . import config as C
from .checkpoint import list_checkpoints, read_latest_name
from .config import RunConfig
from .distributed import DistInfo, broadcast_object
from .evaluate import run_mode

log = logging.getLogger("bigtransfer")

CONFIG = "config.yaml"  # the resolved run config; a folder holding it is a run folder
FINAL_WEIGHTS = "model.safetensors"  # written when the run finishes (the EMA weights when EMA was on)
CLASSES = "classes.json"
CHECKPOINTS = "checkpoints"  # step_* folders and ``latest`` naming the newest (see engine.checkpoint)
EMA_WEIGHTS = "ema.safetensors"  # in a checkpoint folder, next to its model.safetensors
LAST_WEIGHTS = Path(CHECKPOINTS) / "last" / FINAL_WEIGHTS
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
SUMMARY_TEXT = "summary.txt"
EVAL = "eval.json"  # the final evaluation, with per-class accuracy and the confusion matrix
TENSORBOARD = "tensorboard"
TRAINING_PLOT = "training.png"
CONFUSION_PLOT = "confusion.png"
RESTART_REMOVES = (CHECKPOINTS, METRICS, SUMMARY, FINAL_WEIGHTS, TENSORBOARD)  # what a restarted run starts without


@dataclass
class LoadedModel:
    """A model ready for inference, with what its run, file or registry entry says about its inputs and classes."""

    model: ResNetV2
    # a resolved run config (for a file or a bare model name: enough to build its evaluation transform); a plain
    # dict given here is read with RunConfig.from_dict
    cfg: RunConfig
    classes: list[str] | None
    mode: str = "auto"  # the default inference path: a trained run's own (as its eval.json), else the fastest
    input_size: int | None = None  # the resolution it is evaluated at, when known
    facts: dict = field(default_factory=dict)  # model name, classes, mean/std, eval preprocessing: ``deploy_facts``

    def __post_init__(self) -> None:
        if isinstance(self.cfg, Mapping):
            self.cfg = RunConfig.from_dict(self.cfg, "the model's settings", strict=False)

    @property
    def mean(self) -> list[float]:
        return self.facts.get("mean") or list(self.cfg.mean)

    @property
    def std(self) -> list[float]:
        return self.facts.get("std") or list(self.cfg.std)


def read_rows(metrics_file: Path) -> list[dict]:
    """The rows of a run's ``metrics.jsonl`` (``METRICS``); lines that are not JSON objects are skipped."""
    rows = []
    for line in Path(metrics_file).read_text().splitlines():
        try:
            row = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def is_run_dir(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and (Path(path) / CONFIG).is_file()


def looks_like_path(text: str) -> bool:
    """Whether ``text`` is written as a path (a separator, or a leading '.' or '~') rather than a model name."""
    return "/" in text or os.sep in text or text.startswith((".", "~"))


def check_source(source: str) -> None:
    """A run folder, weights file or model name; a path-like source that does not exist is one clear error."""
    if not Path(source).exists() and looks_like_path(source):
        raise BitError(f"no such run folder '{source}'; give a run folder (with config.yaml), a weights file or a "
                       f"model name ('bit models' lists them)")


def open_run(source: str | os.PathLike, weights: str | os.PathLike | None = None, *, model_name: str | None = None,
             unfinished: bool = False) -> LoadedModel:
    """A model for inference from a run folder, a weights file (or a folder holding one) or a registered name; the
    checkpoint defines the head, ``model_name`` the architecture; ``unfinished`` allows a run's newest checkpoint."""
    path = Path(source)
    if is_run_dir(path):
        return _from_run(path, weights, model_name, unfinished)
    if path.is_dir() and not _holds_weights(path):
        raise CheckpointError(f"{path}: a run folder needs config.yaml; give the run folder or a weights file")
    if path.is_file() or path.is_dir():  # a weights file, or a folder holding one (e.g. a Hugging Face folder)
        return _from_file(path, model_name)
    check_source(str(source))
    if model_name is not None:
        raise CheckpointError(f"{source}: no such file or run folder; check the path")
    mc = get_config(str(source))  # an unknown name raises UnknownNameError with a suggestion
    if weights:
        return _from_file(Path(weights), mc.name)
    model = create_model(mc.name, pretrained=True).eval()
    settings: dict[str, Any] = {}
    if mc.weights_format == "mindspore":  # ImageNet-style validation: resize 256 (for 224), centre crop
        settings = {"transforms": "recipe", "eval_crop": mc.input_size, "eval_resize": round(mc.input_size * 256 / 224)}
    cfg = _inference_cfg(model, {}).replace(**settings)
    return _loaded(model, cfg, {"model": mc.name, **settings}, class_names(mc.labels), "auto", mc.input_size)


load_run = open_run


def class_names(labels: str | None) -> list[str] | None:
    """Names for a pretrained head's classes (``labels`` names the list, as ``ModelConfig.labels`` does)."""
    from ..weights.download import fetch_labels

    return None if labels is None else fetch_labels(labels)


def run_weights(run: Path) -> Path:
    """The weights of a run folder: its final ``model.safetensors``, else its newest checkpoint's."""
    ckpts = run / CHECKPOINTS
    latest = read_latest_name(ckpts)
    folders = ([ckpts / latest] if latest else []) + list_checkpoints(ckpts)
    candidates = [run / FINAL_WEIGHTS, *(f / name for f in folders for name in (EMA_WEIGHTS, FINAL_WEIGHTS)),
                  run / LAST_WEIGHTS]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise CheckpointError(f"{run}: no {FINAL_WEIGHTS} and no checkpoint in the run folder; "
                              f"the run has not saved weights yet")
    return found


def _from_run(run: Path, weights: str | os.PathLike | None, model_name: str | None, unfinished: bool) -> LoadedModel:
    cfg_file = run / CONFIG
    with open(cfg_file, encoding="utf-8") as f:
        saved = yaml.safe_load(f) or {}
    if not isinstance(saved, dict):
        raise CheckpointError(f"{cfg_file}: not a run configuration (expected a mapping)")
    name = model_name or saved.get("model")
    if not name:
        raise CheckpointError(f"{cfg_file}: no 'model' entry; pass --model NAME")
    saved = {**saved, "model": str(name)}
    try:  # settings added since the run was written take their defaults; unknown ones are left out
        cfg = RunConfig.from_dict(saved, str(cfg_file), strict=False)
    except BitError as e:
        raise CheckpointError(f"{cfg_file}: {e}") from None
    final = Path(weights) if weights else run_weights(run) if unfinished else run / FINAL_WEIGHTS
    if not final.exists():
        raise CheckpointError(f"{run} has no final weights ({final.name}); finish or resume the run first")
    model = create_model(cfg.model, num_classes=cfg.num_classes)
    load_checkpoint(model, final)  # the run's head: created at its size first, so loading keeps it
    classes = _read_classes(run / CLASSES)
    if classes is None and final.suffix == ".safetensors":
        classes = _classes(_safetensors_metadata(final).get("classes"))
    size = cfg.eval_crop or cfg.crop or saved.get("input_size") or get_config(cfg.model).input_size
    return _loaded(model.eval(), cfg, saved, classes, run_mode(cfg.precision), size)


def _from_file(path: Path, name: str | None) -> LoadedModel:
    """A bare weights file: its metadata (ours) or its keys give the architecture, its head the classes."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such weights file; check the path")
    loaded = read_checkpoint(path)
    model = model_for(loaded, name, str(path)).eval()
    meta = loaded.metadata
    classes = _classes(meta.get("classes"))
    if classes is None:
        classes = _read_classes(path.parent / CLASSES)
    size = _as_int(meta.get("eval_crop")) or model.pretrained_cfg.get("input_size")
    mode = run_mode(meta["precision"]) if meta.get("precision") else "auto"
    try:
        cfg = _inference_cfg(model, meta)
    except BitError as e:  # metadata this version does not understand
        raise CheckpointError(f"{path}: {e}") from None
    return _loaded(model, cfg, meta, classes, mode, size)


def _loaded(model: ResNetV2, cfg: RunConfig, settings: dict, classes: list[str] | None, mode: str,
            size: object) -> LoadedModel:
    facts = deploy_facts(model, settings, classes)
    return LoadedModel(model, cfg, facts["classes"], mode, _as_int(size), facts)


def _holds_weights(folder: Path) -> bool:
    return any(p.suffix.lower() in WEIGHT_SUFFIXES and p.is_file() for p in folder.iterdir())


def _inference_cfg(model: ResNetV2, meta: dict) -> RunConfig:
    """Enough of a run config to build the evaluation transform for ``model`` (and its file's metadata)."""
    pc = model.pretrained_cfg or {}
    size = int(meta.get("eval_crop") or pc.get("input_size") or 224)
    values: dict[str, Any] = {
        "model": pc.get("name") or meta.get("model") or "", "num_classes": model.num_classes,
        "mean": list(pc.get("mean") or (0.5, 0.5, 0.5)), "std": list(pc.get("std") or (0.5, 0.5, 0.5)),
        "crop": size, "eval_crop": size, "precrop": size}
    for key, cast in (("transforms", str), ("eval_resize", int), ("precision", str)):
        if meta.get(key):
            values[key] = cast(meta[key])
    return RunConfig.from_dict(values, "the weights file's metadata")


def deploy_facts(model: ResNetV2, settings: dict, classes: list[str] | None) -> dict:
    """The model name, classes, mean/std and eval preprocessing from a run config or a weights file's metadata
    (``settings``), falling back to what the model's ``pretrained_cfg`` says."""
    pc = getattr(model, "pretrained_cfg", None) or {}
    mean = _floats(settings.get("mean")) or _floats(pc.get("mean")) or [0.5, 0.5, 0.5]
    std = _floats(settings.get("std")) or _floats(pc.get("std")) or [0.5, 0.5, 0.5]
    if classes is not None and len(classes) != model.num_classes:
        classes = None
    return {"model": str(settings.get("model") or pc.get("name") or pc.get("arch") or ""),
            "num_classes": int(model.num_classes), "classes": classes, "mean": mean, "std": std,
            "transforms": str(settings.get("transforms") or "hyperrule"),
            "eval_crop": _as_int(settings.get("eval_crop")), "eval_resize": _as_int(settings.get("eval_resize"))}


def load_for_export(source: str | os.PathLike, model_name: str | None = None) -> tuple[ResNetV2, int | None, dict]:
    """``open_run`` as ``bit export`` opens a source (a run without final weights gives its newest checkpoint):
    the model, its input size when known, and its ``deploy_facts``."""
    loaded = open_run(source, model_name=model_name, unfinished=True)
    return loaded.model, loaded.input_size, loaded.facts


def load_run_or_checkpoint(source: str | os.PathLike, model_name: str | None = None) -> tuple[ResNetV2, int | None]:
    """As ``load_for_export``, without the facts."""
    return load_for_export(source, model_name)[:2]


def weights_source(source: str, model_name: str | None = None) -> tuple[str, str | None]:
    """The weights ``bit convert`` reads: a path as given (a run or Hugging Face folder: its weights file), or a
    registered model name resolved to its downloaded weights file (and that name)."""
    path = Path(source)
    if path.exists():
        return source, model_name
    if path.suffix.lower() in WEIGHT_SUFFIXES or looks_like_path(source):
        raise CheckpointError(f"{source}: no such file; check the path (or give a registered model name to download "
                              f"its weights)")
    from ..weights.download import fetch_pretrained

    cfg = get_config(source)  # an unknown name raises with a suggestion
    return str(fetch_pretrained(cfg)), model_name or cfg.name


def prepare_run_dir(run_dir: Path, cfg: RunConfig, overwrite: bool, info: DistInfo) -> bool:
    """Create or reuse ``run_dir``; True when it holds this same run (so it resumes). Rank 0 decides and tells the
    others, so every rank takes the same branch and the same collectives."""
    outcome: tuple[bool, str | None] = (False, None)
    if info.is_main:
        try:
            outcome = (_prepare_run_dir(run_dir, cfg, overwrite), None)
        except BitError as e:
            outcome = (False, str(e))
    resumable, error = broadcast_object(outcome, info)
    if error:
        raise BitError(error)
    return resumable


def _saved_run(saved: Path) -> tuple[dict, RunConfig | None]:
    """A run folder's ``config.yaml`` as written (keys an older version did not write take their defaults) and read
    back with ``RunConfig.from_dict``; ({}, None) when unreadable, None when not a valid run config."""
    try:
        old = yaml.safe_load(saved.read_text())
    except (yaml.YAMLError, UnicodeDecodeError):
        old = None
    if not isinstance(old, dict) or not old:
        return {}, None
    old = {**C.DEFAULTS, **old}
    try:
        return old, RunConfig.from_dict(old, str(saved))
    except BitError:
        return old, None


def _prepare_run_dir(run_dir: Path, cfg: RunConfig, overwrite: bool) -> bool:
    if run_dir.exists() and not run_dir.is_dir():
        raise BitError(f"--out {run_dir} is a file, not a folder; choose another --out")
    saved = run_dir / CONFIG
    if saved.exists():
        old, old_cfg = _saved_run(saved)  # an unreadable or invalid config.yaml counts as another run
        if old_cfg is not None and C.identity(old_cfg) == C.identity(cfg):
            return True
        if not overwrite and not ((run_dir / FINAL_WEIGHTS).exists() or any((run_dir / CHECKPOINTS).glob("step_*"))):
            log.info("%s holds a run that saved no weights yet; starting it again with the new settings", run_dir)
        elif not overwrite:
            new = cfg.to_dict()
            diff = sorted(k for k in set(old) | set(new) if k not in C.NON_IDENTITY and old.get(k) != new.get(k))
            raise BitError(f"{run_dir} holds a different run (settings differ: {', '.join(diff[:5])}); "
                           f"use another --out, or --overwrite to replace it")
        for name in RESTART_REMOVES:
            target = run_dir / name
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(saved, lambda tmp: Path(tmp).write_text(C.dump(cfg)))
    return False


def write_final_weights(run_dir: Path, state_dict: dict, cfg: RunConfig, classes: list[str]) -> Path:
    """Write the run's ``model.safetensors`` and ``classes.json``, each atomically; the weights' metadata lets the
    bare file rebuild the model, its head and its inputs."""
    mc = get_config(cfg.model)
    meta = {"bigtransfer": "bigtransfer", "format": "pt", "model": mc.name, "num_classes": str(cfg.num_classes),
            "block_units": ",".join(str(u) for u in mc.block_units), "width_factor": str(mc.width_factor),
            "classes": json.dumps(classes), "transforms": str(cfg.transforms), "eval_crop": str(cfg.eval_crop),
            "mean": ",".join(str(float(v)) for v in cfg.mean), "std": ",".join(str(float(v)) for v in cfg.std),
            "precision": str(cfg.precision)}
    if cfg.eval_resize:
        meta["eval_resize"] = str(cfg.eval_resize)
    state = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    atomic_write(run_dir / FINAL_WEIGHTS, lambda p: save_file(state, p, metadata=meta))
    atomic_write(run_dir / CLASSES, lambda p: Path(p).write_text(json.dumps(classes)))
    return run_dir / FINAL_WEIGHTS


def _as_int(value: object) -> int | None:
    try:
        return int(value) if value not in (None, "", "None") else None
    except (TypeError, ValueError):
        return None


def _floats(value: object) -> list[float] | None:
    """``[a, b, c]`` or ``"a,b,c"`` as a list of floats; None when absent or unreadable."""
    try:
        out = [float(v) for v in (value.split(",") if isinstance(value, str) else value or ())]
    except (TypeError, ValueError):
        return None
    return out if len(out) == 3 else None


def _classes(text: str | None) -> list[str] | None:
    """Class names from a JSON list; None when absent or unreadable."""
    try:
        classes = json.loads(text or "null")
    except ValueError:
        return None
    return [str(c) for c in classes] if isinstance(classes, list) else None


def _read_classes(path: Path) -> list[str] | None:
    try:
        return _classes(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _safetensors_metadata(path: Path) -> dict:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except Exception:  # the weights were read already; a header this reader refuses only loses the class names
        return {}
