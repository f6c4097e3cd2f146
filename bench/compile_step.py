"""Which training step is fastest here: eager against torch.compile's modes and inductor's CPU options.

    .venv/bin/python bench/compile_step.py [--model resnet20] [--batch 128] [--precision bf16|fp32]
        [--variants eager,default,cpp_wrapper,max-autotune] [--steps 20] [--rounds 3]

Each variant is its own model and optimizer (same seed); every variant is compiled and warmed up first
(compile seconds reported), then the variants take turns, `--steps` steps each per round, so that drift
on a shared machine hits all alike; images/s are medians over rounds, and every row shows its ratio to
eager measured in the same rounds. Variants:
  eager          the bare eager step (channels_last unless --nchw)
  default        torch.compile of forward + loss (AOTAutograd compiles the backward too)
  cpp_wrapper    default with inductor's C++ wrapper (less Python per step)
  max-autotune   mode="max-autotune-no-cudagraphs" (inductor's CPU GEMM templates)
  no-layout-opt  default without inductor's own layout choice for convolutions
  step           default plus the optimizer's update compiled (torch.compile(opt.step))
  aten-bn        default without inductor's batch-norm decompositions: BN forward and backward stay
                 ATen's kernels, inductor fuses the rest (pytorch/torchdynamo#1988 traced ResNet-50
                 training at 0.88x eager on CPU to the decomposed BN)
  no-bn          default on the network with every BatchNorm2d removed (nn.Identity): what the compiled
                 step would take if batch norm cost nothing, forward and backward (a bound, not a network;
                 in bf16 it also loses the narrow-BN rule's 256-bit vectors, so read it in fp32)
  no-bn-relu     the same without the ReLUs too: convolutions, shortcut additions, loss and update only
  inductor:K=V[;K=V]  default with inductor settings of your own, e.g. "inductor:cpp.simdlen=256"
                 (values read as Python literals: numbers, True/False, strings)
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import statistics
import sys
import time

import torch
from torch import nn

from resnet.allocator import relaunch_tuned
from resnet.engine.compile import build_step_fn
from resnet.engine.precision import Precision, cpu_supports_bf16

OPTIONS = {"eager": None, "default": {}, "cpp_wrapper": {"cpp_wrapper": True},
           "max-autotune": {"mode": "max-autotune-no-cudagraphs"},
           "no-layout-opt": {"layout_optimization": False}, "step": {"compile_update": True},
           # a setting that changes nothing but the backend's identity: dynamo would otherwise
           # reuse default's graph (same code, same guards) instead of compiling without the decomps
           "aten-bn": {"trace.enabled": False}, "no-bn": {}, "no-bn-relu": {}}
VARIANTS = tuple(OPTIONS)
STRIPPED = {"no-bn": (nn.BatchNorm2d,), "no-bn-relu": (nn.BatchNorm2d, nn.ReLU)}  # variant -> layers removed
BN_OPS = {"native_batch_norm", "native_batch_norm_backward", "batch_norm_backward", "_native_batch_norm_legit",
          "_native_batch_norm_legit_functional", "_batch_norm_with_update", "_batch_norm_with_update_functional"}


@contextlib.contextmanager
def aten_batch_norm():
    """While compiling: inductor's decomposition tables without the training-mode batch-norm ops."""
    from torch._inductor import decomposition

    tables = [decomposition.decompositions, decomposition.fast_random_decomps()]
    removed = [(t, k, t.pop(k)) for t in tables for k in list(t) if str(k).partition(".")[2].split(".")[0] in BN_OPS]
    try:  # without the caches: AOTAutograd's is keyed on the graph before decomposition, so it would
        with torch._inductor.config.patch(force_disable_caches=True):  # hand back default's kernels
            yield
    finally:
        for table, key, value in removed:
            table[key] = value


def strip(model: nn.Module, kinds: tuple[type, ...]) -> nn.Module:
    """`model` with every submodule of one of `kinds` replaced by nn.Identity (in place)."""
    for name, child in model.named_children():
        if isinstance(child, kinds):
            setattr(model, name, nn.Identity())
        else:
            strip(child, kinds)
    return model


def inductor_options(variant: str) -> dict:
    """ "inductor:cpp.simdlen=256;split_reductions=False" -> {"cpp.simdlen": 256, "split_reductions": False}"""
    options = {}
    for item in variant.partition(":")[2].split(";"):
        key, _, value = item.partition("=")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return options


def make(variant: str, model_name: str, batch: int, precision: str, channels_last: bool):
    torch.manual_seed(0)
    options = inductor_options(variant) if variant.startswith("inductor:") else OPTIONS[variant]
    x = torch.randn(batch, 3, 32, 32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    kinds = STRIPPED.get(variant)
    step = build_step_fn(model_name, Precision(precision, torch.device("cpu")), channels_last, options,
                         prepare=(lambda m: strip(m, kinds)) if kinds else None)
    start = time.perf_counter()
    with aten_batch_norm() if variant == "aten-bn" else contextlib.nullcontext():
        for _ in range(3):  # compile (if any: forward and backward) and build oneDNN's kernels
            step(x, y)
    return (lambda: step(x, y)), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--precision", default="bf16" if cpu_supports_bf16() else "fp32", choices=("bf16", "fp32"))
    parser.add_argument("--variants", default="eager,default,cpp_wrapper")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nchw", action="store_true")
    args = parser.parse_args()
    if min(args.batch, args.steps, args.rounds) < 1:
        parser.error("--batch, --steps and --rounds must be at least 1")
    names = args.variants.split(",")
    # Every variant compiles the same ResNet.forward; each set of inductor options is another cache entry, and
    # past dynamo's recompile limit (8) a variant would quietly run eager under its compiled label: raise the
    # limit for this many, and fail rather than mislabel.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 2 * len(names) + 2)
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    for n in names:
        if n not in VARIANTS and not n.startswith("inductor:"):
            parser.error(f"--variants: unknown {n!r}; choose from {', '.join(VARIANTS)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, capability "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_supports_bf16()}")
    steps, setup = {}, {}
    for n in names:
        steps[n], setup[n] = make(n, args.model, args.batch, args.precision, not args.nchw)
        print(f"  {n}: ready in {setup[n]:.1f} s", file=sys.stderr, flush=True)
    rates: dict[str, list[float]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        this = {}
        for n in names:
            start = time.perf_counter()
            for _ in range(args.steps):
                steps[n]()
            this[n] = args.batch * args.steps / (time.perf_counter() - start)
            rates[n].append(this[n])
        for n in names:
            if "eager" in this:
                ratios[n].append(this[n] / this["eager"])
        print("  round: " + ", ".join(f"{n} {v:,.0f}" for n, v in this.items()), file=sys.stderr, flush=True)
    layout = "NCHW" if args.nchw else "channels_last"
    emulated = " (emulated: no native bf16 here)" if args.precision == "bf16" and not cpu_supports_bf16() else ""
    print(f"\n{args.model}, batch {args.batch}, {args.precision}{emulated} {layout}, "
          f"{args.steps} steps x {args.rounds} rounds")
    width = max(16, *(len(n) + 2 for n in names))
    print(f"{'variant':<{width}}{'img/s':>9}{'range':>17}{'vs eager':>10}{'setup s':>9}")
    for n in names:
        r = rates[n]
        ratio = f"{statistics.median(ratios[n]):.2f}x" if ratios[n] else "-"
        print(f"{n:<{width}}{statistics.median(r):>9,.0f}{min(r):>8,.0f}-{max(r):<8,.0f}{ratio:>10}{setup[n]:>9.1f}")


if __name__ == "__main__":
    relaunch_tuned(training=True)  # time what `resnet train` runs with (resnet/allocator.py)
    main()
