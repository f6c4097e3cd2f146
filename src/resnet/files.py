"""Where the toolkit keeps what it fetches or builds once (decoded datasets, downloaded CIFAR
archives, compiled kernels): the one cache root."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$RESNET_CACHE`` if set, else ``~/.cache/resnet``."""
    env = os.environ.get("RESNET_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "resnet"
