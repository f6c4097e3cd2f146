"""Moved to resnet.deploy.backends and resnet.deploy.fold; this name keeps old imports working for one release."""
import warnings as _warnings

from .deploy.backends import *  # noqa: F401,F403
from .deploy.fold import *  # noqa: F401,F403

_warnings.warn("resnet.inference moved to resnet.deploy.backends and resnet.deploy.fold", DeprecationWarning, stacklevel=2)
