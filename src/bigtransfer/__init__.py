"""bigtransfer: Big Transfer (BiT) in PyTorch."""

from .errors import BitError
from .models import ModelConfig, ResNetV2, create_model, get_config, list_models

__version__ = "0.1.0"
__all__ = ["BitError", "ModelConfig", "ResNetV2", "create_model", "get_config", "list_models", "__version__"]
