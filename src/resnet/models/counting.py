"""Parameters and multiply-accumulates of one model, counted by PyTorch itself (one source of truth).

MACs come from `torch.utils.flop_counter.FlopCounterMode` (2 FLOPs per MAC; convolutions and
matrix products only, as the papers count), on the meta device: no memory, no real compute.
The registry-wide tables (`resnet models`, `resnet summary`) are in complexity.py; this module
needs no registry, so the network itself (its model card) can count itself.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..errors import ConfigError


@dataclass
class StageInfo:
    stage: str
    output_size: list[int]  # [C, H, W]
    blocks: int
    params: int
    macs: int


@dataclass
class Complexity:
    name: str
    image_size: int
    params: int
    macs: int
    stages: list[StageInfo]

    def to_dict(self) -> dict:
        return asdict(self)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _stage_parts(model: nn.Module) -> list[tuple[str, nn.Module, int]]:
    """(label, module, blocks) for stem, stages and head: the rows of the paper's Table 1."""
    stem = nn.ModuleList([m for m in (model.conv1, model.bn1, model.maxpool) if m is not None])
    head = nn.ModuleList([m for m in (model.final_bn, model.fc) if m is not None])
    parts = [("stem", stem, 0)]
    parts += [(f"layer{i + 1}", s, len(s)) for i, s in enumerate(model.stages())]
    parts.append(("head", head, 0))
    return parts


def measure(model: nn.Module, image_size: int, name: str | None = None, in_chans: int | None = None) -> Complexity:
    """Per-stage output size, parameters and MACs of one image of `image_size` x `image_size`."""
    meta_model = copy.deepcopy(model).to("meta").eval()  # also fine for a model built on meta
    in_chans = in_chans or meta_model.config.in_chans
    x = torch.empty(1, in_chans, image_size, image_size, device="meta")
    shapes: dict[str, list[int]] = {}
    hooks = [s.register_forward_hook(lambda m, i, o, k=f"layer{j + 1}": shapes.__setitem__(k, list(o.shape[1:])))
             for j, s in enumerate(meta_model.stages())]
    hooks.append(meta_model.maxpool.register_forward_hook(lambda m, i, o: shapes.__setitem__("stem", list(o.shape[1:]))))
    hooks.append(meta_model.fc.register_forward_hook(lambda m, i, o: shapes.__setitem__("head", list(o.shape[1:]))))
    counter = FlopCounterMode(display=False, depth=None)
    try:
        with counter, torch.no_grad():
            meta_model(x)
    except RuntimeError as e:  # (a pooling's "Output size is too small"): one line, not a traceback from deep inside
        if "too small" not in str(e):
            raise
        label = name or getattr(model, "model_name", type(model).__name__)
        raise ConfigError(f"image size {image_size} is too small for {label}: its feature maps shrink to nothing "
                          f"before the classifier; give a larger --image-size (the network was made for "
                          f"{meta_model.config.input_size})") from None
    finally:
        for h in hooks:
            h.remove()
    by_module = counter.get_flop_counts()
    root = type(meta_model).__name__
    stages = []
    for label, module, blocks in _stage_parts(model):
        if label == "stem":
            keys = [f"{root}.conv1"]
        elif label == "head":
            keys = [f"{root}.fc"]
        else:
            keys = [f"{root}.{label}"]
        flops = sum(sum(by_module.get(k, {}).values()) for k in keys)
        stages.append(StageInfo(label, shapes.get(label, []), blocks, count_params(module), flops // 2))
    return Complexity(name or getattr(model, "model_name", root), image_size, count_params(model),
                      counter.get_total_flops() // 2, stages)


def check_image_size(model: nn.Module, image_size: int) -> None:
    """A ConfigError (one line) when `image_size` x `image_size` inputs shrink to nothing inside `model`
    (a meta-device pass: no memory, no compute)."""
    measure(model, image_size)
