"""Moved to resnet.data.transforms (the one set of PIL transforms); kept for old imports, one release."""
import warnings as _warnings

from .transforms import *  # noqa: F401,F403
from .transforms import interpolation, lighting_offset, load_rgb, normalize_batch, rrc_box  # noqa: F401

_warnings.warn("resnet.data.presets moved to resnet.data.transforms", DeprecationWarning, stacklevel=2)
