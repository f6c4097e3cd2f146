"""`resnet weights`: every named source with what a user chooses by (one row each)."""
from __future__ import annotations

import fnmatch

import torch

from ..models import create_model
from .sources import SOURCES, WeightSource, find_cached
from ..errors import WeightsError


def _size(source: WeightSource) -> tuple[int, int]:
    """(parameters, bytes of the float32 state dict): the file is that plus a few kB of keys."""
    with torch.device("meta"):
        model = create_model(source.model, **{**source.model_args, "num_classes": source.num_classes})
    params = sum(p.numel() for p in model.parameters())
    return params, sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _cached(source: WeightSource) -> tuple[str | None, str | None]:
    """(the cached file, or None; a problem with the file of that name, or None)."""
    try:
        path = find_cached(source)
    except WeightsError as e:
        return None, str(e)
    return (str(path) if path else None), None


def matches(name: str, pattern: str) -> bool:
    """A glob (`akamaster*`, `*resnet50*`, as `list_models` takes) when it has a wildcard, else a substring."""
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return pattern in name


def rows(pattern: str = "") -> list[dict]:
    """One dict per named source whose name matches `pattern` (see `matches`)."""
    out = []
    for name, s in SOURCES.items():
        if not matches(name, pattern):
            continue
        params, size = _size(s)
        cached, problem = _cached(s)
        p = s.preprocess
        out.append({"name": name, "model": s.model, "dataset": s.dataset, "num_classes": s.num_classes,
                    "acc1": s.acc1, "acc5": s.acc5, "params": params, "size_mb": round(size / 1e6, 1),
                    "preprocess": {**p.to_dict(), "crop_pct": round(p.crop_pct, 4)}, "license": s.license,
                    "url": s.url, "sha256": s.sha256_prefix, "cached": cached, "cache_problem": problem,
                    "notes": s.notes})
    return out


def format_table(items: list[dict]) -> str:
    head = f"{'name':<36}{'dataset':<12}{'top-1':>7}{'params':>9}{'MB':>7}  {'preprocessing':<28}{'licence':<14}cached"
    lines = [head, "-" * len(head)]
    for r in items:
        p = r["preprocess"]
        pre = f"{p['resize']}->{p['crop']} {p['interpolation']}"
        pre += "" if p["mean"] == [0.485, 0.456, 0.406] else " own mean/std"
        acc = f"{r['acc1']:.2f}" if r["acc1"] is not None else "-"
        lines.append(f"{r['name']:<36}{r['dataset']:<12}{acc:>7}{r['params'] / 1e6:>8.2f}M{r['size_mb']:>7.1f}  "
                     f"{pre:<28}{r['license']:<14}{'yes' if r['cached'] else 'BAD HASH' if r['cache_problem'] else 'no'}")
    lines.append("top-1: the publisher's accuracy (%) on the data set's test/validation images at this preprocessing "
                 "(resize -> centre crop); mean/std are ImageNet's for all. --json gives addresses, hashes, cache paths.")
    return "\n".join(lines)
