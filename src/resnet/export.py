"""Moved to resnet.deploy.export; this name keeps old imports working for one release."""
import warnings as _warnings

from .deploy.export import *  # noqa: F401,F403

_warnings.warn("resnet.export moved to resnet.deploy.export", DeprecationWarning, stacklevel=2)
