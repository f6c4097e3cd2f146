"""Experiments on trained (or fresh) networks: layer responses [ResNet Fig. 7] and gradient flow."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data import MemoryLoader, load_split
from ..files import atomic_write_text
from ..models import ResNet, ResNetConfig
from ..serve.load import load
from .figures import plot_layer_values
from .runner import markdown_table


def response_layers(model: ResNet) -> list[tuple[str, nn.Module]]:
    """The output of every 3x3 conv layer after its BN, before ReLU or the addition [ResNet §4.2, Fig. 7].

    Each block class names them (`response_layers`): bn1 and bn2 in basic and plain blocks, bn2 (the
    3x3) in bottlenecks; pre-activation blocks have no BN after a conv, so the 3x3 convs' own outputs.
    """
    return [(f"layer{s + 1}.{b}.{n}", getattr(block, n))
            for s, stage in enumerate(model.stages()) for b, block in enumerate(stage)
            for n in type(block).response_layers]


@torch.no_grad()
def layer_responses(model: ResNet, loader) -> list[float]:
    """Standard deviation of each response layer's output over all validation images, positions and channels."""
    model.eval()
    layers = response_layers(model)
    sums = torch.zeros(len(layers), 3, dtype=torch.float64)  # count, sum, sum of squares

    def hook(i):
        def fn(module, inputs, output):
            o = output.double()
            sums[i] += torch.stack([torch.tensor(o.numel(), dtype=torch.float64), o.sum(), o.square().sum()])
        return fn

    handles = [m.register_forward_hook(hook(i)) for i, (_, m) in enumerate(layers)]
    try:
        for x, _ in loader:
            model(x)
    finally:
        for h in handles:
            h.remove()
    n, s, sq = sums.unbind(1)
    return ((sq / n - (s / n).square()).clamp(min=0) * n / (n - 1)).sqrt().tolist()


def _layer_report(out_dir: Path, name: str, title: str, intro: str, series: dict, header: list[str],
                  rows: list[list]) -> dict:
    """NAME.json with the per-layer values and report.md with the table and NAME.png."""
    atomic_write_text(out_dir / f"{name}.json", json.dumps(series))
    table = markdown_table(header, rows)
    atomic_write_text(out_dir / "report.md", f"# {title}\n\n{intro}\n\n{table}\n\n![{name}]({name}.png)\n")
    return {"series": series, "out": str(out_dir)}


def _label(path: str, meta: dict, taken: dict) -> str:
    """A run folder's name (e.g. plain56-s0), else the model name; unique among those already plotted."""
    label = Path(path).name if Path(path).is_dir() else meta.get("model", Path(path).stem)
    while label in taken or f"{label} init" in taken:
        label += "'"
    return label


def _loader(meta: dict, data: str, split: str, limit: int, batch: int = 500) -> MemoryLoader:
    ds = load_split(data, split, meta.get("config"))
    if limit and len(ds) > limit:
        ds = ds.subset(range(limit))
    return MemoryLoader(ds.images, ds.labels, batch, train=False, mean=meta["mean"], std=meta["std"],
                        channels_last=False)


def responses(checkpoints: list[str], data: str, out: str = "experiments/responses", split: str = "val",
              limit: int = 5000) -> dict:
    """Fig. 7: std of layer responses by layer index (original and sorted) for each checkpoint."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    series, rows = {}, []
    for path in checkpoints:
        model, meta = load(checkpoint=path)
        label = _label(path, meta, series)
        stds = layer_responses(model, _loader(meta, data, split, limit))
        series[label] = stds
        rows.append([label, len(stds), f"{sum(stds) / len(stds):.3f}", f"{max(stds):.3f}", f"{min(stds):.3f}"])
    plot_layer_values(series, out_dir / "responses.png", "std of response",
                      "layer responses: 3x3 conv outputs after BN, before ReLU/addition")
    intro = (f"Standard deviation of each 3x3 layer's output (after BN, before the nonlinearity and the addition) "
             f"over {split} images of `{data}`. The paper finds residual functions respond less than plain layers, "
             "and less in deeper ResNets.")
    return _layer_report(out_dir, "responses", "Layer responses [ResNet §4.2, Fig. 7]", intro, series,
                         ["network", "3x3 layers", "mean std", "max std", "min std"], rows)


def gradient_norms(model: ResNet, x: torch.Tensor, y: torch.Tensor) -> list[tuple[str, float]]:
    """L2 norm of the loss gradient with respect to each conv layer's weights, input to output (train mode);
    frozen filters (a whitening stem's) have none and are left out."""
    model.train()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return [(name, float(m.weight.grad.norm())) for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and "downsample" not in name and m.weight.grad is not None]


def gradients(checkpoints: list[str], data: str, out: str = "experiments/gradients", split: str = "val",
              batch: int = 256, seed: int = 0) -> dict:
    """Gradient flow, plain vs residual: per-layer gradient norms at initialisation and after training."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    series, rows, images = {}, [], batch
    for path in checkpoints:
        trained, meta = load(checkpoint=path)
        x, y = next(iter(_loader(meta, data, split, batch, batch)))
        images = len(y)  # the split may hold fewer than `batch`
        torch.manual_seed(seed)
        fresh = ResNet(ResNetConfig(**meta["model_config"]))
        name = _label(path, meta, series)
        for when, model in (("init", fresh), ("trained", trained)):
            norms = [n for _, n in gradient_norms(model, x, y)]
            label = f"{name} {when}"
            series[label] = norms
            rows.append([label, len(norms), f"{norms[0]:.3g}", f"{norms[-1]:.3g}",
                         f"{norms[0] / max(norms[-1], 1e-30):.3g}"])
    plot_layer_values(series, out_dir / "gradients.png", "‖∂loss/∂W‖", "gradient norm by layer (input → output)",
                      sort=False, log=True)
    intro = (f"Norm of the loss gradient with respect to each conv layer's weights on one batch of {images} {split} "
             "images, at initialisation (same seed) and after training. In deep plain networks the gradient shrinks "
             "toward the input; shortcuts carry it through.")
    return _layer_report(out_dir, "gradients", "Gradient flow", intro, series,
                         ["network", "conv layers", "first layer", "last layer", "first / last"], rows)
