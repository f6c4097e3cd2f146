"""The toolkit's errors: one base class, so a caller (and `resnet`'s command line) can tell an
expected failure (bad input, a missing download, a broken file) from a bug.

Every class also derives from the builtin it replaced (ValueError, RuntimeError, OSError), so
code that caught those keeps working.
"""
from __future__ import annotations


class ResNetError(Exception):
    """An expected failure whose message says what went wrong and what to do; the command line
    prints it as one line (set RESNET_DEBUG=1 for the traceback)."""


class ConfigError(ResNetError, ValueError):
    """An unknown or ill-typed configuration key, value or command-line option."""


class DataError(ResNetError, ValueError):
    """A dataset that cannot be read as asked: its layout, an image, a CIFAR file, a split."""


class WeightsError(ResNetError, ValueError):
    """A weights file or state dict that does not fit the model (missing/unexpected/mis-shaped keys)."""


class WeightsUnavailableError(ResNetError, RuntimeError):
    """A named weights source is neither cached nor downloadable (offline)."""


class CheckpointError(WeightsError):
    """A checkpoint or run folder that cannot be read or continued (a weights file with a description)."""


class BackendUnavailable(ResNetError, RuntimeError):
    """An inference backend whose packages are not installed (or which this platform cannot run)."""


class MissingExtraError(ResNetError, ImportError):
    """An optional package is not installed; the message names the extra that provides it."""


class ExportParityError(ResNetError, RuntimeError):
    """An exported model does not compute what the PyTorch model computes."""


class UnknownArgumentError(ConfigError, TypeError):
    """A keyword a builder does not take (e.g. a misspelt `model_args` key)."""
