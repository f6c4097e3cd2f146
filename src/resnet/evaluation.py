"""Moved to resnet.serve.evaluate; this name keeps old imports working for one release."""
import warnings as _warnings

from .serve.evaluate import *  # noqa: F401,F403

_warnings.warn("resnet.evaluation moved to resnet.serve.evaluate", DeprecationWarning, stacklevel=2)
