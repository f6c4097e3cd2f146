"""Moved to resnet.engine.plots; this name keeps old imports working for one release."""
import warnings as _warnings

from .engine.plots import *  # noqa: F401,F403

_warnings.warn("resnet.plots moved to resnet.engine.plots", DeprecationWarning, stacklevel=2)
