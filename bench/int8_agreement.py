"""Top-1 agreement of the int8 backends with fp32 on a trained network, with and without 7-bit ranges.

    .venv/bin/python bench/int8_agreement.py --checkpoint RUN_DIR [--data ../shared/data/cifar10-train-jpg.tar.gz]
        [--images 1024] [--backends int8,onnxruntime-int8]
    ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python bench/int8_agreement.py ...   # oneDNN's AVX2 kernels (no VNNI)

The network is a checkpoint trained by the toolkit (e.g. the cifar10_speedrun or cifar10_fast run),
checked on its run's validation hold-out of the shared JPEGs. `ONEDNN_MAX_CPU_ISA=AVX2` makes oneDNN,
which runs PT2E's int8 convolutions, take the kernels of a processor without VNNI (unsigned x signed
8-bit products summed in pairs into 16 bits, which can saturate): their numbers, not their speed.
onnxruntime picks its kernels from the processor itself, so its rows show this machine's kernels only.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from unittest import mock

import torch

from resnet.deploy import backends, parity
from resnet.serve.load import load_spec

SHARED = Path(__file__).resolve().parents[2] / "shared"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a run folder or .safetensors trained by the toolkit")
    p.add_argument("--data", default=str(SHARED / "data/cifar10-train-jpg.tar.gz"))
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--backends", default="int8,onnxruntime-int8")
    args = p.parse_args()
    model, meta = load_spec(args.checkpoint)
    x, y, _ = parity.real_images(args.data, meta, args.images, seed=0, split="val")
    calib = parity.real_images(args.data, meta, 256, seed=1, split="train")[0]
    with torch.no_grad():
        ref = model(x).argmax(1)
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "the processor's own")
    print(f"{meta.get('model')} ({args.checkpoint}) on {x.shape[0]} validation images; oneDNN ISA: {isa}; "
          f"fp32 accuracy {100 * float((ref == y).float().mean()):.2f}%")
    print("| backend | 7-bit range | agreement with fp32 | accuracy |\n| --- | --- | ---: | ---: |")
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        for reduced in (False, True):
            with mock.patch.object(backends, "needs_reduced_range", lambda flags=None, r=reduced: r):
                predictor = backends.prepare_inference(model, backend, calibration=calib, example=calib[:2])
                out = predictor.predict(x, 256).argmax(1)
            agree = 100 * float((out == ref).float().mean())
            acc = 100 * float((out == y).float().mean())
            print(f"| {backend} | {'yes' if reduced else 'no'} | {agree:.2f}% | {acc:.2f}% |", flush=True)


if __name__ == "__main__":
    main()
