"""Moved to resnet.serve.predict; this name keeps old imports working for one release."""
import warnings as _warnings

from .serve.predict import *  # noqa: F401,F403

_warnings.warn("resnet.predict moved to resnet.serve.predict", DeprecationWarning, stacklevel=2)


# `resnet.predict` is also the Python API's function (resnet/api.py); importing this old module name
# rebinds the package attribute to the module, so the module itself calls that function.
class _CallableModule(__import__("types").ModuleType):
    def __call__(self, *args, **kwargs):
        from .api import predict

        return predict(*args, **kwargs)


__import__("sys").modules[__name__].__class__ = _CallableModule
