"""Helpers shared by the model tests and tools/make_model_fixtures.py."""
import numpy as np
import torch

import resnet
from resnet.models import get_entry


def small_size(name: str) -> int:
    """A small input that still leaves >= 2x2 maps at the last stage: fast tests for deep nets."""
    return 64 if get_entry(name).input_size == 224 else 16


def regression_output(name: str) -> torch.Tensor:
    """Train-mode logits of a seed-0 model on a fixed input (train mode: BN keeps deep untrained nets finite).

    Computed in float64: a deep random net (plain-110, ResNet-1001) amplifies fp32 rounding, so AVX2 and
    AVX-512 kernels (which sum in other orders) gave logits 0.1 apart in fp32; in fp64 they agree to 1e-9.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same summation order as when the reference was written
    try:
        torch.manual_seed(0)
        model = resnet.create_model(name).double().train()  # initialised in fp32, as always
        size = small_size(name)
        x = torch.from_numpy(np.random.RandomState(2).standard_normal((2, 3, size, size)))  # float64
        with torch.no_grad():
            return model(x)
    finally:
        torch.set_num_threads(threads)
