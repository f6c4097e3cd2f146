"""Does the installed PyTorch still have oneDNN#6035? Prints 'fixed' or how the bug shows.

    .venv/bin/python tools/check_onednn_6035.py
When it prints 'fixed', src/resnet/models/onednn_guard.py (and its use in layers.conv1x1) can go.
"""
import torch

from resnet.models.onednn_guard import probe_onednn_6035

if __name__ == "__main__":
    print(f"PyTorch {torch.__version__}: oneDNN#6035 {probe_onednn_6035()}")
