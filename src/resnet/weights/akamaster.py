"""akamaster's pretrained CIFAR-10 ResNets, loaded into this toolkit's own resnet20 ... resnet1202.

The files released with github.com/akamaster/pytorch_resnet_cifar10 (BSD 2-clause) are legacy
torch.save pickles of `{"best_prec1": float, "state_dict": ...}` with CUDA tensors, every key
prefixed `module.` (DataParallel), the classifier named `linear`, and no BN `num_batches_tracked`.
`torch.load(weights_only=True)` reads them; the keys map one to one once `linear` reads `fc`.

One difference in the network itself: both are option A, but akamaster's shortcut puts the zero
channels on both sides of the subsampled identity (`F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4,
planes // 4))`) and this toolkit's after it (as fb.resnet.torch). Loaded as they are, the outputs
would disagree. Every layer is linear in the channel order (convs, BN, ReLU, the addition, pooling),
so permuting each stage's channels at load time gives exactly akamaster's function in the toolkit's
standard network: same model name, same config, export, folding and fine-tuning unchanged.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from .preprocess import Preprocess
from .sources import WeightSource, register
from ..errors import WeightsError
from .state_dict import clean_keys, compare_state_dicts, format_problems

BASE = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
# depth -> (released file, its sha256 prefix in the name; published CIFAR-10 test error %)
FILES = {20: ("resnet20-12fca82f.th", 8.27), 32: ("resnet32-d509ac18.th", 7.37), 44: ("resnet44-014dd654.th", 6.90),
         56: ("resnet56-4bfd9763.th", 6.61), 110: ("resnet110-1d1ed7c2.th", 6.32), 1202: ("resnet1202-f3b1deed.th", 6.18)}
# Trained on 32x32 images normalised with ImageNet's mean and std (akamaster's trainer.py), not CIFAR's.
PREPROCESS = Preprocess(resize=32, crop=32)  # Preprocess's mean/std are ImageNet's

register(*[WeightSource(f"akamaster:resnet{d}", f"resnet{d}", BASE + f, PREPROCESS, num_classes=10,
                        acc1=round(100 - err, 2), dataset="CIFAR-10", license="BSD-2-Clause", classes="cifar10",
                        layout="akamaster", notes=f"published test error {err}%")
           for d, (f, err) in FILES.items()])


def is_akamaster(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """akamaster's layout: a `linear` classifier where torchvision's layout has `fc`."""
    keys = clean_keys(state_dict)
    return "linear.weight" in keys and "fc.weight" not in keys


def rename(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip `module.`, read `linear` as `fc`; tensors to the CPU (the files hold CUDA tensors)."""
    return {("fc." + k[len("linear."):] if k.startswith("linear.") else k): v.cpu()
            for k, v in clean_keys(state_dict).items()}


def stream_orders(stem_width: int, widths) -> list[torch.Tensor]:
    """For the stem and each stage, akamaster's channel index of each of the toolkit's channels.

    A stage that widens the stream from c to w puts the previous stream at channels p..p+c-1 of
    its shortcut (p = w // 4 zero channels before, p after), the toolkit at 0..c-1 (zeros after)."""
    order = torch.arange(stem_width)
    orders = [order]
    for w in widths:
        extra = w - len(order)
        if extra:
            p = w // 4
            if extra != 2 * p:
                raise WeightsError(f"akamaster's option A pads {p} channels on each side, which cannot widen "
                                   f"{len(order)} channels to {w}")
            order = torch.cat([order + p, torch.arange(p), torch.arange(p + len(order), w)])
        orders.append(order)
    return orders


def _orders_by_key(model: nn.Module) -> dict[str, tuple[torch.Tensor | None, torch.Tensor | None]]:
    """key prefix -> (order of its output channels, order of its input channels): the tensors that
    write into or read from a stage's residual stream. Everything else is internal to a block."""
    cfg = model.config
    orders = stream_orders(cfg.stem_width, cfg.widths)
    out = {"conv1.": (orders[0], None), "bn1.": (orders[0], None), "fc.": (None, orders[-1])}
    for s, n in enumerate(cfg.layers, start=1):
        for j in range(n):
            pre = f"layer{s}.{j}."
            out[pre + "conv1."] = (None, orders[s] if j else orders[s - 1])
            out[pre + "conv2."] = (orders[s], None)
            out[pre + "bn2."] = (orders[s], None)
    return out


def _check_network(model: nn.Module) -> None:
    cfg = model.config
    if (cfg.block, cfg.shortcut, cfg.stem) != ("basic", "A", "cifar"):
        raise WeightsError(f"akamaster's weights are CIFAR ResNets with basic blocks and option-A shortcuts; "
                           f"this model has block={cfg.block}, shortcut={cfg.shortcut}, stem={cfg.stem}")


def to_toolkit(state_dict: Mapping[str, torch.Tensor], model: nn.Module, origin: str = "akamaster's weights"
               ) -> dict[str, torch.Tensor]:
    """akamaster's state dict as the toolkit's, for `model`: every tensor used, none invented (the
    BN counters, which the files lack, keep the model's own), each stage's channels permuted. The classifier
    may differ from the model's (another number of classes, or none): it is converted all the same and
    `load_weights` keeps the model's fresh head, as for fine-tuning from any other layout."""
    _check_network(model)
    given = rename(state_dict)
    missing, unexpected, mismatched = compare_state_dicts(model.state_dict(), given)
    unexpected = [k for k in unexpected if not k.startswith("fc.")]
    mismatched = [m for m in mismatched if not m[0].startswith("fc.")]
    if missing or unexpected or mismatched:
        raise WeightsError(format_problems(missing, unexpected, mismatched, origin))
    by_prefix = _orders_by_key(model)
    out = {}
    for key, tensor in given.items():
        out_order, in_order = by_prefix.get(key.rsplit(".", 1)[0] + ".", (None, None))
        if out_order is not None:
            tensor = tensor.index_select(0, out_order)
        if in_order is not None and tensor.ndim > 1:  # fc.bias has no input channels
            tensor = tensor.index_select(1, in_order)
        out[key] = tensor.contiguous()
    return out
