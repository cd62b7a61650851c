"""ONNX export with the standardized weights baked in, checked against PyTorch with onnxruntime."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .engine.runs import FINAL_WEIGHTS as FINAL_WEIGHTS  # opening a run or a weights file is engine.runs' job
from .engine.runs import LAST_WEIGHTS as LAST_WEIGHTS
from .engine.runs import deploy_facts, load_for_export, load_run_or_checkpoint
from .engine.runs import run_weights as run_weights
from .errors import BitError
from .models.resnetv2 import StdConv2d, standardize

log = logging.getLogger("bigtransfer")

_EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf cannot hold a single file over 2 GB
DYNAMO_MIN_OPSET = 18  # torch.export's ONNX exporter writes this opset and newer ones


def bake_standardized(model: nn.Module) -> nn.Module:
    """An eval-mode copy in which every StdConv2d is a plain Conv2d holding its standardized weight."""
    baked = copy.deepcopy(model).eval()
    for parent in list(baked.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, StdConv2d):
                conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                 child.padding, child.dilation, child.groups, bias=child.bias is not None)
                with torch.no_grad():
                    conv.weight.copy_(standardize(child.weight.float(), child.eps))
                    if child.bias is not None:
                        conv.bias.copy_(child.bias)
                setattr(parent, name, conv)
    return baked.float()


def onnx_metadata(facts: dict, size: int) -> dict[str, str]:
    """ONNX metadata props for a model exported at ``size``: classes, mean, std and how to preprocess an image
    (``transforms``: ``hyperrule`` squash-resizes, ``recipe`` resizes the shorter side and centre-crops)."""
    from . import __version__

    transforms = facts["transforms"]
    classes = facts["classes"] or [f"LABEL_{i}" for i in range(facts["num_classes"])]
    if transforms == "recipe":
        resize = facts["eval_resize"] or size
        if facts["eval_crop"] and facts["eval_crop"] != size:  # exported at another size: keep the resize ratio
            resize = round(resize * size / facts["eval_crop"])
        steps = f"resize the shorter side to {resize} (bilinear), centre-crop {size} x {size}"
    else:
        resize = size
        steps = f"squash-resize to {size} x {size} (bilinear)"
    meta = {"classes": json.dumps(classes), "mean": json.dumps(facts["mean"]), "std": json.dumps(facts["std"]),
            "input_size": str(size), "transforms": transforms, "resize": str(resize),
            "preprocessing": f"RGB, {steps}, scale to [0, 1], subtract mean, divide by std, NCHW float32",
            "model": facts["model"], "num_classes": str(facts["num_classes"]), "producer": f"bigtransfer {__version__}"}
    return {k: v for k, v in meta.items() if v}


def write_metadata(path: str | os.PathLike, props: dict[str, str]) -> bool:
    """Set ``props`` as metadata props of the ONNX file at ``path`` (external data stays where it is)."""
    try:
        import onnx
    except ImportError:
        log.warning("the onnx package is not installed; the model metadata (classes, preprocessing) was not written")
        return False
    model = onnx.load(str(path), load_external_data=False)
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for key, value in [*kept, *props.items()]:
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return True


def opset_range(dynamo: bool) -> tuple[int, int]:
    """The lowest and highest ONNX opset written by torch.export (or, with ``dynamo=False``, TorchScript)."""
    try:
        from torch.onnx import _constants
    except ImportError:
        _constants = None
    if dynamo:
        return DYNAMO_MIN_OPSET, int(getattr(_constants, "ONNX_MAX_OPSET", DYNAMO_MIN_OPSET))
    return (int(getattr(_constants, "ONNX_MIN_OPSET", 7)),
            int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 17)))


def _choose_exporter(opset: int, dynamo: bool) -> bool:
    """Whether torch.export writes ``opset`` (below its range the TorchScript exporter does); else one clear error."""
    (low, high), top = opset_range(False), opset_range(True)[1]
    if dynamo and low <= opset < DYNAMO_MIN_OPSET:
        log.info("opset %d is older than torch.export writes (%d and newer): using the TorchScript exporter",
                 opset, DYNAMO_MIN_OPSET)
        return False
    if not dynamo and not low <= opset <= high:
        raise BitError(f"the TorchScript exporter (--legacy) writes ONNX opsets {low} to {high}, not {opset}; "
                       f"choose one of them, or drop --legacy for opsets {DYNAMO_MIN_OPSET} to {top}")
    if not low <= opset <= top:
        raise BitError(f"ONNX opset {opset} cannot be written; choose an opset from {low} to {top} "
                       f"(default {DYNAMO_MIN_OPSET})")
    return dynamo


def written_opset(path: str | os.PathLike) -> int | None:
    """The default-domain opset an ONNX file declares (None when the onnx package is missing)."""
    try:
        import onnx
    except ImportError:
        return None
    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's graph passes log every rewrite at INFO, and its opset converter warns with tracebacks; the
    written opset is checked afterwards, so keep both out of the user's console."""
    levels = {lg: lg.level for lg in map(logging.getLogger, ("onnxscript", "onnx_ir", "torch.onnx", "torch.export"))}
    for lg in levels:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in levels.items():
            lg.setLevel(level)


def export_onnx(model: nn.Module, path: str | os.PathLike, size: int = 224, *, opset: int = 18,
                check: bool = True, dynamo: bool = True, atol: float = 1e-4,
                metadata: dict[str, str] | None = None) -> float | None:
    """Write ``model`` as ONNX with a dynamic batch axis, moved into place only once complete and (with ``check``)
    within ``atol`` of PyTorch; returns onnxruntime's max |logit diff|. ``metadata`` becomes its metadata props."""
    dynamo = _choose_exporter(opset, dynamo)
    path = Path(path)
    model = model.eval()
    baked = bake_standardized(model)
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    external = sum(p.numel() * 4 for p in baked.parameters()) > _EXTERNAL_DATA_BYTES
    if dynamo:
        options = dict(dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, external_data=external, verbose=False)
    else:
        options = dict(dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tmp = tmpdir / path.name  # same base name, so external data keeps its reference when moved
        with _quiet_exporter():
            torch.onnx.export(baked, (example,), str(tmp), dynamo=dynamo, input_names=["input"],
                              output_names=["logits"], opset_version=opset, **options)
        written = written_opset(tmp)
        if written is not None and written != opset:
            raise BitError(f"the exporter wrote ONNX opset {written}, not the {opset} asked for, so nothing was "
                           f"written; choose opset {written}")
        if metadata:
            write_metadata(tmp, metadata)
        diff = check_onnx(model, tmp, size, atol=atol) if check else None
        for f in sorted(tmpdir.iterdir(), key=lambda p: p.name == path.name):  # the .onnx itself last
            os.replace(f, path.parent / f.name)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return diff


def check_onnx(model: nn.Module, onnx_path: str | os.PathLike, size: int, atol: float = 1e-4) -> float | None:
    """Max |logit diff| between onnxruntime and PyTorch at batch 1 and 3; raises past ``atol``."""
    try:
        import onnxruntime as ort
    except ImportError:
        log.warning("onnxruntime is not installed; the exported file was not checked")
        return None
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    worst = 0.0
    g = torch.Generator().manual_seed(1)
    for batch in (1, 3):
        x = torch.randn(batch, 3, size, size, generator=g)
        with torch.no_grad():
            want = model.eval()(x).float().numpy()
        got = session.run(None, {name: x.numpy()})[0]
        if got.shape != want.shape:
            raise BitError(f"ONNX output shape {got.shape} differs from PyTorch's {want.shape}")
        worst = max(worst, float(np.abs(got - want).max()))
    if worst > atol:
        raise BitError(f"ONNX logits differ from PyTorch by {worst:.2e} (> {atol:g}); the export was not written")
    return worst


__all__ = ["export_onnx", "bake_standardized", "check_onnx", "deploy_facts", "load_for_export",
           "load_run_or_checkpoint", "onnx_metadata", "write_metadata"]
