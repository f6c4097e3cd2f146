"""Training throughput of a CIFAR ResNet on this machine: the bare step vs the whole loop.

    .venv/bin/python bench/train_throughput.py [--model resnet20] [--steps 60] [--repeats 3] [--device cuda]
        [--precision auto|bf16|fp32]

Rows: the bare SGD step (forward, backward, update on one pre-made batch; torch.optim.SGD as a user
writes it) in fp32 NCHW, fp32 channels_last and bf16 autocast + channels_last; the same with the
toolkit's fused SGD; compiled (as the trainer compiles it: on a GPU with CUDA graphs); then `Trainer.train_epoch` (augmentation on whole batches, progress, metric
accumulation) on random in-memory images with the default precision, eager and compiled. Medians
over repeats, all in one process; run with nothing else on the machine. The ratios at the end are
against the bare eager step in the default precision, and against it with fused SGD (issue 17's targets: >= 1.2x on a CPU,
>= 2x on a GPU for the compiled loop).
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from resnet import create_model
from resnet.allocator import relaunch_tuned
from resnet.config import make_config
from resnet.data import InMemoryDataset
from resnet.engine.optim import make_optimizer
from resnet.engine.compile import build_step_fn
from resnet.engine.precision import Precision, cpu_supports_bf16, resolve_precision
from resnet.engine.trainer import Trainer


def make_step(model_name: str, batch: int, precision: str, channels_last: bool, device: str = "cpu",
              fused: bool = False):
    """The bare SGD step (forward, backward, update) on one pre-made random batch, as a function. The
    update is torch.optim.SGD as a user writes it (PyTorch's default: a loop over the tensors on a CPU,
    its foreach kernels on a GPU), or with `fused` the toolkit's (make_optimizer: torch's fused kernel)."""
    torch.manual_seed(0)
    dev = torch.device(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model(model_name).to(dev).to(memory_format=fmt).train()
    cfg = make_config().optim
    opt = make_optimizer(model, cfg)
    if not fused:  # the same groups and settings, torch's default kernel choice
        groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in opt.param_groups]
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    prec = Precision(precision, dev)
    x = torch.randn(batch, 3, 32, 32, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=dev)

    def step():
        with prec.autocast():
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def bare_step(model_name: str, batch: int, steps: int, precision: str, channels_last: bool,
              device: str = "cpu", fused: bool = False) -> float:
    dev = torch.device(device)
    step = make_step(model_name, batch, precision, channels_last, device, fused)
    for _ in range(5):  # oneDNN (cuDNN) builds (picks) its kernels on the first calls
        step()
    _sync(dev)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(dev)
    return batch * steps / (time.perf_counter() - start)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def compiled_bare_step(model_name: str, batch: int, steps: int, precision: str, device: str = "cpu") -> float:
    """The bare step through torch.compile as the trainer compiles it (CUDA: CUDA graphs), channels_last."""
    dev = torch.device(device)
    torch.manual_seed(0)
    step = build_step_fn(model_name, Precision(precision, dev), True, {})  # as the trainer compiles it
    x = torch.randn(batch, 3, 32, 32, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=dev)
    mark = getattr(torch.compiler, "cudagraph_mark_step_begin", None) if dev.type == "cuda" else None
    for _ in range(5):  # compiles, then warms up
        if mark:
            mark()
        step(x, y)
    _sync(dev)
    start = time.perf_counter()
    for _ in range(steps):
        if mark:
            mark()
        step(x, y)
    _sync(dev)
    return batch * steps / (time.perf_counter() - start)


def whole_loop(model_name: str, batch: int, steps: int, device: str = "cpu", compile: bool = False,
               precision: str = "auto") -> float:
    g = torch.Generator().manual_seed(0)
    n = batch * steps
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    data = InMemoryDataset(images, labels, [str(i) for i in range(10)], (0.5,) * 3, (0.25,) * 3, "random")
    cfg = make_config(None, [f"model={model_name}", "epochs=2", f"data.batch_size={batch}", "data.val_size=0",
                             f"compile={str(compile).lower()}", f"precision={precision}"])
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, run_dir, data=(data.subset(range(n)), None), stream=io.StringIO(), device=device)
        trainer.train_epoch()  # warm-up epoch: kernel creation (and compilation)
        trainer.epoch = 1
        return trainer.train_epoch()["images_per_sec"]


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch", type=positive, default=128)
    parser.add_argument("--steps", type=positive, default=60)
    parser.add_argument("--repeats", type=positive, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                        help="the loop's and the compared rows' precision (default auto: bf16 where native); fp32 on a "
                             "bf16 machine measures the path a processor without bf16 takes")
    parser.add_argument("--skip-compile", action="store_true", help="leave out the compiled rows (they compile first)")
    args = parser.parse_args()
    where = (torch.cuda.get_device_name(args.device) if args.device.startswith("cuda")
             else f"{torch.get_num_threads()} threads, native bf16: {cpu_supports_bf16()}")
    print(f"torch {torch.__version__}, {args.device}: {where}")
    m, b, n, d = args.model, args.batch, args.steps, args.device
    dev = torch.device(d)
    default = resolve_precision(args.precision, dev).name  # auto: bf16 where native (AMX, GPUs), else fp32 (AVX2)
    emulated = dev.type == "cpu" and not cpu_supports_bf16()
    shown = f"{default} (emulated)" if default == "bf16" and emulated else default  # asked for: run, and say so
    bare = f"bare step {shown} channels_last"
    rows = [("bare step fp32 NCHW", lambda: bare_step(m, b, n, "fp32", False, d)),
            ("bare step fp32 channels_last", lambda: bare_step(m, b, n, "fp32", True, d)),
            ("bare step bf16 channels_last", lambda: bare_step(m, b, n, "bf16", True, d)),
            (f"bare step {shown} channels_last, fused SGD", lambda: bare_step(m, b, n, default, True, d, fused=True)),
            (f"bare step {shown} compiled", lambda: compiled_bare_step(m, b, n, default, d)),
            (f"training loop {shown} (compile=false)", lambda: whole_loop(m, b, n, d, precision=default)),
            (f"training loop {shown} (compile=true)", lambda: whole_loop(m, b, n, d, True, default))]
    if args.skip_compile:
        rows = [r for r in rows if "compiled" not in r[0] and "compile=true" not in r[0]]
    if emulated:  # emulated bf16 ran 10x slower than fp32 (AVX2 code: 52 against 508 images/s)
        if default == "bf16":
            rows = [(bare if name == "bare step bf16 channels_last" else name, fn) for name, fn in rows]
            print("no native bf16 here: the bf16 rows are emulated (about 10x slower than fp32)")
        else:
            rows = [r for r in rows if r[0] != "bare step bf16 channels_last"]
            print("no native bf16 here: the bf16 row is left out (emulated bf16 is about 10x slower than fp32)")
    results = {}
    for _ in range(args.repeats):  # interleave repeats so drift hits every row alike
        for name, fn in rows:
            results.setdefault(name, []).append(fn())
            print(".", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    print(f"\n{args.model}, batch {args.batch}, {args.steps} steps x {args.repeats} repeats (median, min-max), images/s")
    width = max(46, *(len(name) + 2 for name in results))
    print(f"{'':<{width}}{'img/s':>9}  {'range':>15}")
    for name, values in results.items():
        print(f"{name:<{width}}{statistics.median(values):>9,.0f}  {min(values):>7,.0f}-{max(values):<7,.0f}")
    base = statistics.median(results[bare])
    print()
    fused = statistics.median(results[f"{bare}, fused SGD"])
    for name in results:
        if name.startswith("training loop") or "compiled" in name or "fused" in name:
            value = statistics.median(results[name])
            print(f"{name} / {bare}: {value / base:.2f}x (/ the same with fused SGD: {value / fused:.2f}x)")
    print("targets (issue 17): the compiled loop >= 1.2x the bare eager step on a CPU, >= 2x on a GPU")


if __name__ == "__main__":
    relaunch_tuned(training=True)  # time what `resnet train` runs with (resnet/allocator.py)
    main()
