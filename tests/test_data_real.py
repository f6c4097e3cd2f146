"""The shared CIFAR-10 JPEG archive, when present (skipped otherwise). Reads its member list
(one pass over 16 MB, ~2 s) and decodes a few images; the full decode is left to benchmarks."""
from __future__ import annotations

from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from resnet.data import cifar, memory
from resnet.data.folder import decode_image, iter_encoded, scan

ARCHIVE = (Path(__file__).parents[1] / "../shared/data/cifar10-train-jpg.tar.gz").resolve()
pytestmark = pytest.mark.skipif(not ARCHIVE.is_file(), reason=f"{ARCHIVE} not present")


def test_archive_layout_and_first_images():
    index = scan(ARCHIVE, "train")
    assert index.prefix == "train" and index.classes == list(cifar.CIFAR10_CLASSES)
    assert np.bincount(index.targets()).tolist() == [5000] * 10
    for name, data, label in islice(iter_encoded(index), 3):
        img = decode_image(data, name)
        assert img.size == (32, 32) and img.mode == "RGB" and label == 0


def test_cache_never_goes_into_the_data_folder():
    assert memory.cache_dirs(ARCHIVE) == [cifar.default_cache_dir()] and ARCHIVE.parent not in memory.cache_dirs(ARCHIVE)
