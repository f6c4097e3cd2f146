"""Moved to resnet.serve.predict and resnet.serve.load; this name keeps old imports working for one release."""
import warnings as _warnings

from .serve.load import class_names  # noqa: F401
from .serve.load import load as load_any  # noqa: F401
from .serve.predict import *  # noqa: F401,F403
from .api import predict as _api_predict

_warnings.warn("resnet.predict moved to resnet.serve.predict (load_any: resnet.serve.load.load)", DeprecationWarning,
               stacklevel=2)

# `resnet.predict` is also the Python API's function (resnet/api.py); importing this old module name
# rebinds the package attribute to the module, so the module itself calls that function.
class _CallableModule(__import__("types").ModuleType):
    def __call__(self, *args, **kwargs):
        return _api_predict(*args, **kwargs)


__import__("sys").modules[__name__].__class__ = _CallableModule
