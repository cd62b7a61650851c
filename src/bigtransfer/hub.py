"""The front door: build a registered model and load its pretrained weights or a local checkpoint into it."""

from __future__ import annotations

import os

import torch

from .models import ResNetV2, build_model, get_config
from .models.resnetv2 import WS_EPS
from .weights.loading import apply_input_stats, load_state


def create_model(
    name: str,
    pretrained: bool = False,
    num_classes: int | None = None,
    *,
    ws_eps: float = WS_EPS,
    weights: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
) -> ResNetV2:
    """Build a registered model, optionally with pretrained weights and a new ``num_classes`` head.

    ``weights`` loads a local checkpoint of any supported format instead of downloading. Without
    ``num_classes`` the checkpoint defines the head (size and values); with a ``num_classes`` that differs
    from the checkpoint's, the new head starts at zero, as BiT fine-tuning does.
    """
    model = build_model(name, num_classes, ws_eps=ws_eps, device=device)
    if pretrained or weights:
        if weights is None:
            from .weights.download import fetch_pretrained

            weights = fetch_pretrained(get_config(name))
        _, stats = load_state(model, weights, adopt_head=num_classes is None)
        apply_input_stats(model, stats)
        model.pretrained_cfg["num_classes"] = model.num_classes
    return model


__all__ = ["create_model"]
