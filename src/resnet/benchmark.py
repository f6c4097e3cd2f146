"""Moved to resnet.deploy.benchmark; this name keeps old imports working for one release."""
import warnings as _warnings

from .deploy import benchmark as _benchmark
from .deploy.benchmark import *  # noqa: F401,F403
from .serve.load import load_spec

_warnings.warn("resnet.benchmark moved to resnet.deploy.benchmark", DeprecationWarning, stacklevel=2)


def benchmark(spec: str, *args, **options):
    """Benchmark a checkpoint or registered name (the model is now loaded by `resnet.serve.load.load_spec`)."""
    return _benchmark.benchmark(*load_spec(spec), *args, **options)
