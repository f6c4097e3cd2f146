import hashlib
import io

import numpy as np
import pytest
import torch
from PIL import Image

from resnet import create_model
from resnet.weights import sources as W

TINY18 = {"widths": [4, 8, 8, 8], "stem_width": 4}


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
    model = create_model("resnet18", **TINY18)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    blob = buf.getvalue()
    prefix = hashlib.sha256(blob).hexdigest()[:8]
    source = W.WeightSource("torchvision:resnet18.TEST", "resnet18",
                            f"https://download.pytorch.org/models/resnet18-{prefix}.pth", model_args=TINY18)
    monkeypatch.setitem(W.SOURCES, source.name, source)
    monkeypatch.setenv("RESNET_WEIGHTS", str(tmp_path / "cache"))
    calls = []

    def opener(url, timeout):
        calls.append(url)
        return io.BytesIO(blob)
    return source, blob, model, opener, calls
