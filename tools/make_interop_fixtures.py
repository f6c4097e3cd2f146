#!/usr/bin/env python
"""Regenerate the torchvision/timm ResNet interop fixtures in tests/fixtures/.

Run with an interpreter that has torch, torchvision, timm and numpy installed
(it need not be the project's venv), e.g.:

    python3.11 -m venv /tmp/tvenv
    /tmp/tvenv/bin/pip install torch torchvision timm numpy
    /tmp/tvenv/bin/python tools/make_interop_fixtures.py

For each of resnet18/34/50/101/152 it records the ordered state_dict keys and
shapes, the parameter count, and eval-mode logits for the deterministic weights
and input defined in tests/interop_utils.py (numpy legacy RandomState only, so
tests can recompute the same weights without torchvision or timm).
Pass --check to recompute everything and compare against the files on disk
instead of writing them.
"""
import argparse
import inspect
import json
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import interop_utils  # noqa: E402
from interop_utils import deterministic_input, deterministic_state_dict  # noqa: E402

FIXTURES = os.path.join(ROOT, "tests", "fixtures")
ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
HEAD = 16


def describe(model):
    sd = model.state_dict()
    keys = [[k, list(v.shape)] for k, v in sd.items()]
    params = sum(p.numel() for p in model.parameters())
    model.load_state_dict(deterministic_state_dict(sd), strict=True)
    model.eval()
    model.float()
    with torch.no_grad():
        out = model(deterministic_input())
    out64 = out.double()
    return {
        "keys": keys,
        "params": int(params),
        "logits_shape": list(out.shape),
        "logits_head": [[float(x) for x in row] for row in out[:, :HEAD]],
        "logits_sum": [float(x) for x in out64.sum(dim=1)],
        "logits_norm": [float(x) for x in out64.norm(dim=1)],
    }


def meta(library, version):
    return {
        "library": library,
        "torch": torch.__version__,
        library: version,
        "numpy": np.__version__,
        "input_shape": list(deterministic_input().shape),
        "logits_head_cols": HEAD,
        "logits_sum_norm_dtype": "float64 reduction of the float32 logits",
        "interop_utils_source": inspect.getsource(interop_utils),
        "deterministic_state_dict_source": inspect.getsource(deterministic_state_dict),
        "deterministic_input_source": inspect.getsource(deterministic_input),
    }


def build_torchvision():
    import torchvision

    data = {"meta": meta("torchvision", torchvision.__version__)}
    for arch in ARCHS:
        data[arch] = describe(getattr(torchvision.models, arch)(weights=None))
    return data


def build_timm():
    import timm

    data = {"meta": meta("timm", timm.__version__)}
    for arch in ARCHS:
        data[arch] = describe(timm.create_model(arch, pretrained=False))
    return data


def dump(data, path):
    with open(path, "w") as f:
        json.dump(data, f, indent=None, separators=(",", ":"))
        f.write("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the files on disk; write nothing")
    ap.add_argument("--only", choices=["torchvision", "timm"], help="build just one fixture")
    args = ap.parse_args()
    torch.set_num_threads(1)

    builders = {"torchvision": build_torchvision, "timm": build_timm}
    failed = False
    for name, build in builders.items():
        if args.only and args.only != name:
            continue
        path = os.path.join(FIXTURES, f"{name}_resnets.json")
        try:
            data = build()
        except ImportError as e:
            print(f"{name}: not importable ({e}); skipped", file=sys.stderr)
            failed = True
            continue
        if name == "torchvision":
            assert data["resnet18"]["params"] == 11_689_512, data["resnet18"]["params"]
            assert data["resnet50"]["params"] == 25_557_032, data["resnet50"]["params"]
        if args.check:
            with open(path) as f:
                old = json.load(f)
            fresh = json.loads(json.dumps(data))
            same = {a: old[a] == fresh[a] for a in ARCHS}
            print(name, "identical" if all(same.values()) else f"DIFFERS: {same}")
            failed |= not all(same.values())
        else:
            os.makedirs(FIXTURES, exist_ok=True)
            dump(data, path)
            print(f"wrote {os.path.relpath(path, ROOT)} ({os.path.getsize(path)} bytes)")
        for a in ARCHS:
            print(f"  {a}: params={data[a]['params']} keys={len(data[a]['keys'])} "
                  f"sum={data[a]['logits_sum']} norm={data[a]['logits_norm']}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
