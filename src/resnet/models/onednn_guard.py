"""Work-around for a oneDNN kernel bug that hangs, crashes or silently corrupts training on AVX2 CPUs.

uxlfoundation/oneDNN#6035: on oneDNN's AVX2 path (no AVX-512), the backward-weights kernel of a 1x1
convolution with stride > 1 and fewer than 8 input channels in channels_last (nhwc) writes past its
workspace. Measured with PyTorch 2.13.0 on an AMD EPYC (Zen 3) and with ONEDNN_MAX_CPU_ISA=AVX2 on an
Intel Xeon: it spins forever with 2 threads, segfaults with 1, and on some machines returns wrong weight
gradients. NCHW takes another kernel and is correct, so such a layer runs in NCHW on that path.
`tools/check_onednn_6035.py` says whether the installed PyTorch still has the bug: drop this module when
it reports "fixed".
"""
from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys

import torch
import torch.nn.functional as F
from torch import nn

# ONEDNN_MAX_CPU_ISA values that keep oneDNN on AVX2 or below (oneDNN's "CPU dispatcher control" docs).
_AVX2_OR_BELOW = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2"}


@functools.lru_cache(maxsize=None)
def onednn_avx2_path() -> bool:
    """True when oneDNN runs its AVX2 (or older) x86 kernels: no AVX-512 here, or capped by the environment."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    capped = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    if capped in _AVX2_OR_BELOW:
        return True
    # ATen's capability says AVX512 only with AVX-512 F/BW/VL/DQ, the set oneDNN's avx512_core needs too.
    return torch.backends.cpu.get_cpu_capability() != "AVX512"


def hits_onednn_6035(in_planes: int, kernel_size: int, stride: int) -> bool:
    """The layer shape oneDNN#6035 breaks: 1x1, stride > 1, fewer than 8 input channels."""
    return kernel_size == 1 and stride > 1 and in_planes < 8


class NCHWConv2d(nn.Conv2d):
    """A Conv2d that always computes in NCHW, whatever the layout of its input and weight (oneDNN#6035).

    Only ever built for the broken shape on the AVX2 path, so it costs nothing elsewhere; the parameter
    names are nn.Conv2d's, so state dicts are unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A 1x1 weight in channels_last also counts as contiguous, so .contiguous() would keep its
        # strides (and oneDNN's nhwc kernel): clone it into NCHW strides (it has < 8 x out_planes values).
        weight = self.weight.clone(memory_format=torch.contiguous_format)
        return F.conv2d(x.contiguous(), weight, self.bias, self.stride, self.padding,
                        self.dilation, self.groups)


_PROBE = """
import torch
torch.manual_seed(0)
conv = torch.nn.Conv2d(4, 8, 1, stride=2, bias=False)
ref = torch.nn.Conv2d(4, 8, 1, stride=2, bias=False)
ref.weight.data.copy_(conv.weight.data)
conv = conv.to(memory_format=torch.channels_last)
x = torch.randn(8, 4, 32, 32)
conv(x.contiguous(memory_format=torch.channels_last)).square().sum().backward()
ref(x).square().sum().backward()
print((conv.weight.grad - ref.weight.grad).abs().max().item())
"""


def probe_onednn_6035(timeout: float = 60.0) -> str:
    """Run the bug's minimal case on oneDNN's AVX2 path in a child process: 'fixed' or what it does.

    The child caps oneDNN at AVX2 (ONEDNN_MAX_CPU_ISA), so the probe means the same on every x86 CPU.
    """
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", OMP_NUM_THREADS="2")
    try:
        out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired:  # a hang: subprocess.run has killed the child
        return f"present: hangs (no result in {timeout:.0f} s)"
    if out.returncode != 0:
        return f"present: the child died (exit {out.returncode})"
    diff = float(out.stdout.split()[-1])
    return "fixed" if diff <= 1e-4 else f"present: wrong weight gradients (max abs error {diff:.3g})"
