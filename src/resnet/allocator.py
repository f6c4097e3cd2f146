"""glibc's memory allocator tuned for training loops, set before PyTorch loads (the `resnet` command
relaunches itself with it; `RESNET_MALLOC=default` or a GLIBC_TUNABLES of your own keeps the process as
started).

Why: a training or inference step frees and allocates the same activation buffers again and again.
glibc hands large blocks back to the kernel as soon as they are freed (mmap/munmap for blocks over its
threshold, trimming the heap's top for the rest), so every step faults its activations in again, 4 KiB
page by 4 KiB page, zeroed: ResNet-20 at batch 128 took 5,000-14,000 page faults a step. The tunables
keep freed memory for reuse (the heap never trimmed) and ask the kernel for transparent huge pages for
it (glibc >= 2.35; the kernel's THP setting `madvise`, Debian's default, or `always`), so the reused
buffers also miss the TLB less. Measured with `bench/runtime_settings.py` (Intel Xeon with AMX,
2026-12-07, images/s against glibc's defaults in the same rounds): ResNet-20 at batch 128 (8 MB
buffers) eager fp32 1.04-1.13x, compiled fp32 1.04-1.07x, bf16 within the noise (0.96-1.05x).

Blocks over 32 MiB (glibc's ceiling for its mmap threshold), such as the speedrun network's activations at
batch 1024, are still mapped afresh each time unless mmap is off altogether (mmap_max=0): that gives the
speedrun network 1.22x (bf16) / 1.24-1.26x (fp32) eager, the whole `cifar10_speedrun` 16.2 against 19.5 min,
at 1.92 against 1.90 GB of peak memory. But a heap without mmap fragments where a process allocates
many sizes once: onnxruntime's int8 calibration (`resnet benchmark resnet50 --backends onnxruntime-int8`)
peaked at 7.8 GB against 1.1 GB. So mmap goes off only for the commands that run training loops, whose
steps repeat the same sizes (TRAINING_COMMANDS); the rest keep mmap above 32 MiB. Like preloading
tcmalloc, with nothing to install. The cost: a process keeps its peak memory until it exits.

glibc reads GLIBC_TUNABLES only when a process starts, hence the relaunch: execve keeps the PID and the
arguments; children (data-loader workers, the C++ compiler) inherit the setting. An older glibc ignores
tunables it does not know; another C library (musl), macOS and Windows are left alone.
"""
from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

# The parts (bench/runtime_settings.py measures them one by one)
HUGE_PAGES = "glibc.malloc.hugetlb=1"
NEVER_TRIM = "glibc.malloc.trim_threshold=68719476736"
MMAP_ABOVE_32MIB = "glibc.malloc.mmap_threshold=33554432"  # fixed at 32 MiB (else glibc moves it with each free)
NO_MMAP = "glibc.malloc.mmap_max=0"
GENERAL = f"{HUGE_PAGES}:{NEVER_TRIM}:{MMAP_ABOVE_32MIB}"
TRAINING = f"{HUGE_PAGES}:{NEVER_TRIM}:{NO_MMAP}"
TRAINING_COMMANDS = {"train", "experiment", "demo"}
OPT_OUT = "RESNET_MALLOC"  # =default: glibc's own settings


def tuned_env(environ: Mapping[str, str], training: bool, libc: str | None = None) -> dict[str, str] | None:
    """The environment to relaunch with (TRAINING's tunables for a training loop, else GENERAL's), or None
    to run as started (not glibc on Linux, opted out, or GLIBC_TUNABLES already set: ours after the
    relaunch, or the user's own)."""
    libc = platform.libc_ver()[0] if libc is None else libc
    if sys.platform != "linux" or libc != "glibc" or "GLIBC_TUNABLES" in environ:
        return None
    choice = environ.get(OPT_OUT, "tuned")
    if choice == "default":
        return None
    if choice != "tuned":
        print(f"resnet: {OPT_OUT}={choice!r}: use 'tuned' (the default) or 'default' (glibc's own settings)", file=sys.stderr)
        raise SystemExit(2)
    return {**environ, "GLIBC_TUNABLES": TRAINING if training else GENERAL}


def describe(environ: Mapping[str, str] = os.environ) -> str:
    """The allocator settings this process runs with, for benchmark titles and cache keys."""
    tunables = environ.get("GLIBC_TUNABLES")
    if tunables is None:
        return "malloc default"
    return {GENERAL: "malloc tuned", TRAINING: "malloc tuned for training"}.get(tunables, f"GLIBC_TUNABLES={tunables}")


def command_trains(argv: list[str]) -> bool:
    """Whether `resnet ARGS...` runs a training loop: its first argument that is not an option."""
    return next((a for a in argv if not a.startswith("-")), None) in TRAINING_COMMANDS


def relaunch_tuned(training: bool) -> None:
    """Replace this process with itself under the tunables tuned_env chooses. Call before PyTorch is
    imported (a relaunch throws away what the process has loaded). Returns only when not relaunching."""
    env = tuned_env(os.environ, training)
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:  # no relaunch possible (an odd sandbox): run on with glibc's defaults
        return
