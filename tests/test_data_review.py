"""Data-layer bugs found in the third review pass, each with a test that failed before its fix.

Everything is built in tmp_path; no network."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from resnet.data import load_dataset
from resnet.data.jpeg import write_reencoded


def _tree(root, classes, n=3, size=8, seed=0):
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_reencoded_copy_keeps_class_names_with_spaces(tmp_path):
    """A class folder "golden retriever" came back from the JPEG copy as "golden_retriever" (and "a b" / "a-c"
    would swap places, moving the labels): the copy's folders are the class names themselves."""
    src = _tree(tmp_path / "src", ["a b", "a-c", "golden retriever"])
    ds = load_dataset(src, cache_dir=tmp_path / "cache")
    write_reencoded(ds, 50, tmp_path / "q50")
    back = load_dataset(tmp_path / "q50", cache_dir=tmp_path / "cache")
    assert back.classes == ds.classes == ["a b", "a-c", "golden retriever"]
    assert torch.equal(back.labels, ds.labels)
