"""Shared helpers for the ImageNet-scale tests: a folder of 'large' images (over 64 px, so they stream),
and tiny weights published under a torchvision-style name."""
import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["blue", "green", "red"]
TINY18 = {"widths": [4, 8, 8, 8], "stem_width": 4}  # a resnet18 small enough for tests
TINY_STREAM = ["model_args.widths=[4,8,8]", "model_args.stem_width=4", "data.image_size=32", "data.workers=0",
               "precision=fp32", "optim.lr=0.05", "checkpoint_minutes=0"]


def make_large_folder(root: Path, per_class: int = 6, seed: int = 0) -> Path:
    """3 classes of JPEGs 72-110 px on a side; each class tints one colour channel (learnable)."""
    rs = np.random.RandomState(seed)
    for c, name in enumerate(["red", "green", "blue"]):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = 72 + (i * 7) % 30, 80 + (i * 11) % 30
            a = rs.randint(0, 100, (h, w, 3)).astype(np.uint8)
            a[..., c] += 120
            Image.fromarray(a).save(root / name / f"{i:02d}.jpg", quality=95)
    return root


def one_thread():
    """Tiny models gain nothing from a second thread, and on a loaded 2-core machine OpenMP's
    spinning makes them ~100x slower: run these tests single-threaded (restored afterwards)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def publish_weights(model, tmp_path, monkeypatch, tag: str = "TEST"):
    """`model`'s state dict as the named source torchvision:resnet18.TAG (its URL's hash prefix right), with
    the weights cache in tmp_path: (source, file bytes, model, an opener serving the file, URLs it served)."""
    import torch

    from resnet.weights import sources as W

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    blob = buf.getvalue()
    prefix = hashlib.sha256(blob).hexdigest()[:8]
    source = W.WeightSource(f"torchvision:resnet18.{tag}", "resnet18",
                            f"https://download.pytorch.org/models/resnet18-{prefix}.pth", model_args=TINY18)
    monkeypatch.setitem(W.SOURCES, source.name, source)
    monkeypatch.setenv("RESNET_WEIGHTS", str(tmp_path / "cache"))
    calls = []

    def opener(url, timeout):
        calls.append(url)
        return io.BytesIO(blob)
    return source, blob, model, opener, calls
