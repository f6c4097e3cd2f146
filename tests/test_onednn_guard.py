"""oneDNN#6035: 1x1 stride-2 convolutions with < 8 input channels in channels_last break on AVX2.

The toolkit keeps such layers in NCHW on oneDNN's AVX2 path (models/onednn_guard.py). These tests
check the gradients on the default path here and, in a child process capped with ONEDNN_MAX_CPU_ISA=AVX2,
on the AVX2 path, whatever this processor is.
"""
import os
import subprocess
import sys
import warnings

import pytest
import torch

import resnet
from resnet.models.onednn_guard import NCHWConv2d, onednn_avx2_path, probe_onednn_6035

# A widths=[4,8,8] CIFAR net with projection shortcuts: its layer2 shortcut is the broken 4->8 1x1/2 conv.
_COMPARE = """
import torch, resnet
torch.manual_seed(0)
model = resnet.build_resnet(block="basic", layers=[1, 1, 1], widths=[4, 8, 8], stem="cifar",
                            shortcut="B", num_classes=10, stem_width=4)
ref = resnet.build_resnet(block="basic", layers=[1, 1, 1], widths=[4, 8, 8], stem="cifar",
                          shortcut="B", num_classes=10, stem_width=4)
ref.load_state_dict(model.state_dict())
model = model.to(memory_format=torch.channels_last)  # as the trainer runs it
x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
torch.nn.functional.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y).backward()
torch.nn.functional.cross_entropy(ref(x), y).backward()
g, r = model.layer2[0].downsample[0].weight.grad, ref.layer2[0].downsample[0].weight.grad
print(type(model.layer2[0].downsample[0]).__name__, (g - r).abs().max().item(), r.abs().max().item())
"""


def _compare(env: dict) -> tuple[str, float, float]:
    out = subprocess.run([sys.executable, "-c", _COMPARE], env={**os.environ, **env}, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, f"the training step died (exit {out.returncode}): {out.stderr[-2000:]}"
    name, diff, scale = out.stdout.split()
    return name, float(diff), float(scale)


@pytest.mark.parametrize("path", ["default", "avx2"])
def test_broken_shape_gets_correct_weight_gradients(path):
    env = {"ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "2"} if path == "avx2" else {"OMP_NUM_THREADS": "2"}
    name, diff, scale = _compare(env)
    assert scale > 1e-3  # the gradient is not trivially zero
    assert diff <= 1e-5 * max(scale, 1.0), f"weight gradients off by {diff} on the {path} path ({name})"
    if path == "avx2":
        assert name == "NCHWConv2d"  # the guard is what makes it pass there


def test_guard_only_where_the_bug_lives():
    layer = resnet.build_resnet(block="basic", layers=[1, 1, 1], widths=[4, 8, 8], stem="cifar",
                                shortcut="B").layer2[0].downsample[0]
    assert isinstance(layer, NCHWConv2d) == onednn_avx2_path()
    wide = resnet.create_model("resnet20", shortcut="B").layer2[0].downsample[0]  # 16 -> 32: not broken
    assert type(wide) is torch.nn.Conv2d


def test_nchw_conv_matches_conv2d_in_any_layout():
    conv = NCHWConv2d(4, 8, 1, stride=2, bias=False)
    ref = torch.nn.Conv2d(4, 8, 1, stride=2, bias=False)
    ref.load_state_dict(conv.state_dict())  # same parameter names
    x = torch.randn(2, 4, 16, 16)
    torch.testing.assert_close(conv.to(memory_format=torch.channels_last)(
        x.contiguous(memory_format=torch.channels_last)), ref(x))


def test_probe_reports_whether_pytorch_still_has_the_bug():
    verdict = probe_onednn_6035(timeout=60)
    assert verdict == "fixed" or verdict.startswith("present: "), verdict
    if verdict == "fixed":  # tell whoever reads the log that the guard can go
        warnings.warn(f"PyTorch {torch.__version__} no longer has oneDNN#6035: drop models/onednn_guard.py")
