"""Deterministic weights and input shared by the interop fixture generator and tests.

Only numpy's legacy ``RandomState`` is used: its streams are frozen across numpy
versions, so a test running under a different torch/numpy reproduces exactly the
same tensors as ``tools/make_interop_fixtures.py`` did when writing the fixtures.
This module must import nothing but numpy and torch.
"""
import numpy as np
import torch


def deterministic_state_dict(state_dict):
    """Fill every floating tensor from np.random.RandomState(0), keys in sorted order."""
    rs = np.random.RandomState(0)
    out = {}
    for key in sorted(state_dict):
        t = state_dict[key]
        if not t.is_floating_point():
            out[key] = t.clone(); continue
        shape = tuple(t.shape)
        if t.ndim >= 2:
            fan_in = int(np.prod(shape[1:]))
            a = rs.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        elif key.endswith("running_var"):
            a = rs.uniform(0.5, 1.5, shape)
        elif key.endswith("weight"):
            a = rs.uniform(0.1, 0.3, shape)
        else:
            a = rs.standard_normal(shape) * 0.1
        out[key] = torch.from_numpy(a.astype(np.float32))
    return out


def deterministic_input():
    return torch.from_numpy(np.random.RandomState(1).standard_normal((2, 3, 64, 64)).astype(np.float32))
