"""CPU kernels compiled on first use: GroupNorm + ReLU for channels_last activations, and weight
standardization straight into the convolution's dtype.

PyTorch's channels_last GroupNorm walks each group's few channels with a stride on feature maps under
32x32 (forward) or 48x48 (backward), which makes it several times slower than in NCHW for BiT's
group sizes; NCHW in turn makes every oneDNN convolution reorder its activations. This kernel keeps
channels_last and vectorizes over channels at every map size, applies the ReLU in the same pass, and
in the backward masks the gradient with the saved output. The standardization kernel makes one pass
per filter (the filter stays in cache) and writes bf16 directly under autocast, instead of
batch_norm's passes plus a cast. Both are built from ``csrc/`` with the C++ compiler through
``torch.utils.cpp_extension`` once per machine (about a minute; cached under
``TORCH_EXTENSIONS_DIR``); without a compiler, or with ``BIGTRANSFER_NO_KERNELS=1``, ``load()``
returns None and callers use PyTorch's own operators.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("bigtransfer")

_CSRC = Path(__file__).parent / "csrc"  # the C++ sources: one .cpp per kernel, bindings.cpp, shared headers
_FLAGS = ["-O3", "-march=native"]
_module = None
_failed = False


def load() -> ModuleType | None:
    """The compiled kernel module, built on first call; None where it cannot be built or is disabled."""
    global _module, _failed
    if _module is not None or _failed:
        return _module
    if os.environ.get("BIGTRANSFER_NO_KERNELS") or os.name == "nt":  # the flags below are GCC/Clang flags
        _failed = True
        return None
    quiet = logging.getLogger("torch.utils.cpp_extension")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it warns about CUDA on CPU-only machines
    try:
        from torch.utils import cpp_extension

        files = sorted(p for p in _CSRC.iterdir() if p.suffix in (".cpp", ".h"))
        sources = [str(p) for p in files if p.suffix == ".cpp"]
        if not sources:
            raise FileNotFoundError(f"no C++ sources in {_CSRC}")
        name = _build_name(files)
        if not _built(cpp_extension, name):
            log.info("compiling the bigtransfer CPU kernels (once per machine, about a minute)")
        _module = cpp_extension.load(name, sources, extra_cflags=_FLAGS, verbose=False)
    except Exception as e:  # noqa: BLE001 - no compiler, no ninja, a compile error: fall back to PyTorch's ops
        _failed = True
        log.warning("bigtransfer CPU kernels unavailable (%s: %s); using PyTorch's operators",
                    type(e).__name__, (str(e).strip().splitlines() or [""])[-1][:160])
    finally:
        quiet.setLevel(level)
    return _module


def _build_name(files: list[Path]) -> str:
    """A build name that changes with the sources, the flags, the CPU and the torch installation."""
    # -march=native code must not be reused on another CPU, and two environments must not rebuild each other's copy.
    key = hashlib.sha256()
    for f in files:
        key.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    key.update("\n".join([*_FLAGS, torch.__version__, platform.machine(), _cpu_flags(),
                          os.path.dirname(torch.__file__)]).encode())
    return "bigtransfer_kernels_" + key.hexdigest()[:12]


def _built(cpp_extension, name: str) -> bool:
    try:
        return os.path.exists(os.path.join(cpp_extension._get_build_directory(name, False), f"{name}.so"))
    except Exception:  # noqa: BLE001 - only decides whether to announce a compilation
        return True


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return ""


class _GroupNormReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, groups, eps):
        y, mean, rstd = _module.gn_relu_forward(x, weight, bias, groups, eps)
        ctx.save_for_backward(x, y, mean, rstd, weight)
        ctx.groups = groups
        return y

    @staticmethod
    def backward(ctx, dy):
        x, y, mean, rstd, weight = ctx.saved_tensors
        dx, dw, db = _module.gn_relu_backward(dy.contiguous(memory_format=torch.channels_last), y, x, mean, rstd,
                                              weight, ctx.groups)
        return dx, dw.to(weight.dtype), db.to(weight.dtype), None, None


def _is_cl(t: torch.Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """A conv kernel as (out, in * kh * kw) rows in its memory order (a view when it is dense)."""
    return (t.permute(0, 2, 3, 1) if _is_cl(t) else t).reshape(t.shape[0], -1).contiguous()


def _unrows(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if _is_cl(like):
        o, i, kh, kw = like.shape
        return rows.view(o, kh, kw, i).permute(0, 3, 1, 2)
    return rows.view(like.shape)


class _Standardize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, eps, bf16):
        y, mean, rstd = _module.ws_forward(_rows(weight), eps, bf16)
        ctx.save_for_backward(weight, mean, rstd)
        return _unrows(y, weight)

    @staticmethod
    def backward(ctx, grad):
        weight, mean, rstd = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last if _is_cl(weight) else torch.contiguous_format)
        return _unrows(_module.ws_backward(_rows(grad), _rows(weight), mean, rstd), weight), None, None


def standardize(weight: torch.Tensor, eps: float, bf16: bool = False) -> torch.Tensor | None:
    """Weight standardization in one pass per filter, output in bf16 if asked; None where it does not apply."""
    if _module is None or weight.device.type != "cpu" or weight.dtype != torch.float32:
        return None
    return _Standardize.apply(weight, eps, bf16)


def fits(norm: nn.GroupNorm, x: torch.Tensor) -> bool:
    """Whether the fused kernel applies: CPU, float32/bfloat16, channels_last 4-D input, affine norm."""
    return (_module is not None and x.device.type == "cpu" and x.dim() == 4 and norm.affine
            and x.dtype in (torch.float32, torch.bfloat16) and x.is_contiguous(memory_format=torch.channels_last)
            and norm.weight.dtype == torch.float32)


def gn_relu(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """``relu(group_norm(x))`` with ``norm``'s settings: the fused kernel where it applies (see :func:`fits`)."""
    if fits(norm, x):
        return _GroupNormReLU.apply(x, norm.weight, norm.bias, norm.num_groups, norm.eps)
    return F.relu(F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps), inplace=True)
