"""BN folding and fx unsharing: the graph rewrites every inference backend starts from.

`fold_bn(model)` returns an eval-mode copy with each conv -> BN pair folded into the conv (exact
to float32 rounding); `unshare_modules(model)` gives every module call its own module, as PT2E
quantizers need.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class _Tracer(torch.fx.Tracer):
    """fx's tracer, with every BatchNorm2d kind a leaf: a ghost BN (models/layers.py) is a BatchNorm2d
    subclass from outside torch.nn, which fx would otherwise trace into and the pairs below would miss."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, nn.BatchNorm2d) or super().is_leaf_module(m, qualname)


def _trace(model: nn.Module) -> torch.fx.GraphModule:
    return torch.fx.GraphModule(model, _Tracer().trace(model), type(model).__name__)


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, bn) module names where a BatchNorm2d reads a Conv2d's output and nothing else does.

    Found by tracing the forward pass (torch.fx), so every block type is covered without a table:
    conv-BN in basic/bottleneck/plain blocks, stems and projection shortcuts, and the conv-BN
    pairs inside pre-activation units (conv1 -> bn2, ...); a BN that precedes its conv (the
    pre-activation BN-ReLU-conv) is left alone, since a ReLU sits between them.
    """
    graph = _trace(model).graph
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(model.get_submodule(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0]
        if (isinstance(src, torch.fx.Node) and src.op == "call_module" and len(src.users) == 1
                and isinstance(model.get_submodule(src.target), nn.Conv2d)
                and calls[src.target] == 1 and calls[node.target] == 1):
            pairs.append((src.target, node.target))
    return pairs


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """conv <- BN(conv) in eval mode: W' = W * g/sqrt(v+eps), b' = (b - m) * g/sqrt(v+eps) + beta.

    Computed in float64 so the folded network matches the original to float32 rounding."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    dtype = conv.weight.dtype
    var, mean = bn.running_var.double(), bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(var)
    conv.weight.copy_((conv.weight.double() * scale.view(-1, 1, 1, 1)).to(dtype))
    new_bias = ((bias - mean) * scale + beta).to(dtype)
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias, requires_grad=conv.weight.requires_grad)
    else:
        conv.bias.copy_(new_bias)


def fold_bn(model: nn.Module, inplace: bool = False) -> nn.Module:
    """The model in eval mode with every conv -> BN pair folded into the conv (BN becomes Identity).

    Exact up to float32 rounding; the model keeps its class and methods (forward_features, ...)."""
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    for conv_name, bn_name in conv_bn_pairs(model):
        fold_conv_bn(model.get_submodule(conv_name), model.get_submodule(bn_name))
        parent, _, attr = bn_name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, nn.Identity())
    return model


def unshare_modules(model: nn.Module) -> torch.fx.GraphModule:
    """The model as an fx GraphModule in which every module call has its own module.

    The blocks reuse one nn.ReLU for both activations (as torchvision's do); PT2E quantizers find
    conv-ReLU patterns by source module, and a module called twice makes one pattern with two
    outputs, which X86InductorQuantizer rejects. Copies of parameter-free modules cost nothing."""
    gm = _trace(model)
    seen: set[str] = set()
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        if node.target in seen:
            module = gm.get_submodule(node.target)
            if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
                raise ValueError(f"module {node.target} with weights is called twice; cannot unshare it")
            new = f"{node.target.replace('.', '_')}_call{len(seen)}"
            gm.add_submodule(new, copy.deepcopy(module))
            node.target = new
            node.meta.pop("nn_module_stack", None)  # else export keeps the shared module's name
        seen.add(node.target)
    gm.recompile()
    return gm
