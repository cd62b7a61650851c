"""The BiT model family: ResNetV2 with GroupNorm and Weight Standardization."""

from .registry import (
    ARCHS,
    ModelConfig,
    arch_name,
    build_model,
    build_network,
    get_config,
    list_models,
    register_model,
)
from .resnetv2 import PreActBottleneck, ResNetV2, StdConv2d, standardize

__all__ = ["ARCHS", "ModelConfig", "PreActBottleneck", "ResNetV2", "StdConv2d", "arch_name", "build_model",
           "build_network", "get_config", "list_models", "register_model", "standardize"]


def __getattr__(name: str):
    # deprecated alias: building with weights belongs to bigtransfer.hub, which sits above this package
    if name == "create_model":
        import warnings

        from ..hub import create_model

        warnings.warn("bigtransfer.models.create_model is deprecated; use bigtransfer.create_model "
                      "(bigtransfer.hub.create_model)", DeprecationWarning, stacklevel=2)
        return create_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
