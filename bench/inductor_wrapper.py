"""Inductor's C++ wrapper against its Python one for the frozen inference backends (issue 17: batch 1).

    .venv/bin/python bench/inductor_wrapper.py [--model resnet50] [--batch 1,16] [--rounds 5]
        [--backends int8,compiled-bf16] [--reference onnxruntime-int8]

Each compiled backend is prepared twice, once with each wrapper (deploy.backends.CPP_WRAPPER_MAX_PIXELS
set for all inputs or none), plus
the reference backend; then, per batch size, all of them take turns for `--rounds` rounds of timed
calls, so that drift on a shared machine hits all alike. Prints the median latency over rounds, its
range and each row's ratio to the reference. Random weights with BN statistics re-estimated on the
random images (speed does not depend on what the weights are).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from resnet.deploy import backends, parity
from resnet.deploy.benchmark import reestimate_bn, time_backend
from resnet.engine.precision import cpu_model
from resnet.models.zoo import create_model


def prepare(model, backend: str, cpp_wrapper: bool, images: torch.Tensor):
    """A predictor whose compilations (one per input shape, at its first call) use the given wrapper."""
    predictor = backends.prepare_inference(model, backend, calibration=images, example=images[:2])

    def run(x):
        saved = backends.CPP_WRAPPER_MAX_PIXELS
        backends.CPP_WRAPPER_MAX_PIXELS = 1 << 30 if cpp_wrapper else 0
        try:
            return predictor(x)
        finally:
            backends.CPP_WRAPPER_MAX_PIXELS = saved
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch", default="1,16")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--backends", default="int8,compiled-bf16")
    p.add_argument("--reference", default="onnxruntime-int8")
    p.add_argument("--image-size", type=int, default=224)
    args = p.parse_args()
    torch.manual_seed(0)
    images = parity.random_images(64, args.image_size, 3)
    model = reestimate_bn(create_model(args.model).eval(), images)
    runs = {args.reference: backends.prepare_inference(model, args.reference, calibration=images,
                                                       example=images[:2])}
    for backend in args.backends.split(","):
        for cpp in (False, True):
            runs[f"{backend} ({'C++' if cpp else 'Python'} wrapper)"] = prepare(model, backend, cpp, images)
    print(f"{args.model}, {args.image_size}x{args.image_size}, {torch.get_num_threads()} threads, "
          f"{cpu_model()}; medians of {args.rounds} rounds")
    for batch in (int(b) for b in args.batch.split(",")):
        x = images.repeat(-(-batch // images.shape[0]), 1, 1, 1)[:batch].contiguous()
        setup = {}
        for name, run in runs.items():  # the first call compiles this shape
            t0 = time.perf_counter()
            run(x)
            setup[name] = time.perf_counter() - t0
        times = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                row = time_backend(run, x, seconds=0, min_iters=max(3, 20 // batch), warmup=2)
                times[name].append(row["latency_ms_p50"])
        ref = statistics.median(times[args.reference])
        print(f"\nbatch {batch}\n| backend | ms (median) | range | vs {args.reference} | first call s |\n"
              "| --- | ---: | ---: | ---: | ---: |")
        for name, ts in times.items():
            m = statistics.median(ts)
            print(f"| {name} | {m:.2f} | {min(ts):.2f}-{max(ts):.2f} | {m / ref:.2f}x | {setup[name]:.1f} |")


if __name__ == "__main__":
    main()
