"""Moved to resnet.serve.predict and resnet.serve.load; this name keeps old imports working for one release."""
import warnings as _warnings

from .serve.load import class_names  # noqa: F401
from .serve.load import load as load_any  # noqa: F401
from .serve.predict import *  # noqa: F401,F403

_warnings.warn("resnet.predict moved to resnet.serve.predict (load_any: resnet.serve.load.load)", DeprecationWarning,
               stacklevel=2)
