"""The BiT model family: ResNetV2 with GroupNorm and Weight Standardization."""

from .registry import ARCHS, ModelConfig, create_model, get_config, list_models, register_model
from .resnetv2 import PreActBottleneck, ResNetV2, StdConv2d, standardize

__all__ = ["ARCHS", "ModelConfig", "PreActBottleneck", "ResNetV2", "StdConv2d", "create_model", "get_config",
           "list_models", "register_model", "standardize"]
