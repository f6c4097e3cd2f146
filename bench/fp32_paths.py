"""Our fp32 inference paths against onnxruntime's fp32 session (issue 17: "bring our fp32 path up to
onnxruntime's").

    .venv/bin/python bench/fp32_paths.py [--model resnet50] [--batch 1,16] [--rounds 5] [--image-size 224]

Rows, all fp32, prepared once, then timed in alternating rounds (so drift on a shared machine hits all
alike): `eager-fp32` (the model as trained), BN folded + channels_last (eager), inductor with freezing
(weights prepacked for oneDNN; what `compiled-bf16` runs on a processor without native bf16) with its
Python and its C++ wrapper, and `onnxruntime`. Prints median latency over rounds and each row's ratio to
onnxruntime. One more row tries the 1x1 convolutions (ResNet-50's bottleneck convs and projections) as
packed matrix products over the channels of the channels_last map (`F.linear`, which inductor's freezing
prepacks for MKL/oneDNN's GEMM) in place of oneDNN's 1x1 convolution kernels; on the Intel Xeon with AMX it
was 1.15x slower at batch 16 (README). Random weights with BN statistics re-estimated (speed does not
depend on the weights); each path's logits are compared with eager-fp32's.
Each row's compute rate (the model's FLOPs, FlopCounterMode's count, over its latency) is also given as a
share of this machine's fp32 matrix-multiply rate (a 4096 x 4096 `torch.mm`, MKL/oneDNN sgemm: about the
most the cores do in fp32), so the table shows how far from the machine's limit each path runs.
"""
from __future__ import annotations

import argparse
import statistics
import warnings
from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn

from resnet.allocator import relaunch_tuned
from resnet.deploy import backends
from resnet.deploy.benchmark import alternating_latencies, batch_inputs, batch_sizes, random_model, with_wrapper
from resnet.deploy.fold import fold_bn
from resnet.engine.precision import cpu_model
from resnet.models.counting import measure
from matmul_rates import matmul_rate  # bench/, the script's own folder


class PointwiseAsLinear(nn.Module):
    """A 1x1 convolution (stride by slicing) as `F.linear` over the channels of a channels_last map: the
    permutes are views, so the product runs on the map as it lies in memory."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.stride = conv.stride[0]
        self.weight = nn.Parameter(conv.weight.detach().flatten(1).clone())
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        return F.linear(x.permute(0, 2, 3, 1), self.weight, self.bias).permute(0, 3, 1, 2)


def pointwise_as_linear(model: nn.Module) -> nn.Module:
    """`model` with every 1x1, unpadded, ungrouped conv replaced by a PointwiseAsLinear (in place)."""
    for name, child in model.named_children():
        if isinstance(child, nn.Conv2d) and child.kernel_size == (1, 1) and child.padding == (0, 0) and child.groups == 1:
            setattr(model, name, PointwiseAsLinear(child))
        else:
            pointwise_as_linear(child)
    return model


def compiled_fp32(model, cpp_wrapper: bool):
    """inductor with freezing in fp32, as `compiled-bf16` runs where bf16 is not native."""
    with mock.patch.object(backends, "cpu_supports_bf16", lambda: False), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no native bf16, running fp32": what this row wants
        predictor = backends.prepare_inference(model, "compiled-bf16")
    return with_wrapper(predictor, cpp_wrapper)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch", type=batch_sizes, default=[1, 16])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--image-size", type=int, default=224)
    args = p.parse_args()
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    model, images = random_model(args.model, args.image_size)
    folded = fold_bn(model).to(memory_format=torch.channels_last)
    runs = {"onnxruntime": backends.prepare_inference(model, "onnxruntime", calibration=images, example=images[:2]),
            "eager-fp32": backends.prepare_inference(model, "eager-fp32"),
            "eager, BN folded, channels_last": lambda x: folded(x.contiguous(memory_format=torch.channels_last)),
            "compiled fp32 (Python wrapper)": compiled_fp32(model, False),
            "compiled fp32 (C++ wrapper)": compiled_fp32(model, True),
            "compiled fp32, 1x1 convs as linear (C++ wrapper)": compiled_fp32(pointwise_as_linear(fold_bn(model)), True)}
    gflop = 2 * measure(model, args.image_size).macs / 1e9  # one image, forward
    peak = matmul_rate(torch.float32)
    print(f"{args.model}, {args.image_size}x{args.image_size}, fp32, {torch.get_num_threads()} threads, "
          f"{cpu_model()}; medians of {args.rounds} rounds; {gflop:.2f} GFLOP an image; "
          f"sgemm {peak:.0f} GFLOP/s")
    for batch in args.batch:
        x = batch_inputs(images, batch)
        setup, times = alternating_latencies(runs, x, args.rounds)
        with torch.no_grad():  # each path's logits against the model as trained: a fast wrong path shows here
            logits = {name: run(x).float() for name, run in runs.items()}
        ref = statistics.median(times["onnxruntime"])
        print(f"\nbatch {batch}\n| path | ms (median) | range | vs onnxruntime | images/s | GFLOP/s (of sgemm) | first call s "
              "| max logit diff vs eager-fp32 |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name, ts in times.items():
            m = statistics.median(ts)
            rate = gflop * batch / m * 1000  # GFLOP/s
            print(f"| {name} | {m:.2f} | {min(ts):.2f}-{max(ts):.2f} | {m / ref:.2f}x | {1000 * batch / m:.1f} | "
                  f"{rate:.0f} ({100 * rate / peak:.0f}%) | {setup[name]:.1f} | "
                  f"{(logits[name] - logits['eager-fp32']).abs().max().item():.1e} |")


if __name__ == "__main__":
    relaunch_tuned(training=False)  # time what `resnet benchmark` runs with (resnet/allocator.py)
    main()
