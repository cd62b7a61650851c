"""The front door: build a registered model and load its pretrained weights or a local checkpoint into it."""

from __future__ import annotations

import os

import torch

from .models import ResNetV2, build_model, get_config
from .models.resnetv2 import WS_EPS
from .weights.loading import load_pretrained


def create_model(
    name: str,
    pretrained: bool = False,
    num_classes: int | None = None,
    *,
    ws_eps: float = WS_EPS,
    weights: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
) -> ResNetV2:
    """A registered model, with its pretrained weights (downloaded, or the local checkpoint ``weights``) when asked.
    Without ``num_classes`` the checkpoint defines the head; a head of another size starts at zero, as in BiT."""
    model = build_model(name, num_classes, ws_eps=ws_eps, device=device)
    if pretrained or weights:
        load_pretrained(model, get_config(name), weights, adopt_head=num_classes is None)
        model.pretrained_cfg["num_classes"] = model.num_classes
    return model


__all__ = ["create_model"]
