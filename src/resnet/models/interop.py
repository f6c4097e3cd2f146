"""Moved to resnet.weights.state_dict; this name keeps old imports working for one release."""
import warnings as _warnings

from ..weights.state_dict import *  # noqa: F401,F403

_warnings.warn("resnet.models.interop moved to resnet.weights.state_dict", DeprecationWarning, stacklevel=2)
