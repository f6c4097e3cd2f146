"""Moved to resnet.deploy.export; this name keeps old imports working for one release."""
import warnings as _warnings

from .deploy import export as _export
from .deploy.export import *  # noqa: F401,F403
from .deploy.parity import ATOL, RTOL  # noqa: F401
from .deploy.parity import check_close as compare_outputs  # noqa: F401
from .errors import ExportParityError  # noqa: F401
from .serve.load import load_spec

_warnings.warn("resnet.export moved to resnet.deploy.export", DeprecationWarning, stacklevel=2)


def export_model(spec: str, fmt: str, out, **options) -> dict:
    """Export a checkpoint or registered name (the model is now loaded by `resnet.serve.load.load_spec`)."""
    return _export.export_model(*load_spec(spec), fmt, out, **options)
