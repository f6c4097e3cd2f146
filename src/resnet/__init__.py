"""Deep residual networks (He et al. 2015, 2016) on PyTorch.

The names below load on first use (PEP 562), so that `python -m resnet` can tune the allocator and
relaunch itself before PyTorch is imported (allocator.py)."""
from importlib import import_module

from .version import __version__

_EXPORTS = {"ResNetError": ".errors", "ResNet": ".models", "ResNetConfig": ".models", "build_resnet": ".models",
            "create_model": ".models", "list_models": ".models", "from_pretrained": ".weights.pretrained",
            "load_weights": ".weights.state_dict",
            # the Python API: the functions the command line calls
            "Run": ".api", "train": ".api", "evaluate": ".api", "predict": ".api"}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'resnet' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
