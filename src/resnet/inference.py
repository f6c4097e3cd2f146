"""Moved to resnet.deploy (backends, fold, parity) and resnet.serve.load; this name keeps old
imports working for one release."""
import warnings as _warnings

from .deploy.backends import *  # noqa: F401,F403
from .deploy.benchmark import DEFAULT_BACKENDS, reestimate_bn  # noqa: F401
from .deploy.choose import inference_model  # noqa: F401
from .deploy.extras import quiet_loggers  # noqa: F401
from .deploy.fold import *  # noqa: F401,F403
from .deploy.parity import compare, compare_with_fp32, random_images, real_images  # noqa: F401
from .files import cache_root as cache_dir  # noqa: F401
from .serve.load import load_spec as load_for_inference  # noqa: F401

_warnings.warn("resnet.inference moved to resnet.deploy.backends, resnet.deploy.fold, resnet.deploy.parity and "
               "resnet.serve.load", DeprecationWarning, stacklevel=2)


def agreement(reference_logits, logits) -> float:
    """Fraction of inputs whose top-1 class is the same in both (now `deploy.parity.compare`)."""
    return compare(reference_logits, logits)["agreement"]
