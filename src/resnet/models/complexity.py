"""Parameters and MACs of registered models, as tables (`resnet models`, `resnet summary`).

The counting itself is counting.py (re-exported here: `measure`, `count_params`, `Complexity`).
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from .blocks import block_class
from .counting import Complexity, StageInfo, count_params, measure  # noqa: F401 - re-exported
from .zoo import create_model, get_entry, list_models


def format_table(c: Complexity) -> str:
    """A Table 1-style text table: stage, output size, blocks, parameters, MACs, then totals."""
    rows = [("stage", "output (CxHxW)", "blocks", "params", "MACs")]
    for s in c.stages:
        rows.append((s.stage, "x".join(map(str, s.output_size)), str(s.blocks or ""), f"{s.params:,}", f"{s.macs / 1e6:,.1f} M"))
    rows.append(("total", "", str(sum(s.blocks for s in c.stages)), f"{c.params:,}", f"{c.macs / 1e9:.3f} G"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [f"{c.name} at {c.image_size}x{c.image_size}"]
    for i, r in enumerate(rows):
        lines.append("  ".join(v.ljust(w) if j < 2 else v.rjust(w) for j, (v, w) in enumerate(zip(r, widths))))
        if i == 0 or i == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def measure_registered(name: str, image_size: int | None = None) -> Complexity:
    """`measure` of a registered model at `image_size` (default: its native size), built on the meta
    device: sizes and MACs need shapes, not memory or initialisation."""
    entry = get_entry(name)
    with torch.device("meta"):
        model = create_model(name)
    return measure(model, image_size or entry.input_size, name)


def model_rows(pattern: str = "*") -> list[dict]:
    """`resnet models`: every registered model matching `pattern`, with its size and MACs."""
    rows = []
    for name in list_models(pattern):
        entry, c = get_entry(name), measure_registered(name)
        rows.append(dict(name=name, depth=entry.config.depth, block=entry.config.block, shortcut=entry.config.shortcut,
                         input_size=entry.input_size, params=c.params,
                         macs=c.macs, paper=entry.paper))
    return rows


def format_rows(rows: list[dict]) -> str:
    """The `resnet models` table; plain nets show no shortcut option."""
    lines = [f"{'name':<20}{'depth':>6}  {'block':<18}{'shortcut':<9}{'input':>6}{'params':>14}{'MACs':>12}  paper"]
    for r in rows:
        lines.append(f"{r['name']:<20}{r['depth']:>6}  {r['block']:<18}{'-' if block_class(r['block']).plain else r['shortcut']:<9}"
                     f"{r['input_size']:>6}{r['params'] / 1e6:>12.3f} M{r['macs'] / 1e9:>10.3f} G  {r['paper']}")
    return "\n".join(lines)


def train_flops_per_image(name: str, model_args: dict, image_size: int | tuple[int, int], whiten_bias: bool = True,
                          backward: bool = True) -> float:
    """FLOPs of one training step per image: the forward pass and the backward pass as autograd runs it
    (input and weight gradients; frozen weights, like a whitening stem's, get none), convolutions and
    matrix products counted by FlopCounterMode on the meta device (no memory, no compute). Training
    budgets in FLOPs compare across machines, unlike seconds (the speedruns' PFLOP figures).
    whiten_bias=False: with a whitening stem's bias frozen (`whiten_bias_epochs`).
    backward=False: the forward pass alone, without autograd (selective backprop's ranking pass).
    image_size: the side of square images, or (height, width)."""
    with torch.device("meta"):
        model = create_model(name, **model_args).train()
    if not whiten_bias:
        model.train_whiten_bias(False)
    in_chans = model_args.get("in_chans", model.config.in_chans)
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    x = torch.empty(2, in_chans, h, w, device="meta")
    counter = FlopCounterMode(display=False, depth=None)
    with counter:
        if backward:
            model(x).float().sum().backward()
        else:
            with torch.no_grad():
                model(x)
    return counter.get_total_flops() / 2
