import numpy as np
import pytest
from PIL import Image


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
