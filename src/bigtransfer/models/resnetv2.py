"""ResNetV2 with Group Normalization and Weight Standardization, as in Big Transfer.

Module names mirror the official checkpoint scopes (``root``, ``body.blockN.unitNN``, ``head``) so that
loading an official ``.npz`` is a readable walk over the tree.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

WS_EPS = 1e-10  # official BiT and mindcv; timm and transformers use 1e-8
GN_GROUPS = 32
GN_EPS = 1e-5


def standardize(weight: torch.Tensor, eps: float = WS_EPS) -> torch.Tensor:
    """Standardize each output filter over (in, kh, kw) with the biased variance; keeps the memory layout."""
    # batch_norm's fused kernels are several times faster than var_mean and its autograd graph, both ways.
    # A channels_last kernel is standardized as its (out, kh, kw, in) view, so nothing is copied.
    cl = weight.dim() == 4 and not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last)
    w = weight.permute(0, 2, 3, 1) if cl else weight
    out = F.batch_norm(w.reshape(1, w.shape[0], -1), None, None, training=True, momentum=0.0, eps=eps)
    out = out.view(w.shape)
    return out.permute(0, 3, 1, 2) if cl else out


class StdConv2d(nn.Conv2d):
    """Conv2d with Weight Standardization: each filter is standardized before it is applied."""

    def __init__(self, *args, eps: float = WS_EPS, **kwargs) -> None:
        kwargs.setdefault("bias", False)
        super().__init__(*args, **kwargs)
        self.eps = eps

    def standardized_weight(self) -> torch.Tensor:
        """The standardized kernel."""
        return standardize(self.weight, self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.standardized_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)


def conv3x3(cin: int, cout: int, stride: int = 1, eps: float = WS_EPS) -> StdConv2d:
    return StdConv2d(cin, cout, kernel_size=3, stride=stride, padding=1, eps=eps)


def conv1x1(cin: int, cout: int, stride: int = 1, eps: float = WS_EPS) -> StdConv2d:
    return StdConv2d(cin, cout, kernel_size=1, stride=stride, eps=eps)


class GroupNormReLU(nn.GroupNorm):
    """``relu(group_norm(x))``: a unit's pre-activation, one module as in timm's ``GroupNormAct``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place is safe: GroupNorm's backward reads its input only.
        return F.relu(super().forward(x), inplace=True)


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck (each ``gnN`` is GroupNorm then ReLU): the projection reads the activated input."""

    def __init__(self, cin: int, cout: int, cmid: int, stride: int = 1, eps: float = WS_EPS) -> None:
        super().__init__()
        self.gn1 = GroupNormReLU(GN_GROUPS, cin, eps=GN_EPS)
        self.conv1 = conv1x1(cin, cmid, eps=eps)
        self.gn2 = GroupNormReLU(GN_GROUPS, cmid, eps=GN_EPS)
        self.conv2 = conv3x3(cmid, cmid, stride, eps=eps)
        self.gn3 = GroupNormReLU(GN_GROUPS, cmid, eps=GN_EPS)
        self.conv3 = conv1x1(cmid, cout, eps=eps)
        self.downsample = conv1x1(cin, cout, stride, eps=eps) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.gn1(x)
        residual = self.downsample(out) if self.downsample is not None else x
        out = self.conv1(out)
        out = self.conv2(self.gn2(out))
        out = self.conv3(self.gn3(out))
        return out.add_(residual)  # in place is safe: no backward reads a convolution's output


class ResNetV2(nn.Module):
    """Pre-activation ResNet (v2) with GN+WS, the BiT backbone."""

    def __init__(
        self,
        block_units: Sequence[int],
        width_factor: float,
        num_classes: int = 1000,
        zero_head: bool = True,
        ws_eps: float = WS_EPS,
    ) -> None:
        super().__init__()
        wf = width_factor
        stem = int(64 * wf)
        self.block_units = tuple(block_units)
        self.width_factor = width_factor
        self.ws_eps = ws_eps
        self.num_features = int(2048 * wf)
        self.pretrained_cfg: dict = {}

        self.root = nn.Sequential(OrderedDict([
            ("conv", StdConv2d(3, stem, kernel_size=7, stride=2, padding=3, eps=ws_eps)),
            ("pad", nn.ConstantPad2d(1, 0.0)),
            ("pool", nn.MaxPool2d(kernel_size=3, stride=2, padding=0)),
        ]))

        blocks = []
        cin = stem
        for i, units in enumerate(self.block_units):
            cout = int(256 * wf) * 2**i
            stride = 1 if i == 0 else 2
            unit_list = [(f"unit{j + 1:02d}", PreActBottleneck(
                cin if j == 0 else cout, cout, cout // 4, stride if j == 0 else 1, eps=ws_eps))
                for j in range(units)]
            blocks.append((f"block{i + 1}", nn.Sequential(OrderedDict(unit_list))))
            cin = cout
        self.body = nn.Sequential(OrderedDict(blocks))

        self.head = nn.Sequential(OrderedDict([
            ("gn", nn.GroupNorm(GN_GROUPS, self.num_features, eps=GN_EPS)),
            ("relu", nn.ReLU(inplace=True)),
            ("avg", nn.AdaptiveAvgPool2d(1)),
            ("conv", nn.Conv2d(self.num_features, num_classes, kernel_size=1, bias=True)),
        ]))
        self.num_classes = num_classes
        if zero_head:
            self.zero_head()

    def zero_head(self) -> None:
        """Set the classifier to zero, as BiT fine-tuning starts (``zero_head=True``)."""
        nn.init.zeros_(self.head.conv.weight)
        nn.init.zeros_(self.head.conv.bias)

    def reset_classifier(self, num_classes: int, zero_init: bool = True) -> None:
        """Replace the classifier with a fresh ``num_classes`` head, zero-initialised by default."""
        old = self.head.conv
        self.head.conv = nn.Conv2d(self.num_features, num_classes, kernel_size=1, bias=True).to(
            device=old.weight.device, dtype=old.weight.dtype)
        self.num_classes = num_classes
        if zero_init:
            self.zero_head()

    def get_classifier(self) -> nn.Conv2d:
        return self.head.conv

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and the four stages; the pre-head feature map (not yet normalized)."""
        return self.body(self.root(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """GN, ReLU, global average pool, then the 1x1 classifier unless ``pre_logits``."""
        x = self.head.avg(self.head.relu(self.head.gn(x)))
        if pre_logits:
            return x.flatten(1)
        return self.head.conv(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
