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

import torch

from resnet.allocator import relaunch_tuned
from resnet.deploy import backends
from resnet.deploy.benchmark import alternating_latencies, batch_inputs, batch_sizes, random_model, with_wrapper
from resnet.engine.precision import cpu_model, cpu_supports_bf16


def prepare(model, backend: str, cpp_wrapper: bool, images: torch.Tensor):
    """A predictor whose compilations (one per input shape, at its first call) use the given wrapper."""
    return with_wrapper(backends.prepare_inference(model, backend, calibration=images, example=images[:2]), cpp_wrapper)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch", type=batch_sizes, default=[1, 16])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--backends", default="int8,compiled-bf16")
    p.add_argument("--reference", default="onnxruntime-int8")
    p.add_argument("--image-size", type=int, default=224)
    args = p.parse_args()
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    model, images = random_model(args.model, args.image_size)
    runs = {args.reference: backends.prepare_inference(model, args.reference, calibration=images,
                                                       example=images[:2])}
    # without native bf16 the bf16 backends run fp32 (deploy/backends.py): their rows say so
    fp32 = "" if cpu_supports_bf16() else ", fp32: no native bf16"
    for backend in args.backends.split(","):
        for cpp in (False, True):
            label = f"{backend} ({'C++' if cpp else 'Python'} wrapper{fp32 if 'bf16' in backend else ''})"
            runs[label] = prepare(model, backend, cpp, images)
    print(f"{args.model}, {args.image_size}x{args.image_size}, {torch.get_num_threads()} threads, "
          f"{cpu_model()}; medians of {args.rounds} rounds")
    for batch in args.batch:
        x = batch_inputs(images, batch)
        setup, times = alternating_latencies(runs, x, args.rounds)
        ref = statistics.median(times[args.reference])
        print(f"\nbatch {batch}\n| backend | ms (median) | range | vs {args.reference} | first call s |\n"
              "| --- | ---: | ---: | ---: | ---: |")
        for name, ts in times.items():
            m = statistics.median(ts)
            print(f"| {name} | {m:.2f} | {min(ts):.2f}-{max(ts):.2f} | {m / ref:.2f}x | {setup[name]:.1f} |")


if __name__ == "__main__":
    relaunch_tuned(training=False)  # time what `resnet benchmark` runs with (resnet/allocator.py)
    main()
