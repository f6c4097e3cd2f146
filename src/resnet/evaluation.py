"""Moved to resnet.serve.evaluate (one `run_eval` for every kind of data); this name keeps old
imports working for one release."""
import warnings as _warnings

from .data import load_split
from .serve.evaluate import *  # noqa: F401,F403

_warnings.warn("resnet.evaluation moved to resnet.serve.evaluate", DeprecationWarning, stacklevel=2)


def eval_data(meta: dict, path: str, split: str, cache_dir=None):
    """The in-memory images of `split` (`val`: the run's hold-out): now `resnet.data.load_split`."""
    return load_split(path, split, meta.get("config"), cache_dir)
