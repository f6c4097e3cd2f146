"""Where the toolkit keeps what it fetches or builds once (decoded datasets, downloaded CIFAR
archives, compiled kernels): the one cache root."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$RESNET_CACHE`` if set, else ``$XDG_CACHE_HOME/resnet``, else ``~/.cache/resnet``."""
    env = os.environ.get("RESNET_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "resnet"
