"""Deep residual networks (He et al. 2015, 2016) on PyTorch."""
from .errors import ResNetError
from .models import ResNet, ResNetConfig, build_resnet, create_model, list_models
from .version import __version__
from .weights.pretrained import from_pretrained
from .weights.state_dict import load_weights
from .api import Run, evaluate, predict, train  # the Python API: the functions the command line calls

__all__ = ["ResNet", "ResNetConfig", "ResNetError", "build_resnet", "create_model", "from_pretrained", "list_models",
           "load_weights", "Run", "train", "evaluate", "predict", "__version__"]
