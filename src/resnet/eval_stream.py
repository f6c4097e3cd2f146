"""Moved to resnet.serve.evaluate (one `run_eval` for in-memory and streamed data); this name keeps
old imports working for one release."""
import warnings as _warnings

from .serve.evaluate import *  # noqa: F401,F403
from .serve.evaluate import class_mapping as label_map  # noqa: F401
from .serve.evaluate import eval_dataset, run_eval

_warnings.warn("resnet.eval_stream moved to resnet.serve.evaluate", DeprecationWarning, stacklevel=2)


def eval_folder(meta: dict, data: str, split: str, test: str, workers: int = -1):
    """The images to score, with this module's old signature (now `serve.evaluate.eval_dataset`)."""
    return eval_dataset(meta, data, split, workers, test)


def run_eval_stream(data: str, checkpoint=None, weights=None, model=None, **options) -> dict:
    """`run_eval` with the data first, as this module had it."""
    return run_eval(checkpoint, data, weights=weights, model=model, **options)
