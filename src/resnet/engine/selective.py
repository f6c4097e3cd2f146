"""Selective backprop's batch-norm statistics (`select_bn=batch`): the ranking pass records every
BatchNorm's statistics of the whole batch, and the trained part is normalised with them, so the net
does not adapt to the hard part's own statistics (which differ from the whole batch's and the data's)."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn


def _batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def recording_bn_stats(model: nn.Module):
    """Yields a dict that a forward pass inside fills: BatchNorm module -> (biased variance, mean) of its
    input over the batch and positions, in fp32, as training-mode BN normalises with them."""
    stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(module, args):
        with torch.no_grad():
            stats[module] = torch.var_mean(args[0].float(), dim=(0, 2, 3), correction=0)
    handles = [bn.register_forward_pre_hook(record) for bn in _batch_norms(model)]
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def normalising_with(stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]):
    """Inside, each recorded BatchNorm normalises with its recorded statistics (no gradient flows into
    them, and its running statistics stay: the recording pass updated them with the whole batch's)."""
    def fixed(bn, var, mean, x):
        return F.batch_norm(x, mean, var, bn.weight, bn.bias, False, 0.0, bn.eps)
    for bn, (var, mean) in stats.items():
        bn.forward = lambda x, bn=bn, var=var, mean=mean: fixed(bn, var, mean, x)
    try:
        yield
    finally:
        for bn in stats:
            del bn.forward  # back to the class's forward
