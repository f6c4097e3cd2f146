"""Device, precision and memory layout: bf16 autocast + channels_last on CPUs where bf16 is faster than fp32."""
from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from ..config import PRECISIONS
from ..errors import ConfigError
from ..files import cache_root, read_json_cache, write_json_cache


# The x86 instructions that make oneDNN's bf16 native. oneDNN calls bf16 supported on any AVX-512 CPU (Skylake
# to Ice Lake) and emulates it there: a bf16 convolution took 4.7x fp32's time (ONEDNN_MAX_CPU_ISA=AVX512_CORE).
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "avx_ne_convert"})


def cpu_supports_bf16() -> bool:
    """True when oneDNN has native bf16 kernels here (AVX-512 BF16, AMX, AVX-NE-CONVERT); emulated bf16 is
    slower than fp32."""
    try:
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        onednn = None
    flags = cpu_flags()
    if not flags:  # no x86 flags to read (an Arm CPU lists "Features"): oneDNN's word
        return bool(onednn)
    return onednn is not False and bool(BF16_FLAGS & flags)


# Native bf16 is not always faster. AMX ran the ResNet-20 step at 1.70-1.78x fp32 (README). AVX-512 BF16
# alone differs by processor: an AMD EPYC (Zen 4) ran the ResNet-20 step at 1.54x fp32, an Intel Xeon VM
# (family 6 model 207, AMX not exposed) at 0.79x, so there a short measured probe decides, cached per machine.
BF16_PROBE_FILE = "bf16-probe.json"
BF16_MIN_GAIN = 1.1  # bf16 rounds activations: take it only for a clear gain


def bf16_pays() -> bool:
    """Whether `precision: auto` (and the bf16 inference paths) should use bf16 here: native bf16 that is
    faster than fp32, by the flags (AMX) or else by `bf16_speedup`'s cached probe."""
    if not cpu_supports_bf16():
        return False
    flags = cpu_flags()
    if "amx_bf16" in flags or not flags:  # AMX: measured; no x86 flags (Arm): oneDNN's word, as cpu_supports_bf16
        return True
    return bf16_speedup() >= BF16_MIN_GAIN


def bf16_probe_key() -> str:
    flags = hashlib.blake2b(" ".join(sorted(cpu_flags())).encode(), digest_size=6).hexdigest()
    return f"{cpu_model()}|flags {flags}|torch {torch.__version__}|{torch.get_num_threads()} threads"


def bf16_speedup(folder: str | os.PathLike | None = None) -> float:
    """fp32's time over bf16 autocast's for a convolution's forward and backward, measured once per machine
    (processor, flags, PyTorch, threads) and cached in the cache folder's bf16-probe.json."""
    path = Path(folder or cache_root()) / BF16_PROBE_FILE
    key = bf16_probe_key()
    table = read_json_cache(path)
    entry = table.get(key)
    if isinstance(entry, dict) and isinstance(entry.get("speedup"), (int, float)) and entry["speedup"] > 0:
        return float(entry["speedup"])
    fp32_s, bf16_s = time_conv_step()
    table[key] = {"speedup": round(fp32_s / bf16_s, 4), "fp32_ms": round(1e3 * fp32_s, 3),
                  "bf16_ms": round(1e3 * bf16_s, 3)}
    write_json_cache(path, table)
    return fp32_s / bf16_s


@torch.inference_mode(False)  # callers may be under no_grad or inference_mode (predict, eval): the probe
@torch.enable_grad()  # needs autograd all the same
def time_conv_step(rounds: int = 5) -> tuple[float, float]:
    """Median seconds of (fp32, bf16 autocast) for two 3x3 convolutions of 64 channels on 32 images of 32x32,
    channels_last, forward and backward (ResNet's stages; ~14 GFLOP, well under a second each on 2 cores).
    Rounds alternate, so a busy moment slows both. Draws nothing from the global RNG (seeded runs repeat)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 64, 32, 32, generator=g).to(memory_format=torch.channels_last)
    w1, w2 = (torch.randn(64, 64, 3, 3, generator=g).mul_(0.05).to(memory_format=torch.channels_last)
              .requires_grad_() for _ in range(2))

    def step(dtype):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            y = F.conv2d(F.relu(F.conv2d(x, w1, padding=1)), w2, padding=1)
        y.float().sum().backward()
        w1.grad = w2.grad = None

    times = {None: [], torch.bfloat16: []}
    for i in range(rounds + 1):
        for dtype in times:
            start = time.perf_counter()
            step(dtype)
            if i:  # the first round warms both up (oneDNN builds its kernels)
                times[dtype].append(time.perf_counter() - start)
    return statistics.median(times[None]), statistics.median(times[torch.bfloat16])


def cpu_flags() -> frozenset[str]:
    """The processor's feature flags (Linux /proc/cpuinfo); empty where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_kind(flags: frozenset[str] | set[str]) -> str:
    """'amx', 'vnni' (AVX-512 VNNI or AVX-VNNI: int8 dot products without saturation), 'avx2' or 'other'."""
    if {"amx_int8", "amx_tile"} <= set(flags):
        return "amx"
    if {"avx512_vnni", "avx_vnni"} & set(flags):
        return "vnni"
    return "avx2" if "avx2" in flags else "other"


# oneDNN's ISA limits without VNNI: its int8 kernels then sum pairs into 16 bits whatever the CPU has
ISA_LIMITS_WITHOUT_VNNI = frozenset({"SSE41", "AVX", "AVX2"})


def needs_reduced_range(flags: frozenset[str] | set[str] | None = None) -> bool:
    """int8 without VNNI saturates 16-bit pair sums: quantize to 7 bits there (see the module's note). On
    this machine (no `flags` given) that includes oneDNN held below VNNI by ONEDNN_MAX_CPU_ISA: on the AMX
    machine with AVX2 set, 8-bit PT2E int8 agreed with fp32 on 93.75% of the images, 7-bit on 99.41%."""
    if flags is None and os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in ISA_LIMITS_WITHOUT_VNNI:
        return True
    return cpu_kind(cpu_flags() if flags is None else flags) in ("avx2", "other")


def cpu_model() -> str:
    """The processor's model name (`lscpu`'s), for keys of measurements cached per machine."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class Precision:
    name: str  # bf16 | fp16 | fp32
    device: torch.device

    @property
    def dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def autocast(self):
        """Autocast for the forward pass; parameters stay fp32 (master weights)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def grad_scaler(self):
        """fp16 on CUDA needs loss scaling; bf16 has fp32's range and does not."""
        return torch.amp.GradScaler("cuda") if self.name == "fp16" and self.device.type == "cuda" else None


def resolve_precision(requested: str, device: torch.device, warn: bool = True) -> Precision:
    """'auto' = bf16 where the hardware runs it natively and faster than fp32 (`bf16_pays`), else fp32 (with a
    warning on CPU unless `warn` is False: callers that only ask which precision training would get, such as
    the inference choice)."""
    if requested not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if device.type == "cuda":
        if requested == "auto":
            requested = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return Precision(requested, device)
    if requested == "fp16":
        raise ConfigError("--precision fp16 is for CUDA; on CPU use bf16 or fp32")
    native = cpu_supports_bf16()
    if requested == "auto":
        pays = native and bf16_pays()
        if not native and warn:
            warnings.warn("this CPU has no native bf16 (AVX-512 BF16/AMX): training in fp32, "
                          "about half the speed of a CPU that has it", stacklevel=2)
        elif native and not pays and warn:
            warnings.warn(f"bf16 ran at {bf16_speedup():.2f}x fp32's speed on this CPU (native bf16 without AMX; "
                          f"measured once, cached in {cache_root() / BF16_PROBE_FILE}): training in fp32, the "
                          "faster here; precision=bf16 forces bf16", stacklevel=2)
        requested = "bf16" if pays else "fp32"
    elif requested == "bf16" and not native:
        warnings.warn("bf16 requested on a CPU without native bf16: it is emulated and slower than fp32", stacklevel=2)
    return Precision(requested, device)
