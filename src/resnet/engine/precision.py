"""Device, precision and memory layout: bf16 autocast + channels_last on CPUs that support bf16."""
from __future__ import annotations

import contextlib
import os
import platform
import warnings
from dataclasses import dataclass

import torch
from ..config import PRECISIONS
from ..errors import ConfigError


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
    """'auto' = bf16 where the hardware runs it natively, else fp32 (with a warning on CPU unless `warn` is
    False: callers that only ask which precision training would get, such as the inference choice)."""
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
        if not native and warn:
            warnings.warn("this CPU has no native bf16 (AVX-512 BF16/AMX): training in fp32, "
                          "about half the speed of a CPU that has it", stacklevel=2)
        requested = "bf16" if native else "fp32"
    elif requested == "bf16" and not native:
        warnings.warn("bf16 requested on a CPU without native bf16: it is emulated and slower than fp32", stacklevel=2)
    return Precision(requested, device)
