"""Training throughput of ResNet-50 at 224x224 on synthetic data (one SGD step: forward, backward, update).

    .venv/bin/python bench/train_resnet50.py [--batch 32] [--steps 20] [--fp32-steps 5]

On CPU: fp32 NCHW against bf16 autocast + channels_last (fp32 master weights), the toolkit's default
where the processor has native bf16. On a GPU: bf16 autocast + channels_last at --gpu-batch, next
to NVIDIA's published ResNet-50 v1.5 training figure (DeepLearningExamples, A100 80GB, AMP, batch
256: 2,470 images/s on one GPU). Warm-up steps are not timed; run with nothing else on the machine.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from resnet import create_model
from resnet.allocator import relaunch_tuned
from resnet.config import make_config
from resnet.engine.optim import make_optimizer
from resnet.engine.precision import Precision, cpu_supports_bf16

NVIDIA_A100_AMP = 2470  # images/s, ResNet-50 v1.5, 1x A100 80GB, mixed precision (NVIDIA DeepLearningExamples)


def step_rate(device: str, batch: int, steps: int, precision: str, channels_last: bool, warmup: int = 3,
              compile: bool = False) -> float:
    """Images per second of full training steps on one synthetic batch (`compile`: the forward and
    backward through torch.compile's default mode; ResNet-50 at batch 256 is not launch-bound)."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    dev = torch.device(device)
    model = create_model("resnet50").to(dev).to(memory_format=fmt).train()
    opt = make_optimizer(model, make_config().optim)
    prec = Precision(precision, dev)
    x = torch.randn(batch, 3, 224, 224, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (batch,), device=dev)
    forward = torch.compile(model, dynamic=False) if compile else model

    def step():
        with prec.autocast():
            logits = forward(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=20, help="timed bf16 steps")
    p.add_argument("--fp32-steps", type=int, default=5, help="timed fp32 steps (0 = skip)")
    p.add_argument("--gpu-batch", type=int, default=256)
    p.add_argument("--gpu-steps", type=int, default=50)
    p.add_argument("--compile", action="store_true", help="also the GPU step through torch.compile")
    p.add_argument("--gpu-only", action="store_true", help="skip the CPU rows")
    args = p.parse_args()
    rows = []
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for compiled in (False, True) if args.compile else (False,):
            rate = step_rate("cuda", args.gpu_batch, args.gpu_steps, "bf16", True, warmup=10, compile=compiled)
            rows.append((f"{name}, bf16 autocast + channels_last{' + torch.compile' if compiled else ''}",
                         args.gpu_batch, rate, f"{rate / NVIDIA_A100_AMP:.2f}x NVIDIA's A100 AMP {NVIDIA_A100_AMP:,}"))
    if args.gpu_only:
        args.fp32_steps = args.steps = 0
    bf16 = cpu_supports_bf16()
    if args.fp32_steps:
        rows.append(("CPU fp32 NCHW", args.batch, step_rate("cpu", args.batch, args.fp32_steps, "fp32", False, 2), ""))
    if args.steps:
        rows.append((f"CPU bf16 autocast + channels_last{'' if bf16 else ' (bf16 emulated: no native support)'}",
                     args.batch, step_rate("cpu", args.batch, args.steps, "bf16", True), ""))
    print(f"ResNet-50 training step, 224x224, synthetic data, {torch.get_num_threads()} CPU threads, "
          f"PyTorch {torch.__version__}\n")
    print("| configuration | batch | images/s | note |\n| --- | ---: | ---: | --- |")
    for name, batch, rate, note in rows:
        print(f"| {name} | {batch} | {rate:,.1f} | {note} |")


if __name__ == "__main__":
    relaunch_tuned(training=True)  # time what `resnet train` runs with (resnet/allocator.py)
    main()
