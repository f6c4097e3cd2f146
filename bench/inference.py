"""Inference throughput of every backend, as `resnet benchmark` prints it, for the issue's two cases.

    .venv/bin/python bench/inference.py [--only resnet50|resnet20] [--seconds 5] [--data PATH] [--json FILE]

ResNet-50 at 224x224, batches 1 and 16, and ResNet-20 at 32x32, batches 256 and 1; every backend,
including both int8 routes (`int8`: PT2E + inductor; `onnxruntime-int8`: onnxruntime static QDQ)
so the choice of the default int8 backend can be re-checked. Random weights unless a checkpoint
is given with --resnet20-ckpt; agreement is on random inputs unless --data names a dataset. Run
with nothing else on the machine: a second process on the other core halves every figure.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from resnet.allocator import relaunch_tuned
from resnet.deploy.backends import BACKENDS
from resnet.deploy.benchmark import benchmark, format_table
from resnet.serve.load import load_spec

CASES = {
    "resnet50": dict(batches="1,16", image_size=224, check_images=128, calib_images=256),
    "resnet20": dict(batches="256,1", image_size=32, check_images=1024, calib_images=512),
}


def matmul_tflops(n: int = 4096, seconds: float = 2.0) -> float:
    """bf16 matrix-product speed: how much of the machine this run had (the machines are shared)."""
    a, b = torch.randn(n, n, dtype=torch.bfloat16), torch.randn(n, n, dtype=torch.bfloat16)
    a @ b
    start, k = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        a @ b
        k += 1
    return 2 * n ** 3 * k / (time.perf_counter() - start) / 1e12


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=sorted(CASES))
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--data", help="real images for agreement and calibration (e.g. the CIFAR-10 JPEG archive)")
    ap.add_argument("--resnet20-ckpt", help="a trained ResNet-20 checkpoint or run folder instead of random weights")
    ap.add_argument("--json", help="also write every row to this file")
    args = ap.parse_args()
    all_rows = []
    print(f"bf16 4096^3 matrix product before: {matmul_tflops():.2f} TFLOP/s", flush=True)
    for name, case in CASES.items():
        if args.only and name != args.only:
            continue
        spec = args.resnet20_ckpt if name == "resnet20" and args.resnet20_ckpt else name
        rows, title = benchmark(*load_spec(spec), args.backends.split(","), [int(b) for b in case["batches"].split(",")],
                                case["image_size"], args.data, case["check_images"], case["calib_images"], args.seconds,
                                log=lambda m: print(m, file=sys.stderr, flush=True), min_iters=10, budget=None)
        print(format_table(rows, title), flush=True)
        print(flush=True)
        all_rows += rows
    print(f"bf16 4096^3 matrix product after: {matmul_tflops():.2f} TFLOP/s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(all_rows, f, indent=1)
    return 0


if __name__ == "__main__":
    relaunch_tuned(training=False)  # time what `resnet benchmark` runs with (resnet/allocator.py)
    sys.exit(main())
