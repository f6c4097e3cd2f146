"""Moved to resnet.serve.predict; this name keeps old imports working for one release."""
import warnings as _warnings

from .serve.predict import *  # noqa: F401,F403

_warnings.warn("resnet.predict moved to resnet.serve.predict", DeprecationWarning, stacklevel=2)
