"""Process-wide runtime settings for the CPU training step: the memory allocator, the OpenMP runtime and
its thread binding (issue 17: "thread and allocator settings"). These must be set before Python starts
(LD_PRELOAD, OMP_*/KMP_* variables), so each setting runs in a fresh worker process.

    .venv/bin/python bench/runtime_settings.py [--model resnet20] [--batch 128] [--steps 10] [--rounds 3]
        [--rows eager-bf16,eager-fp32,compiled-bf16] [--settings tuned,...] [--lib-dir DIR ...]

Settings (Intel's usual advice for PyTorch on Xeons, as torch.backends.xeon.run_cpu applies it):
  default     glibc malloc, GNU OpenMP (the one PyTorch's wheel ships), no binding
  bind        OMP_PROC_BIND=close OMP_PLACES=cores (each OpenMP thread pinned to a core)
  glibc-keep  glibc malloc told to keep freed memory (GLIBC_TUNABLES: blocks up to 32 MiB from its heap, not
              fresh mmap; the heap never trimmed): no page faults on each step's reused activation buffers
  glibc-thp   glibc malloc asking the kernel for transparent huge pages (glibc.malloc.hugetlb=1, glibc >= 2.35;
              the kernel's THP setting `madvise`, Debian's default, or `always`)
  tuned       both: what the `resnet` command runs with (resnet/allocator.py GENERAL)
  tuned-training  tuned with no mmap at all (glibc.malloc.mmap_max=0), so blocks over 32 MiB (a batch of 1024's
              activations) are reused too: what `resnet train` runs with (allocator.py TRAINING)
  tuned-spin  tuned-training with OMP_WAIT_POLICY=ACTIVE (GNU OpenMP's threads spin between parallel regions
              instead of sleeping: the many short kernels of a step start without a wake-up)
  jemalloc    LD_PRELOAD libjemalloc with run_cpu's MALLOC_CONF
  tcmalloc    LD_PRELOAD libtcmalloc(_minimal)
  iomp        LD_PRELOAD Intel's libiomp5 (serves the GOMP calls) with KMP_BLOCKTIME=1 and compact affinity
  iomp+jemalloc  both
A library found in none of the searched folders (the venv's lib, /usr/lib/x86_64-linux-gnu, /usr/local/lib,
--lib-dir) leaves its rows out, saying so. Libraries: `pip install intel-openmp` (libiomp5 into the venv's
lib), `apt-get install libjemalloc2 libtcmalloc-minimal4` (or `apt-get download` + `dpkg -x` without root).
Rows: bare ResNet-20 training steps (forward, backward, fused SGD) from engine/compile.py's build_step_fn,
eager or compiled as the trainer compiles them (inductor's cache makes the later workers' compiles short).
Each round runs every setting once, in turn, so drift hits all alike; medians over rounds, and each
setting's ratio to `default` in the same round.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from resnet import allocator
from resnet.engine.precision import cpu_supports_bf16

ROWS = ("eager-bf16", "eager-fp32", "compiled-bf16", "compiled-fp32")
# 32 MiB is glibc's largest mmap threshold on 64-bit; the trim threshold is "never" in practice
GLIBC_KEEP = f"{allocator.MMAP_ABOVE_32MIB}:{allocator.NEVER_TRIM}"
GLIBC_THP = allocator.HUGE_PAGES
MALLOC_CONF = "oversize_threshold:1,background_thread:true,metadata_thp:auto,dirty_decay_ms:9000000000,muzzy_decay_ms:9000000000"


def find_library(pattern: str, extra_dirs: list[str]) -> str | None:
    dirs = [*extra_dirs, str(Path(sys.prefix) / "lib"), "/usr/lib/x86_64-linux-gnu", "/usr/local/lib", "/usr/lib"]
    for d in dirs:
        hits = sorted(glob.glob(str(Path(d) / pattern)))
        if hits:
            return hits[0]
    return None


def settings(extra_dirs: list[str]) -> tuple[dict[str, dict[str, str]], list[str]]:
    """name -> environment additions, and a line for each setting left out."""
    jemalloc = find_library("libjemalloc.so*", extra_dirs)
    tcmalloc = find_library("libtcmalloc*.so*", extra_dirs)
    iomp = find_library("libiomp5.so", extra_dirs)
    iomp_env = {"KMP_BLOCKTIME": "1", "KMP_AFFINITY": "granularity=fine,compact,1,0"}
    found = {"default": {}, "bind": {"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"},
             "glibc-keep": {"GLIBC_TUNABLES": GLIBC_KEEP}, "glibc-thp": {"GLIBC_TUNABLES": GLIBC_THP},
             "tuned": {"GLIBC_TUNABLES": allocator.GENERAL}, "tuned-training": {"GLIBC_TUNABLES": allocator.TRAINING},
             "tuned-spin": {"GLIBC_TUNABLES": allocator.TRAINING, "OMP_WAIT_POLICY": "ACTIVE"}}
    missing = []
    if jemalloc:
        found["jemalloc"] = {"LD_PRELOAD": jemalloc, "MALLOC_CONF": MALLOC_CONF}
    else:
        missing.append("jemalloc: libjemalloc.so not found (apt-get install libjemalloc2, or --lib-dir)")
    if tcmalloc:
        found["tcmalloc"] = {"LD_PRELOAD": tcmalloc}
    else:
        missing.append("tcmalloc: libtcmalloc*.so not found (apt-get install libtcmalloc-minimal4, or --lib-dir)")
    if iomp:
        found["iomp"] = {"LD_PRELOAD": iomp, **iomp_env}
        if jemalloc:
            found["iomp+jemalloc"] = {"LD_PRELOAD": f"{iomp}:{jemalloc}", "MALLOC_CONF": MALLOC_CONF, **iomp_env}
    else:
        missing.append("iomp: libiomp5.so not found (pip install intel-openmp, or --lib-dir)")
    return found, missing


def worker(args: argparse.Namespace) -> None:
    """In the worker process: time each row, print {row: images/s} as JSON."""
    import torch

    from resnet.engine.compile import build_step_fn
    from resnet.engine.precision import Precision

    out = {}
    for row in args.rows:
        kind, precision = row.split("-")
        torch.manual_seed(0)
        step = build_step_fn(args.model, Precision(precision, torch.device("cpu")), True,
                             {} if kind == "compiled" else None)
        x = torch.randn(args.batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (args.batch,))
        for _ in range(3):  # compile (if any) and build oneDNN's kernels
            step(x, y)
        start = time.perf_counter()
        for _ in range(args.steps):
            step(x, y)
        out[row] = args.batch * args.steps / (time.perf_counter() - start)
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", help="a comma-separated subset of the rows (default: eager-bf16,eager-fp32,"
                                       "compiled-bf16 where the CPU has native bf16, else eager-fp32,compiled-fp32)")
    parser.add_argument("--settings", help="a comma-separated subset of the settings (default: all found; default always runs)")
    parser.add_argument("--lib-dir", action="append", default=[], help="another folder to look for the libraries in")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    native = args.worker or cpu_supports_bf16()  # (the worker is given its rows)
    # emulated bf16 (no AVX-512 BF16/AMX) takes ~10x fp32's time: not a row unless asked for, and then said
    default_rows = "eager-bf16,eager-fp32,compiled-bf16" if native else "eager-fp32,compiled-fp32"
    args.rows = (args.rows or default_rows).split(",")
    for row in args.rows:
        if row not in ROWS:
            parser.error(f"--rows: unknown {row!r}; choose from {', '.join(ROWS)}")
    if args.worker:
        return worker(args)
    found, missing = settings(args.lib_dir)
    if args.settings:
        unknown = set(args.settings.split(",")) - set(found)
        if unknown:
            parser.error(f"--settings: {', '.join(sorted(unknown))} not among {', '.join(found)}")
        found = {k: v for k, v in found.items() if k == "default" or k in args.settings.split(",")}
    for line in missing:
        print(f"left out: {line}")
    if not native:
        print("no native bf16 here: " + ("the bf16 rows are emulated" if any("bf16" in r for r in args.rows)
                                         else "bf16 rows left out (emulated bf16 is about 10x slower than fp32)"))
    command = [sys.executable, __file__, "--worker", "--model", args.model, "--batch", str(args.batch),
               "--steps", str(args.steps), "--rows", ",".join(args.rows)]
    rates = {(s, r): [] for s in found for r in args.rows}
    ratios = {(s, r): [] for s in found for r in args.rows}
    for _ in range(args.rounds):
        this = {}
        for name, env in found.items():
            base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", allocator.OPT_OUT)}
            done = subprocess.run(command, env={**base, **env}, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"setting {name!r}: the worker failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
            this[name] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"  {name}: " + ", ".join(f"{r} {v:,.0f}" for r, v in this[name].items()), file=sys.stderr, flush=True)
        for name in found:
            for row in args.rows:
                rates[(name, row)].append(this[name][row])
                ratios[(name, row)].append(this[name][row] / this["default"][row])
    import torch
    print(f"\n{args.model}, batch {args.batch}, {torch.get_num_threads()} threads, {args.steps} steps x {args.rounds} rounds: "
          "images/s (median; ratio to default in the same round, median)")
    width = max(len(n) for n in found) + 2
    print(f"{'setting':<{width}}" + "".join(f"{r:>24}" for r in args.rows))
    for name in found:
        cells = [f"{statistics.median(rates[(name, r)]):,.0f} ({statistics.median(ratios[(name, r)]):.2f}x)"
                 for r in args.rows]
        print(f"{name:<{width}}" + "".join(f"{c:>24}" for c in cells))
    for name, env in found.items():
        if env:
            print(f"  {name}: " + " ".join(f"{k}={v}" for k, v in env.items() if k != "MALLOC_CONF"))


if __name__ == "__main__":
    main()
