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
from resnet.files import atomic_write
from resnet.engine.precision import cpu_supports_bf16
from resnet.serve.load import load_spec

CASES = {
    "resnet50": dict(batches="1,16", image_size=224, check_images=128, calib_images=256),
    "resnet20": dict(batches="256,1", image_size=32, check_images=1024, calib_images=512),
}


def matmul_tflops(n: int = 4096, seconds: float = 2.0) -> tuple[str, float]:
    """(number type, TFLOP/s) of a matrix product: how much of the machine this run had (the machines are
    shared). bf16 where it is native, else fp32: emulated bf16 runs below 1 GFLOP/s a core (AVX2 code),
    minutes for one 4096^3 product and a figure that says nothing."""
    name, dtype = ("bf16", torch.bfloat16) if cpu_supports_bf16() else ("fp32", torch.float32)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    start, k = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        a @ b
        k += 1
    return name, 2 * n ** 3 * k / (time.perf_counter() - start) / 1e12


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
    print("{} 4096^3 matrix product before: {:.2f} TFLOP/s".format(*matmul_tflops()), flush=True)
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
    print("{} 4096^3 matrix product after: {:.2f} TFLOP/s".format(*matmul_tflops()), flush=True)
    if args.json:  # whole or not at all: a file cut short would pass for a run's rows

        def write(tmp):
            with open(tmp, "w") as f:
                json.dump(all_rows, f, indent=1)
        atomic_write(args.json, write)
    return 0


if __name__ == "__main__":
    relaunch_tuned(training=False)  # time what `resnet benchmark` runs with (resnet/allocator.py)
    sys.exit(main())
