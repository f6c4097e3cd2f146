import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imagenet_utils import TINY18, publish_weights
from resnet import create_model
from resnet.deploy.backends import inductor_cache_dir


@pytest.fixture(scope="session", autouse=True)
def private_cache_folder(tmp_path_factory):
    """Decoded images and downloads go to the cache folder: a fresh one per test session, never the user's
    (subprocesses inherit it). Compiled kernels keep the user's inductor cache: recompiling every session
    would only cost time."""
    saved = {k: os.environ.get(k) for k in ("RESNET_CACHE", "TORCHINDUCTOR_CACHE_DIR")}
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(inductor_cache_dir()))
    os.environ["RESNET_CACHE"] = str(tmp_path_factory.mktemp("resnet-cache"))
    yield Path(os.environ["RESNET_CACHE"])
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """3 classes x 16 images of 32x32: each class tints one colour channel, so it is learnable."""
    root = tmp_path_factory.mktemp("tiny")
    rs = np.random.RandomState(0)
    for c, name in enumerate(["red", "green", "blue"]):
        (root / name).mkdir()
        for i in range(16):
            a = rs.randint(0, 100, (32, 32, 3)).astype(np.uint8)
            a[..., c] += 120
            Image.fromarray(a).save(root / name / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory):
    """Compiled artefacts and ONNX files go to a temporary cache, not the user's ~/.cache/resnet."""
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESNET_CACHE", str(root))
        mp.setenv("TORCHINDUCTOR_CACHE_DIR", str(root / "inductor"))
        yield root


@pytest.fixture
def fake_source(tmp_path, monkeypatch):
    """A tiny 'resnet18' state dict published under a torchvision-style name whose hash prefix is right:
    (source, file bytes, model, an opener that serves the file, the URLs it was asked for)."""
    torch.manual_seed(0)
    return publish_weights(create_model("resnet18", **TINY18), tmp_path, monkeypatch)
