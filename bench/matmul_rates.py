"""The cores' matrix-multiply rate in each number type, and the ResNet-50 speed each rate allows (the
ceiling against which issue 17's inference targets are judged).

    .venv/bin/python bench/matmul_rates.py [--size 4096] [--rounds 5] [--onnxruntime]

Square n x n products on this process's threads, in alternating rounds: fp32 (`torch.mm`, MKL's sgemm),
bf16 (`torch.mm`, only where the CPU has native bf16: emulated bf16 is slower than fp32 and no path uses
it) and int8 (oneDNN's quantized linear, u8 activations x s8 prepacked weights -> s32, the arithmetic and
library of the int8 backend's convolutions; without VNNI, oneDNN's AVX2 kernels multiply with vpmaddubsw +
vpmaddwd). Not `torch._int_mm`: it reaches oneDNN only where the CPU has AVX-512 VNNI, and elsewhere runs
ATen's reference loop (on a real Zen 3 a 4096 x 4096 product took minutes). A large square product is
about the most the cores do in a number type, so each row's ResNet-50 ceiling (224x224, every FLOP of the
forward pass at that rate) is a speed an inference path can approach but not pass.
--onnxruntime also times onnxruntime's fp32 session on ResNet-50 at batch 16 and prints what issue 17's
AVX2 target (our fastest >= 3x onnxruntime fp32) asks of the int8 rate: above 1.0x, no int8 kernel can
reach it on these cores. Without it, the same is said of an fp32 path at the fp32 product's full rate.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from resnet.allocator import relaunch_tuned
from resnet.engine.precision import cpu_model, cpu_supports_bf16
from resnet.models import create_model
from resnet.models.counting import measure


def int8_linear(x: torch.Tensor, w: torch.Tensor, x_scale: float = 0.02, w_scale: float = 0.01):
    """x (m x k, uint8) times w.T (w: n x k, int8) through oneDNN's quantized linear, what PT2E int8 runs:
    prepacked per-channel weights, s32 sums, fp32 out (x_scale * w_scale * the integer product).
    Returns the call."""
    packed = torch.ops.onednn.qlinear_prepack(w, list(x.shape))
    scales, zeros = torch.full((w.shape[0],), w_scale), torch.zeros(w.shape[0], dtype=torch.int64)
    return lambda: torch.ops.onednn.qlinear_pointwise(x, x_scale, 0, packed, scales, zeros, None, 1.0, 0,
                                                      torch.float32, "none", [], "")


def matmul_rate(dtype: torch.dtype = torch.float32, n: int = 4096, repeats: int = 5) -> float:
    """Median rate of an n x n matrix product in `dtype` on this process's threads, in G(FL)OP/s
    (a multiply and an add count two, as in FLOP counts)."""
    if dtype == torch.int8:
        product = int8_linear(torch.randint(0, 256, (n, n), dtype=torch.uint8),
                              torch.randint(-128, 128, (n, n), dtype=torch.int8))
    else:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        product = lambda: torch.mm(a, b)  # noqa: E731
    product()  # warm-up: the library picks its kernel and threads
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        product()
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def onnxruntime_images_per_second(batch: int = 16, rounds: int = 5) -> float:
    """onnxruntime's fp32 session on ResNet-50 (random weights, 224x224): median images/s over rounds."""
    from resnet.deploy import backends
    from resnet.deploy.benchmark import alternating_latencies, batch_inputs, random_model

    model, images = random_model("resnet50", 224)
    run = backends.prepare_inference(model, "onnxruntime", calibration=images, example=images[:2])
    _, times = alternating_latencies({"onnxruntime": run}, batch_inputs(images, batch), rounds)
    return 1000 * batch / statistics.median(times["onnxruntime"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=4096, help="n of the n x n products")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--onnxruntime", action="store_true", help="time onnxruntime fp32 ResNet-50 at batch 16 too")
    args = p.parse_args()
    if min(args.size, args.rounds) < 1:
        p.error("--size and --rounds must be at least 1")
    types = {"fp32": torch.float32, "int8": torch.int8}
    if cpu_supports_bf16():
        types["bf16"] = torch.bfloat16
    rates: dict[str, list[float]] = {name: [] for name in types}
    for _ in range(args.rounds):
        for name, dtype in types.items():
            rates[name].append(matmul_rate(dtype, args.size, repeats=3))
    median = {name: statistics.median(r) for name, r in rates.items()}
    gflop = 2 * measure(create_model("resnet50"), 224).macs / 1e9  # one image, forward
    print(f"{args.size} x {args.size} products, {torch.get_num_threads()} threads, {cpu_model()}, PyTorch's "
          f"capability {torch.backends.cpu.get_cpu_capability()}; medians of {args.rounds} rounds; "
          f"ResNet-50 {gflop:.2f} GFLOP an image"
          + ("" if "bf16" in types else "; no native bf16 here, so no bf16 row"))
    print("\n| number type | G(FL)OP/s | range | vs fp32 | ResNet-50 ceiling, images/s |\n| --- | ---: | ---: | ---: | ---: |")
    for name, r in rates.items():
        print(f"| {name} | {median[name]:.0f} | {min(r):.0f}-{max(r):.0f} | {median[name] / median['fp32']:.2f}x "
              f"| {median[name] / gflop:.1f} |")
    ratio = median["int8"] / median["fp32"]
    print(f"\nAn fp32 path at the fp32 product's full rate runs ResNet-50 at {median['fp32'] / gflop:.1f} images/s; "
          f"3x that needs int8 at 3.00x the fp32 rate, and the int8 product runs at {ratio:.2f}x"
          + (": no int8 path reaches 3x an fp32 path that uses these cores fully." if ratio < 3 else "."))
    if args.onnxruntime:
        ort = onnxruntime_images_per_second(rounds=args.rounds)
        need = 3 * ort * gflop
        print(f"\nonnxruntime fp32, ResNet-50 batch 16: {ort:.1f} images/s = {ort * gflop:.0f} GFLOP/s, "
              f"{100 * ort * gflop / median['fp32']:.0f}% of the fp32 product's rate.\n3x that (issue 17's AVX2 "
              f"target) is {3 * ort:.1f} images/s = {need:.0f} GOP/s: {need / median['int8']:.2f}x the int8 "
              f"product's rate (above 1.0x: out of reach of any int8 path on these cores)"
              + (f", {need / median['bf16']:.2f}x the bf16 rate" if "bf16" in median else "") + ".")


if __name__ == "__main__":
    relaunch_tuned(training=False)  # the settings `resnet benchmark` runs with (resnet/allocator.py)
    main()
