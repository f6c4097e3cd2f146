"""The model zoo: blocks, the ResNet skeleton and registered variants."""
from .blocks import BLOCKS
from .resnet import ResNet, ResNetConfig
from .zoo import build_resnet, create_model, get_entry, list_models

__all__ = ["BLOCKS", "ResNet", "ResNetConfig", "build_resnet", "create_model", "get_entry", "list_models"]
