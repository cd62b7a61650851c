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
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BitError
from . import kernels
from .resnetv2 import GroupNormReLU, PreActBottleneck, ResNetV2, StdConv2d, standardize

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


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None


class FastStdConv2d(StdConv2d):
    """:class:`StdConv2d` that reuses its standardized weight; same parameters, same state-dict keys.

    Eval mode caches the standardized weight (in the autocast dtype) until the weight changes (version,
    dtype or device) or ``train()`` is called; :func:`standardize_once` sets ``shared`` for a whole step.
    With ``fused``, training standardizes with the compiled kernel (straight into bf16 under autocast)
    and CPU inference runs oneDNN on weights reordered (prepacked) once. ``channels_last`` converts inputs.
    """

    def __init__(self, *args, fused: bool = False, channels_last: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fused = fused
        self.channels_last = channels_last
        self.shared: torch.Tensor | None = None
        self._drop_cache()

    def _drop_cache(self) -> None:
        self._cached: torch.Tensor | None = None
        self._cache_key: tuple | None = None
        self._packed: torch.Tensor | None = None

    def __getstate__(self) -> dict:
        # Copies and pickles leave the caches behind: they are rebuilt on use, and oneDNN's are not copyable.
        return {**self.__dict__, "shared": None, "_cached": None, "_cache_key": None, "_packed": None}

    def train(self, mode: bool = True) -> FastStdConv2d:
        self._drop_cache()
        return super().train(mode)

    def standardized_weight(self) -> torch.Tensor:
        """The standardized kernel: shared per step, cached in eval, else computed."""
        if self.shared is not None:
            return self.shared
        w = self.weight
        if self.training or torch.is_grad_enabled() and w.requires_grad or torch.compiler.is_compiling():
            return super().standardized_weight()
        dtype = _autocast_dtype(w.device) or w.dtype  # the cache holds the weight already cast
        key = (w.data_ptr(), w._version, dtype, w.device, self.eps)
        if self._cache_key != key:
            # A normal (not inference-mode) tensor, so the cache stays usable outside inference_mode.
            with torch.inference_mode(False), torch.no_grad():
                cached = standardize(w, self.eps).to(dtype)
            self._drop_cache()
            self._cached, self._cache_key = cached, key
        return self._cached

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.fused and self.shared is None and torch.is_grad_enabled() and self.weight.requires_grad:
            w = kernels.standardize(self.weight, self.eps, _autocast_dtype(x.device) == torch.bfloat16)
            if w is not None:
                return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)
        w = self.standardized_weight()
        if (self.fused and w is self._cached and not torch.is_grad_enabled() and x.device.type == "cpu"
                and x.dtype == w.dtype and x.is_contiguous(memory_format=torch.channels_last)):
            return self._prepacked(x, w)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def _prepacked(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        geometry = (list(self.padding), list(self.stride), list(self.dilation), self.groups)
        if self._packed is None:
            self._packed = torch.ops.mkldnn._reorder_convolution_weight(w, *geometry, list(x.shape))
        return torch.ops.mkldnn._convolution_pointwise(x, self._packed, self.bias, *geometry, "none", [], "")


class FusedGroupNormReLU(GroupNormReLU):
    """:class:`GroupNormReLU` through the fused channels_last kernel (``kernels.gn_relu``) where it applies."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.gn_relu(self, x)


class LayoutBottleneck(PreActBottleneck):
    """A unit that runs in the layout its CPU GroupNorm is fastest in (see ``CL_MIN_HW``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            training = self.training and torch.is_grad_enabled()
            cl = not training and x.shape[-2] * x.shape[-1] >= CL_MIN_HW
            x = x.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
        return super().forward(x)


def _conv_like(cls: type[StdConv2d], conv: StdConv2d, **flags) -> StdConv2d:
    """A ``cls`` conv holding ``conv``'s parameters (the same objects) and settings."""
    new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
              conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode, eps=conv.eps,
              device="meta", **flags)
    new.weight, new.bias = conv.weight, conv.bias
    return new.train(conv.training)


def _norm_like(cls: type[GroupNormReLU], norm: GroupNormReLU) -> GroupNormReLU:
    new = cls(norm.num_groups, norm.num_channels, norm.eps, norm.affine, device="meta")
    new.weight, new.bias = norm.weight, norm.bias
    return new.train(norm.training)


def _unit_like(cls: type[PreActBottleneck], unit: PreActBottleneck) -> PreActBottleneck:
    with torch.device("meta"):
        new = cls(unit.conv1.in_channels, unit.conv3.out_channels, unit.conv1.out_channels, unit.conv2.stride[0])
    for name, child in unit.named_children():
        setattr(new, name, child)
    return new.train(unit.training)


Swapped = list[tuple[nn.Module, str, nn.Module]]  # (parent, name, the module replaced there)


def _swap(module: nn.Module, replace: Callable[[nn.Module], nn.Module | None]) -> Swapped:
    """Replace each submodule ``m`` by ``replace(m)`` where that is not None, children before their parents."""
    done = []
    for name, child in list(module.named_children()):
        done += _swap(child, replace)
        new = replace(child)
        if new is not None:
            setattr(module, name, new)
            done.append((module, name, child))
    return done


def _cached_convs(m: nn.Module) -> nn.Module | None:
    return _conv_like(FastStdConv2d, m) if type(m) is StdConv2d else None


def _plain(m: nn.Module) -> nn.Module | None:
    if isinstance(m, FastStdConv2d):
        return _conv_like(StdConv2d, m)
    if isinstance(m, FusedGroupNormReLU):
        return _norm_like(GroupNormReLU, m)
    if isinstance(m, LayoutBottleneck):
        return _unit_like(PreActBottleneck, m)
    return None


def use_fast_path(model: ResNetV2, fused: bool = True) -> ResNetV2:
    """Make ``model`` take its fastest CPU path for training and inference (in place, idempotent).

    With the fused GroupNorm+ReLU kernel (``fused`` and a C++ compiler; built once per machine) the
    weights and activations are channels_last throughout, training standardizes the weights with a
    compiled kernel and inference convolutions use prepacked oneDNN weights. Otherwise each unit chooses
    its layout (see ``CL_MIN_HW``). Modules are swapped for subclasses holding the same parameters, so
    names, state-dict keys and optimizers are unaffected; hooks on the swapped modules stay behind.
    Inputs may come in any layout.
    """
    if fast_path_kind(model) is not None:
        return model
    kind = "fused" if fused and kernels.load() is not None else "layouts"
    if kind == "fused":
        model.to(memory_format=torch.channels_last)
    prepack = kind == "fused" and torch.backends.mkldnn.is_available()
    stem = model.root.conv

    def fast(m: nn.Module) -> nn.Module | None:
        if isinstance(m, StdConv2d):
            # The stem's 7x7 convolution and max pool are several times faster in channels_last.
            return _conv_like(FastStdConv2d, m, fused=prepack, channels_last=m is stem)
        if kind == "fused" and isinstance(m, GroupNormReLU):
            return _norm_like(FusedGroupNormReLU, m)
        if kind == "layouts" and isinstance(m, PreActBottleneck):
            return _unit_like(LayoutBottleneck, m)
        return None

    _swap(model, fast)
    return model


def remove_fast_path(model: ResNetV2) -> ResNetV2:
    """Undo :func:`use_fast_path`: the plain reference modules (same parameters), NCHW weights."""
    kind = fast_path_kind(model)
    _swap(model, _plain)
    if kind == "fused":
        model.to(memory_format=torch.contiguous_format)
    return model


def fast_path_kind(model: ResNetV2) -> str | None:
    """``"fused"``, ``"layouts"`` or None: what :func:`use_fast_path` installed on ``model``."""
    for m in model.modules():
        if isinstance(m, FusedGroupNormReLU):
            return "fused"
        if isinstance(m, LayoutBottleneck):
            return "layouts"
    return None


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
    not pay, so no mode turns it on by itself. The model is modified in place (eval mode, and in every
    mode convolutions that cache their standardized weights, on any device).
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
        _swap(model, _cached_convs)
        model.to(memory_format=torch.channels_last if mode == "channels_last" else torch.contiguous_format)
    bf16 = mode == "bf16" or mode == "fastest" and bf16_supported(device)
    return InferenceModel(model, mode, bf16, compile)


@contextlib.contextmanager
def standardize_once(model: nn.Module) -> Iterator[nn.Module]:
    """Standardize every conv weight once for a whole optimizer step of gradient accumulation.

    Inside the block each trainable conv (a :class:`FastStdConv2d`, swapped in for the block where the
    model has plain ones) uses one standardized weight, a leaf whose gradient the micro-batch backward
    passes accumulate; on exit that gradient goes through the standardization into the raw weights'
    ``.grad`` with one autograd call. Gradients equal those of the plain per-micro-batch path::

        with standardize_once(model):
            for x, y in micro_batches:
                loss_fn(model(x), y).backward()
        optimizer.step()
    """
    if any(isinstance(m, FastStdConv2d) and m.shared is not None for m in model.modules()):
        raise RuntimeError("standardize_once is already active for this model")
    swapped = _swap(model, _cached_convs)
    convs = [m for m in model.modules() if isinstance(m, FastStdConv2d) and m.weight.requires_grad]
    device = convs[0].weight.device.type if convs else "cpu"
    try:
        with torch.no_grad(), torch.autocast(device, enabled=False):
            for c in convs:
                c.shared = standardize(c.weight, c.eps).requires_grad_()
        yield model
        pairs = [(c, c.shared.grad) for c in convs if c.shared.grad is not None]
        if pairs:
            with torch.enable_grad(), torch.autocast(device, enabled=False):
                outs = [standardize(c.weight, c.eps) for c, _ in pairs]
            torch.autograd.backward(outs, [g for _, g in pairs])
    finally:
        for c in convs:
            c.shared = None
        for parent, name, old in reversed(swapped):
            setattr(parent, name, old)
