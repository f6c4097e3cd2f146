"""The model zoo: blocks, the ResNet skeleton and registered variants."""
from .blocks import BLOCKS
from .resnet import ResNet, ResNetConfig
from .zoo import build_resnet, check_model_args, create_model, get_entry, list_models

__all__ = ["BLOCKS", "ResNet", "ResNetConfig", "build_resnet", "check_model_args", "create_model", "get_entry", "list_models"]
