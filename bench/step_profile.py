"""Where the eager CIFAR ResNet training step spends its time, and what that allows compilation.

    .venv/bin/python bench/step_profile.py [--model resnet20] [--batch 128] [--steps 20] [--precision bf16]

Profiles the bare eager step (forward, backward, SGD update on one batch; channels_last, as the
trainer runs it) with torch.profiler and sums each operator's own time (self CPU time) into groups:
convolutions (oneDNN's forward and backward kernels), batch norm, activations, additions, the
optimizer, the rest. torch.compile on a CPU still calls the same oneDNN convolutions; it can fuse
and speed up everything else. So the step cannot become faster than its convolutions alone:
eager time / convolution time bounds what any compilation gains (issue 17's target: 1.2x).
Run with nothing else on the machine.
"""
from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from resnet.allocator import relaunch_tuned
from resnet.engine.precision import resolve_precision
from train_throughput import make_step  # bench/, the script's own folder

GROUPS = (("convolution", ("convolution", "conv2d", "mkldnn_conv")),
          ("batch norm", ("batch_norm", "native_batch_norm")),
          ("activation (ReLU, GELU, threshold)", ("relu", "threshold", "gelu", "clamp_min")),
          ("addition (shortcuts, gradient sums)", ("aten::add", "aten::add_")),
          ("optimizer (SGD, zero_grad)", ("_foreach", "sgd", "aten::mul_", "aten::zero_", "aten::fill_")),
          ("casts and copies (autocast, layout)", ("aten::copy_", "aten::to", "_to_copy", "clone", "contiguous")))


def group_of(name: str) -> str:
    low = name.lower()
    for group, keys in GROUPS:
        if any(k in low for k in keys):
            return group
    return "the rest (pooling, loss, views, autograd bookkeeping)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--precision", default="auto", help="auto (bf16 where the CPU has it) | bf16 | fp32")
    args = p.parse_args()
    prec = resolve_precision(args.precision, torch.device("cpu"))
    step = make_step(args.model, args.batch, prec.name, channels_last=True)

    for _ in range(5):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    totals: dict[str, float] = {}
    for ev in prof.key_averages():
        totals[group_of(ev.key)] = totals.get(group_of(ev.key), 0.0) + ev.self_cpu_time_total
    whole = sum(totals.values())
    print(f"{args.model}, batch {args.batch}, {prec.name}, channels_last, {torch.get_num_threads()} threads: "
          f"{whole / args.steps / 1000:.1f} ms a step (under the profiler), {args.steps} steps")
    print("| operators | ms a step | share |\n| --- | ---: | ---: |")
    for group, t in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"| {group} | {t / args.steps / 1000:.1f} | {100 * t / whole:.1f}% |")
    conv = totals.get("convolution", 0.0)
    print(f"\nconvolutions take {100 * conv / whole:.1f}% of the step: a compiled step that keeps them and makes "
          f"everything else free is at most {whole / max(conv, 1e-9):.2f}x the eager step")
    print("\nthe ten largest operators (self CPU time):")
    for ev in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:10]:
        print(f"  {ev.key}: {ev.self_cpu_time_total / args.steps / 1000:.2f} ms a step, {ev.count // args.steps} calls")


if __name__ == "__main__":
    relaunch_tuned(training=True)  # time what `resnet train` runs with (resnet/allocator.py)
    main()
