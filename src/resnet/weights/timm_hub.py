"""timm's ImageNet ResNets by name: `timm:resnet50.a1_in1k` and its siblings.

The weights Ross Wightman trained for "ResNet strikes back" (arXiv:2110.00476), published on the
Hugging Face hub as `timm/<arch>.<tag>` (Apache-2.0). timm's `resnet18` ... `resnet152` have
torchvision's parameter names and shapes (tests/fixtures/timm_resnets.json), so the files load
strictly into this toolkit's models of the same name.

Preprocessing and accuracy are timm's published ones at its *test* size (its results tables use
`test_input_size`): `_rcfg` weights were trained at 224 with crop_pct 0.95 and are tested at 288
with crop_pct 1.0 (shorter side to 288, bicubic, no crop margin); `a3` weights were trained at 160
and are tested at 224 with crop_pct 0.95 (shorter side to floor(224 / 0.95) = 235). The hub gives no
hash in the file name: a download is checked against the sha256 the hub states for the file.
"""
from __future__ import annotations

from .preprocess import Preprocess
from .sources import WeightSource, register

HUB = "https://huggingface.co/{repo}/resolve/main/model.safetensors"
RELEASES = "https://github.com/huggingface/pytorch-image-models/releases/download/v0.1-rsb-weights/"
# timm's pretrained_cfg templates in timm/models/resnet.py: _rcfg (A1/A2/A1h) and _r3cfg (A3)
_RCFG = {"input_size": [3, 224, 224], "crop_pct": 0.95, "test_input_size": [3, 288, 288], "test_crop_pct": 1.0}
_R3CFG = {"input_size": [3, 160, 160], "crop_pct": 0.95, "test_input_size": [3, 224, 224], "test_crop_pct": 0.95}
# (arch, tag, template, timm's original release file, top-1/top-5 at the test size, top-1/top-5 at the train size)
# accuracies: timm's model cards' comparison table (ImageNet-1k validation)
TABLE = [
    ("resnet18", "a1_in1k", _RCFG, "resnet18_a1_0-d63eafa0.pth", (73.16, 91.03), (71.49, 90.07)),
    ("resnet34", "a1_in1k", _RCFG, "resnet34_a1_0-46f8f793.pth", (77.92, 93.77), (76.42, 92.87)),
    ("resnet50", "a1_in1k", _RCFG, "resnet50_a1_0-14fe96d1.pth", (81.22, 95.11), (80.38, 94.60)),
    ("resnet50", "a2_in1k", _RCFG, "resnet50_a2_0-a2746f79.pth", (80.78, 94.99), (79.85, 94.56)),
    ("resnet50", "a3_in1k", _R3CFG, "resnet50_a3_0-59cae1ef.pth", (78.06, 93.78), (75.96, 92.50)),
    ("resnet101", "a1h_in1k", _RCFG, "resnet101_a1h-36d3f2aa.pth", (82.80, 96.32), (81.93, 95.75)),
    ("resnet101", "a1_in1k", _RCFG, "resnet101_a1_0-cdcb52a9.pth", (82.31, 95.63), (81.50, 95.16)),
    ("resnet152", "a1h_in1k", _RCFG, "resnet152_a1h-dc400468.pth", (83.46, 96.54), (82.80, 96.13)),
]
DEFAULT_TAGS = {"timm:resnet18": "a1_in1k", "timm:resnet34": "a1_in1k", "timm:resnet50": "a1_in1k",
                "timm:resnet101": "a1h_in1k", "timm:resnet152": "a1h_in1k"}  # the first tag timm lists per arch


def _source(arch: str, tag: str, cfg: dict, release: str, test_acc, train_acc) -> WeightSource:
    repo = f"timm/{arch}.{tag}"
    size = cfg["test_input_size"][-1]
    pre = Preprocess.from_crop_pct(size, cfg["test_crop_pct"], interpolation="bicubic")  # ImageNet mean/std
    timm_cfg = {**cfg, "interpolation": "bicubic", "hf_hub_id": repo, "url": RELEASES + release,
                "paper_ids": "arXiv:2110.00476", "origin_url": "https://github.com/huggingface/pytorch-image-models",
                "acc_at_input_size": {"top1": train_acc[0], "top5": train_acc[1]}}
    return WeightSource(f"timm:{arch}.{tag}", arch, HUB.format(repo=repo), pre, acc1=test_acc[0], acc5=test_acc[1],
                        license="Apache-2.0", cache_name=f"timm-{arch}.{tag}.safetensors", hf_repo=repo,
                        pretrained_cfg=timm_cfg,
                        notes=f"tested at {size} (trained at {cfg['input_size'][-1]}: {train_acc[0]}% top-1)")


register(*[_source(*row) for row in TABLE], defaults=DEFAULT_TAGS)
