"""Fast paths for ResNetV2: prepared inference, a fused GroupNorm+ReLU path in channels_last, optional
compilation with a clean fallback, and weight standardization once per optimizer step.

``prepare_for_inference(model, mode)`` gives a module returning fp32 logits (``bit predict`` and
``bit evaluate`` use it); ``use_fast_path(model)`` speeds up training and inference of a plain model;
``standardize_once(model)`` shares one standardized weight per conv across the micro-batches of a
gradient-accumulation step. ``benchmarks/bench.py`` measures all of it against timm.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BitError
from . import kernels
from .resnetv2 import PreActBottleneck, ResNetV2, StdConv2d, standardize

INFERENCE_MODES = ("fp32", "channels_last", "bf16", "fastest", "auto")

# Without the fused kernel the layout is chosen per unit around PyTorch's CPU GroupNorm: its
# channels_last forward vectorizes over channels only from 32x32 maps on (CL_MIN_HW positions) and its
# channels_last backward is slow for BiT's group sizes, while NCHW makes every convolution reorder its
# activations; the stem's 7x7 convolution and max pool are several times faster in channels_last.
CL_MIN_HW = 1024


def bf16_supported(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 convolutions run natively on ``device`` (AVX512-BF16 or AMX on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _stem_layout(module: nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(memory_format=torch.channels_last),)


def _unit_layout(module: nn.Module, args: tuple) -> tuple:
    x = args[0]
    if x.device.type != "cpu":
        return args
    training = module.training and torch.is_grad_enabled()
    cl = not training and x.shape[-2] * x.shape[-1] >= CL_MIN_HW
    return (x.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format),)


# Prepacked oneDNN weights per conv, outside the modules so that copies and pickles of a model skip them.
_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fast_conv_forward(conv: StdConv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` on the fast path. Training: the weight is standardized by the compiled kernel,
    straight into bf16 under autocast. Inference on CPU: oneDNN with the standardized weight
    reordered (prepacked) once, not on every call; a weight change or ``train()`` drops it.
    """
    args = (conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    if conv.training:
        _PACKED.pop(conv, None)
    if conv._once is None and torch.is_grad_enabled() and conv.weight.requires_grad:
        bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        w = kernels.standardize(conv.weight, conv.eps, bf16)
        if w is not None:
            return F.conv2d(x, w, *args)
    w = conv.standardized_weight()
    if (conv.training or torch.is_grad_enabled() or conv._frozen_key is None or x.device.type != "cpu"
            or x.dtype != w.dtype or not x.is_contiguous(memory_format=torch.channels_last)):
        _PACKED.pop(conv, None)
        return F.conv2d(x, w, *args)
    geometry = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
    cached = _PACKED.get(conv)
    if cached is None or cached[0] != conv._frozen_key:
        cached = _PACKED[conv] = (conv._frozen_key, torch.ops.mkldnn._reorder_convolution_weight(
            w, *geometry, list(x.shape)))
    return torch.ops.mkldnn._convolution_pointwise(x, cached[1], conv.bias, *geometry, "none", [], "")


def use_fast_path(model: ResNetV2, fused: bool = True) -> ResNetV2:
    """Make ``model`` take its fastest CPU path for training and inference (idempotent).

    With the fused GroupNorm+ReLU kernel (``fused`` and a C++ compiler; built once per machine) the
    weights and activations are channels_last throughout, training standardizes the weights with a
    compiled kernel and inference convolutions use prepacked oneDNN weights. Otherwise forward pre-hooks choose each
    unit's layout (see ``CL_MIN_HW``). Names and state-dict keys are unchanged; inputs may come in any
    layout. Forward hooks on the GroupNorm modules are skipped where the fused kernel runs.
    """
    if getattr(model, "_fast_path", None):
        return model
    units = [m for m in model.modules() if isinstance(m, PreActBottleneck)]
    handles = [model.root.register_forward_pre_hook(_stem_layout)]
    if fused and kernels.load() is not None:
        model.to(memory_format=torch.channels_last)
        for unit in units:
            unit.gn_relu = kernels.gn_relu
        if torch.backends.mkldnn.is_available():
            for conv in model.modules():
                if isinstance(conv, StdConv2d):
                    conv.conv_forward = fast_conv_forward
        kind = "fused"
    else:
        handles += [unit.register_forward_pre_hook(_unit_layout) for unit in units]
        kind = "layouts"
    model._fast_path = (kind, handles)
    return model


def remove_fast_path(model: ResNetV2) -> ResNetV2:
    """Undo :func:`use_fast_path`: plain GroupNorm and ReLU, NCHW weights, no hooks."""
    kind, handles = getattr(model, "_fast_path", None) or (None, ())
    for h in handles:
        h.remove()
    for m in model.modules():
        for attr in ("gn_relu", "conv_forward"):
            m.__dict__.pop(attr, None)
        _PACKED.pop(m, None)
    if kind == "fused":
        model.to(memory_format=torch.contiguous_format)
    model._fast_path = None
    return model


def fast_path_kind(model: ResNetV2) -> str | None:
    """``"fused"``, ``"layouts"`` or None: what :func:`use_fast_path` installed on ``model``."""
    return (getattr(model, "_fast_path", None) or (None,))[0]


class InferenceModel(nn.Module):
    """A model prepared for inference: takes images in any layout, returns fp32 logits.

    With ``compile=True`` the model runs through ``torch.compile`` (inductor, weights frozen into the
    graph); where compilation fails (no C++ compiler, unsupported platform) it warns once and runs
    eagerly. Compiled graphs are cached on disk by inductor (``TORCHINDUCTOR_CACHE_DIR``).
    """

    def __init__(self, model: nn.Module, mode: str, bf16: bool, compile: bool = False) -> None:
        super().__init__()
        self.model = model
        self.mode = mode
        self.bf16 = bf16
        compiled = None
        if compile:
            try:
                compiled = torch.compile(model, options={"freezing": True})
            except Exception as e:  # noqa: BLE001 - e.g. a Python version dynamo does not support
                _warn_eager(e)
        object.__setattr__(self, "_compiled", compiled)  # not a submodule: keeps state_dict() plain

    @property
    def compiled(self) -> bool:
        """Whether calls run through the compiled graph."""
        return self._compiled is not None

    def _run(self, fn: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode())
            if self.bf16:
                stack.enter_context(torch.autocast(x.device.type, dtype=torch.bfloat16))
            return fn(x).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        if self._compiled is not None:
            try:
                return self._run(self._compiled, x)
            except Exception as e:  # noqa: BLE001 - compilation only speeds things up; never fail for it
                object.__setattr__(self, "_compiled", None)
                _warn_eager(e)
        return self._run(self.model, x)


def _warn_eager(e: Exception) -> None:
    first = (str(e).strip().splitlines() or [""])[0][:160]
    warnings.warn(f"torch.compile is unavailable here ({type(e).__name__}: {first}); running eagerly",
                  RuntimeWarning, stacklevel=3)


def prepare_for_inference(model: ResNetV2, mode: str = "auto", *, compile: bool = False) -> InferenceModel:
    """Put ``model`` in eval mode and wrap it for fast inference; the wrapper returns fp32 logits.

    Modes: ``fp32`` (the plain model), ``channels_last`` (model and inputs channels_last), ``bf16``
    (bf16 autocast on :func:`use_fast_path`), ``fastest`` (the same, in fp32 where the hardware has
    no native bf16) and ``auto`` (``fastest``, whose bf16 keeps top-1 agreement with fp32 above 99 %:
    benchmarks/agreement.py). ``compile`` adds ``torch.compile``; on the 2-core CPU measured it did
    not pay, so no mode turns it on by itself. The model is modified in place (eval mode, fast path).
    """
    if mode not in INFERENCE_MODES:
        raise BitError(f"unknown inference mode '{mode}': choose one of {', '.join(INFERENCE_MODES)}")
    device = next(model.parameters()).device
    if mode == "auto":
        mode = "fastest"
    model.eval()
    if mode in ("bf16", "fastest"):
        use_fast_path(model)
    else:
        remove_fast_path(model)
        model.to(memory_format=torch.channels_last if mode == "channels_last" else torch.contiguous_format)
    bf16 = mode == "bf16" or mode == "fastest" and bf16_supported(device)
    return InferenceModel(model, mode, bf16, compile)


@contextlib.contextmanager
def standardize_once(model: nn.Module) -> Iterator[nn.Module]:
    """Standardize every conv weight once for a whole optimizer step of gradient accumulation.

    Inside the block each ``StdConv2d`` uses one standardized weight, a leaf whose gradient the
    micro-batch backward passes accumulate; on exit that gradient goes through the standardization
    into the raw weights' ``.grad`` with one autograd call. Gradients equal those of the plain
    per-micro-batch path::

        with standardize_once(model):
            for x, y in micro_batches:
                loss_fn(model(x), y).backward()
        optimizer.step()
    """
    convs = [m for m in model.modules() if isinstance(m, StdConv2d) and m.weight.requires_grad]
    if any(c._once is not None for c in convs):
        raise RuntimeError("standardize_once is already active for this model")
    device = convs[0].weight.device.type if convs else "cpu"
    try:
        with torch.no_grad(), torch.autocast(device, enabled=False):
            for c in convs:
                c._once = standardize(c.weight, c.eps).requires_grad_()
        yield model
        pairs = [(c, c._once.grad) for c in convs if c._once.grad is not None]
        if pairs:
            with torch.enable_grad(), torch.autocast(device, enabled=False):
                outs = [standardize(c.weight, c.eps) for c, _ in pairs]
            torch.autograd.backward(outs, [g for _, g in pairs])
    finally:
        for c in convs:
            c._once = None
