"""Moved to resnet.deploy.benchmark; this name keeps old imports working for one release."""
import warnings as _warnings

from .deploy.benchmark import *  # noqa: F401,F403

_warnings.warn("resnet.benchmark moved to resnet.deploy.benchmark", DeprecationWarning, stacklevel=2)
