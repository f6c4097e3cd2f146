"""Where the eager CIFAR ResNet training step spends its time, and what that allows compilation.

    .venv/bin/python bench/step_profile.py [--model resnet20] [--batch 128] [--steps 20] [--precision bf16] [--kernels | --perf]

Profiles the bare eager step (forward, backward, SGD update on one batch; channels_last, as the
trainer runs it) with torch.profiler and sums each operator's own time (self CPU time) into groups:
convolutions (oneDNN's forward and backward kernels), batch norm, activations, additions, the
optimizer, the rest. torch.compile on a CPU still calls the same oneDNN convolutions; it can fuse
and speed up everything else. So the step cannot become faster than its convolutions alone:
eager time / convolution time bounds what any compilation gains (issue 17's target: 1.2x).
With `--perf`, where the CPU time of the eager and the compiled step goes, from Linux `perf` sampling the
process (no profiler hooks: torch.profiler with inductor's kernel profile took a compiled step from 168 to
229 ms): oneDNN's JIT kernels, inductor's generated kernels, the OpenMP runtime (threads waiting for one
another), ATen's C++, Python; per thread.
With `--kernels`, one more table: each oneDNN convolution of one step (forward, backward data, backward
weights per shape, from oneDNN's verbose log), its milliseconds and GFLOP/s, and the machine's fp32 matrix
product rate (a 4096 x 4096 `torch.mm`) beside it: how near the convolutions run to what the cores do.
Under `ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2` this gives the kernels
of a processor without AVX-512 (issue 17's AVX2 machine), run on this one.
Run with nothing else on the machine.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile

from resnet.allocator import relaunch_tuned
from resnet.engine.precision import resolve_precision
from compile_step import make as make_variant  # bench/, the script's own folder
from matmul_rates import matmul_rate
from train_throughput import make_step

GROUPS = (("convolution", ("convolution", "conv2d", "mkldnn_conv")),
          ("batch norm", ("batch_norm", "native_batch_norm")),
          ("activation (ReLU, GELU, threshold)", ("relu", "threshold", "gelu", "clamp_min")),
          # by operator name only: torch's per-tensor SGD adds (weight decay, momentum, update) land here too
          ("addition (shortcuts, gradient sums, SGD's adds)", ("aten::add", "aten::add_")),
          ("optimizer (SGD, zero_grad)", ("_foreach", "sgd", "aten::mul_", "aten::zero_", "aten::fill_")),
          ("casts and copies (autocast, layout)", ("aten::copy_", "aten::to", "_to_copy", "clone", "contiguous")))


def group_of(name: str) -> str:
    low = name.lower()
    for group, keys in GROUPS:  # "aten::..." keys name one operator exactly (aten::add is not aten::addmm)
        if any(low == k if k.startswith("aten::") else k in low for k in keys):
            return group
    return "the rest (pooling, loss, views, autograd bookkeeping)"


SHAPE = re.compile(r"(?:g(?P<g>\d+))?mb(?P<mb>\d+)_ic(?P<ic>\d+)oc(?P<oc>\d+)_ih\d+oh(?P<oh>\d+)kh(?P<kh>\d+)"
                   r"\S*?_iw\d+ow(?P<ow>\d+)kw(?P<kw>\d+)")


def conv_flops(shape: str) -> int:
    """Multiply-adds x 2 of a oneDNN convolution from its verbose shape, e.g.
    mb128_ic16oc16_ih32oh32kh3sh1dh0ph1_iw32ow32kw3sw1dw0pw1 (the same count for each of the three passes)."""
    m = SHAPE.search(shape)
    if m is None:
        raise ValueError(f"not a oneDNN convolution shape: {shape}")
    n = {k: int(v) for k, v in m.groupdict().items() if v is not None}
    return 2 * n["mb"] * n["oc"] * n["oh"] * n["ow"] * (n["ic"] // n.get("g", 1)) * n["kh"] * n["kw"]


def onednn_log(fn) -> list[str]:
    """oneDNN's verbose lines (it writes them to file descriptor 1) while fn() runs once."""
    with tempfile.TemporaryFile(mode="w+") as log:
        saved = os.dup(1)
        os.dup2(log.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                fn()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        return log.read().splitlines()


def conv_kernel_table(logs: list[list[str]]) -> list[tuple[str, str, str, int, float, float]]:
    """(pass, kernel, shape, calls a step, ms a step, GFLOP/s) per oneDNN convolution pass and shape, slowest
    first: the median over the steps' logs (one step now and then runs slow, e.g. right after the profiler)."""
    steps: list[dict[tuple[str, str, str], list[float]]] = []
    for lines in logs:
        rows: dict[tuple[str, str, str], list[float]] = {}
        for line in lines:
            f = line.split(",")
            if len(f) < 10 or f[0] != "onednn_verbose" or "exec" not in f or "convolution" not in f:
                continue
            at = f.index("convolution")
            kernel, pass_, shape, ms = f[at + 1], f[at + 2], f[-2], float(f[-1])
            rows.setdefault((pass_, kernel, shape), []).append(ms)
        steps.append(rows)
    table = []
    for key in steps[0]:
        calls = len(steps[0][key])
        ms = statistics.median(sum(rows.get(key, [])) for rows in steps)
        table.append((*key, calls, ms, conv_flops(key[2]) * calls / ms / 1e6))
    return sorted(table, key=lambda r: -r[4])


def print_kernels(step, steps: int = 5) -> None:
    table = conv_kernel_table([onednn_log(step) for _ in range(steps)])
    if not table:
        print("\noneDNN logged no convolutions (another convolution backend ran them)")
        return
    total = sum(r[4] for r in table)
    flops = sum(conv_flops(r[2]) * r[3] for r in table)
    print(f"\noneDNN's convolutions in a step (medians of {steps} steps): {total:.1f} ms, {flops / total / 1e6:.0f} "
          f"GFLOP/s in all; a 4096 x 4096 fp32 torch.mm here: {matmul_rate(torch.float32):.0f} GFLOP/s")
    print("| pass | kernel | shape | calls | ms | GFLOP/s |\n| --- | --- | --- | ---: | ---: | ---: |")
    for pass_, kernel, shape, calls, ms, rate in table:
        print(f"| {pass_} | {kernel} | {shape} | {calls} | {ms:.2f} | {rate:.0f} |")


# Linux perf's shared-object names -> what runs there (first match wins)
# code generated at run time has no file: perf names it "[JIT] tid N", older versions "[unknown]" or "//anon"
PERF_GROUPS = (("oneDNN's JIT kernels (convolutions, reorders)", re.compile(r"^(\[JIT\]|\[unknown\]|//anon)")),
               ("inductor's generated kernels (fused BN, ReLU, adds)", re.compile(r"^c[a-z0-9]{40,}(\.main)?\.so$")),
               ("OpenMP runtime (threads waiting for each other)", re.compile(r"^lib(g|i)omp")),
               ("ATen and oneDNN C++ (eager kernels, primitive set-up)", re.compile(r"^libtorch_cpu")),
               ("Python and its bindings", re.compile(r"^lib(python|torch_python)")),
               ("libc, libstdc++, c10 (malloc, hash tables)", re.compile(r"^(libc[.-]|libstdc|libc10|ld-linux)")),
               ("Linux kernel (page faults, scheduling)", re.compile(r"^\[kernel")))


def perf_group(dso: str) -> str:
    return next((name for name, pattern in PERF_GROUPS if pattern.search(dso)), "other")


def perf_samples(report: str, main_tid: int) -> dict[tuple[str, bool], int]:
    """{(group, on the main thread): samples} from `perf report --sort pid,dso -F sample,pid,dso -t '|'`."""
    counts: dict[tuple[str, bool], int] = {}
    for line in report.splitlines():
        fields = [f.strip() for f in line.split("|")]
        if line.startswith("#") or len(fields) != 3 or not fields[0].isdigit():
            continue
        key = (perf_group(fields[2]), int(fields[1].partition(":")[0]) == main_tid)
        counts[key] = counts.get(key, 0) + int(fields[0])
    return counts


def perf_profile(step, steps: int, frequency: int = 999) -> tuple[float, dict[tuple[str, bool], float]]:
    """(wall ms a step, {(group, main thread): CPU ms a step}) of `steps` calls of step(), sampled by perf."""
    if shutil.which("perf") is None:
        raise SystemExit("--perf: Linux `perf` is not on PATH; install it (e.g. apt install linux-tools-generic)")
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        record = subprocess.Popen(["perf", "record", "-q", "-F", str(frequency), "-p", str(os.getpid()), "-o", data],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)  # perf attaches to every thread (the OpenMP pool exists after the warm-up steps)
        if record.poll() is not None:
            raise SystemExit(f"--perf: perf record stopped: {record.stderr.read().strip()} "
                             "(check /proc/sys/kernel/perf_event_paranoid)")
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - start) / steps * 1000
        record.send_signal(signal.SIGINT)
        record.wait(timeout=120)
        report = subprocess.run(["perf", "report", "-i", data, "--stdio", "--sort", "pid,dso", "-F", "sample,pid,dso",
                                 "-t", "|"], capture_output=True, text=True, check=True).stdout
    per_sample = 1000 / frequency / steps  # CPU ms a step that one sample stands for
    return wall, {k: n * per_sample for k, n in perf_samples(report, os.getpid()).items()}


def print_perf(model: str, batch: int, precision: str, steps: int) -> None:
    """The eager and the compiled step (as the trainer builds them), each sampled by perf: CPU ms a step by group."""
    for name, variant in (("eager", "eager"), ("compiled", "default")):
        step, _ = make_variant(variant, model, batch, precision, channels_last=True)  # compiled and warmed up
        for _ in range(5):  # and a few more steps for the allocator to settle
            step()
        wall, ms = perf_profile(step, steps)
        total = sum(ms.values())
        print(f"\n{name} step, {model} batch {batch} {precision} channels_last, {torch.get_num_threads()} threads: "
              f"{wall:.1f} ms a step (wall), {total:.1f} CPU ms a step sampled ({steps} steps, perf)")
        print("| where | main thread, ms | other threads, ms | share of CPU time |\n| --- | ---: | ---: | ---: |")
        groups = {g for (g, _), v in ms.items() if v >= 0.05}  # rows that round to 0.0 say nothing
        for group in sorted(groups, key=lambda g: -(ms.get((g, True), 0) + ms.get((g, False), 0))):
            main_ms, other_ms = ms.get((group, True), 0.0), ms.get((group, False), 0.0)
            print(f"| {group} | {main_ms:.1f} | {other_ms:.1f} | {100 * (main_ms + other_ms) / total:.1f}% |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--precision", default="auto", help="auto (bf16 where the CPU has it) | bf16 | fp32")
    p.add_argument("--kernels", action="store_true", help="also time each oneDNN convolution of one step (verbose log)")
    p.add_argument("--perf", action="store_true",
                   help="only: the eager and the compiled step sampled by Linux perf, CPU time by library and thread")
    args = p.parse_args()
    prec = resolve_precision(args.precision, torch.device("cpu"))
    if args.perf:
        print_perf(args.model, args.batch, prec.name, args.steps)
        return
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
    if args.kernels:
        print_kernels(step)


if __name__ == "__main__":
    relaunch_tuned(training=True)  # time what `resnet train` runs with (resnet/allocator.py)
    main()
