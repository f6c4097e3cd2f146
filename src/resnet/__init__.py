"""Deep residual networks (He et al. 2015, 2016) on PyTorch."""
from .models import ResNet, ResNetConfig, build_resnet, create_model, list_models
from .weights.state_dict import load_weights
from .api import Run, evaluate, predict, train  # the Python API (its imports are deferred to the call)

__version__ = "0.1.0"
__all__ = ["ResNet", "ResNetConfig", "build_resnet", "create_model", "list_models", "load_weights", "Run", "train",
           "evaluate", "predict", "__version__"]
