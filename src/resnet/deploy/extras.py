"""The optional packages of `resnet export` / `resnet benchmark` (the `deploy` extra): whether they
are installed, a one-line error naming the extra when they are not, and quiet imports."""
from __future__ import annotations

import contextlib
import importlib.util
import logging

from ..errors import MissingExtraError
from ..version import install_hint

ONNX = ("onnx", "onnxscript")  # torch.onnx's exporter (torch.export based) needs onnxscript
ONNXRUNTIME = ("onnxruntime",)
TORCHAO = ("torchao",)


def missing(*modules: str) -> list[str]:
    """The modules of `modules` that cannot be imported here."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def require(what: str, *modules: str, extra: str = "deploy") -> None:
    """Raise MissingExtraError (one line: what needs which packages, and the pip command) unless
    every module in `modules` is installed."""
    absent = missing(*modules)
    if absent:
        raise MissingExtraError(f"{what} needs {', '.join(absent)}, which {'is' if len(absent) == 1 else 'are'} "
                                f"not installed: {install_hint(extra)}")


@contextlib.contextmanager
def quiet_loggers(*names: str, level: int = logging.ERROR):
    """Silence import-time chatter of optional packages (torchao's CUDA-only extensions failing to
    load on a CPU build, torch.onnx's notes about torchvision ops): nothing the user can act on."""
    loggers = [logging.getLogger(n) for n in names]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, old):
            lg.setLevel(lv)
