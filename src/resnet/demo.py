"""Moved to resnet.experiments.demo; this name keeps old imports working for one release."""
import warnings as _warnings

from .experiments.demo import *  # noqa: F401,F403

_warnings.warn("resnet.demo moved to resnet.experiments.demo", DeprecationWarning, stacklevel=2)
