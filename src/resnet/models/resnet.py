"""ResNet = stem -> stages (layer1..layerN) -> head, for every block type and depth."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from . import hub
from .blocks import block_class
from .layers import SHORTCUT_OPTIONS, use_ghost_batch_norm
from .whitening import init_whitening
from ..errors import ConfigError

STEMS = ("imagenet", "cifar", "whiten")
# The image side each stem was designed for: ImageNet crops [ResNet §3.4], CIFAR images [§4.2];
# the whitening stem is the CIFAR speedruns' (Page; tysam-code hlb-CIFAR10; Keller Jordan's airbench).
STEM_INPUT_SIZE = {"imagenet": 224, "cifar": 32, "whiten": 32}
WHITEN_KERNEL = 2  # 2x2 patches, airbench's choice (hlb-CIFAR10 used 3x3)
WHITEN_EPS = 5e-4  # the whitening stem's eigenvalue floor by default (airbench's)
POOLS = ("avg", "max")


@dataclass(frozen=True)
class ResNetConfig:
    """Everything that defines a network; a checkpoint stores it to rebuild the model alone."""

    block: str = "basic"  # a key of blocks.BLOCKS
    layers: tuple[int, ...] = (2, 2, 2, 2)  # blocks per stage
    widths: tuple[int, ...] = (64, 128, 256, 512)  # planes per stage (x block expansion = output channels)
    stem: str = "imagenet"  # "imagenet": 7x7/2 conv + 3x3/2 max-pool; "cifar": 3x3 conv, stride 1;
    # "whiten": fixed 2x2 whitening filters (2 * in_chans * 4 = stem_width), GELU (the CIFAR speedruns)
    stem_width: int = 64
    shortcut: str = "B"  # option A / B / C [ResNet §3.3]
    num_classes: int = 1000
    in_chans: int = 3
    zero_init_residual: bool = False
    drop_path_rate: float = 0.0
    pool: str = "avg"  # global pooling before the classifier: avg [ResNet §3.4] or max (the speedruns)
    logit_scale: float = 1.0  # multiplies the logits (airbench: 1/9, a fixed temperature)
    whiten_eps: float = WHITEN_EPS  # the whitening stem's eigenvalue floor (airbench's): a patch direction of
    # variance v is scaled by 1/sqrt(v + eps), so the weakest ones are not blown up
    ghost_batch: int = 0  # training BN statistics over groups of this many images (ghost batch norm); 0: the batch's

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(int(n) for n in self.layers))
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        block_class(self.block)  # validates the name
        if len(self.layers) != len(self.widths) or not self.layers:
            raise ConfigError(f"layers {self.layers} and widths {self.widths} must be non-empty and of equal length")
        if any(n < 1 for n in self.layers) or any(w < 1 for w in self.widths):
            raise ConfigError(f"every stage needs >= 1 block and width >= 1, got layers={self.layers} widths={self.widths}")
        if self.stem not in STEMS:
            raise ConfigError(f"stem must be one of {STEMS}, got {self.stem!r}")
        if self.shortcut not in SHORTCUT_OPTIONS:
            raise ConfigError(f"shortcut must be one of {SHORTCUT_OPTIONS}, got {self.shortcut!r}")
        if self.num_classes < 0 or self.in_chans < 1 or self.stem_width < 1:
            raise ConfigError("num_classes must be >= 0 (0: no classifier), in_chans and stem_width >= 1")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ConfigError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.pool not in POOLS:
            raise ConfigError(f"pool must be one of {POOLS}, got {self.pool!r}")
        if self.ghost_batch < 0:
            raise ConfigError(f"ghost_batch must be >= 0 images (0: off), got {self.ghost_batch}")
        if self.whiten_eps <= 0:
            raise ConfigError(f"whiten_eps must be > 0, got {self.whiten_eps}")
        if self.whiten_eps != WHITEN_EPS and self.stem != "whiten":  # (it would be ignored without a word)
            raise ConfigError(f"whiten_eps is the whitening stem's floor; stem={self.stem} has no whitening: leave it out")
        if self.stem == "whiten" and self.stem_width != 2 * self.in_chans * WHITEN_KERNEL ** 2:
            raise ConfigError(f"a whitening stem on {self.in_chans} channels has stem_width "
                             f"{2 * self.in_chans * WHITEN_KERNEL ** 2}, got {self.stem_width}")

    @property
    def depth(self) -> int:
        """Weighted layers as the papers count them: stem conv + convs in blocks + fc."""
        convs = 3 if block_class(self.block).bottleneck else 2
        return 2 + convs * sum(self.layers)

    @property
    def input_size(self) -> int:
        """The native image side of the stem: 224 (ImageNet stem) or 32 (CIFAR stem)."""
        return STEM_INPUT_SIZE[self.stem]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["layers"], d["widths"] = list(self.layers), list(self.widths)
        return d


class ResNet(nn.Module):
    """Residual (or plain) network; parameter names follow torchvision (conv1, bn1, layerN, fc)."""

    def __init__(self, config: ResNetConfig | None = None, **kwargs):
        super().__init__()
        config = dataclasses.replace(config, **kwargs) if config else ResNetConfig(**kwargs)
        self.config = config
        block = block_class(config.block)
        self.preact = block.preact
        self._make_stem(config)
        in_planes = config.stem_width
        total, index = sum(config.layers), 0
        for i, (n, planes) in enumerate(zip(config.layers, config.widths)):
            stage = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                drop = config.drop_path_rate * index / max(total - 1, 1)  # linear decay rule
                stage.append(block(in_planes, planes, stride, config.shortcut, drop))
                in_planes, index = planes * block.expansion, index + 1
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self.num_stages = len(config.layers)
        self.num_features = in_planes
        # Pre-activation nets end with BN-ReLU before pooling [Identity Mappings §4, Fig. 4(e)].
        self.final_bn = nn.BatchNorm2d(in_planes) if self.preact else None
        # named avgpool whatever it does: torchvision's module names (it holds no parameters)
        self.avgpool = nn.AdaptiveMaxPool2d(1) if config.pool == "max" else nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, config.num_classes) if config.num_classes else nn.Identity()
        if config.ghost_batch:
            use_ghost_batch_norm(self, config.ghost_batch)
        self.init_weights()

    def _make_stem(self, config: ResNetConfig) -> None:
        if config.stem == "imagenet":  # 7x7/2 conv, 3x3/2 max-pool [ResNet Table 1]
            self.conv1 = nn.Conv2d(config.in_chans, config.stem_width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        elif config.stem == "whiten":  # fixed filters from the data (init_from_data), then GELU; no BN
            self.conv1 = nn.Conv2d(config.in_chans, config.stem_width, WHITEN_KERNEL, padding=0, bias=True)
            self.conv1.weight.requires_grad_(False)
            self.maxpool = nn.GELU()  # the stem's last step, under the name the other stems use for theirs
        else:  # 3x3 conv with 16 filters on 32x32 inputs [ResNet §4.2]
            self.conv1 = nn.Conv2d(config.in_chans, config.stem_width, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        # A pre-activation net's first block normalises its own input, so its stem is the conv alone;
        # the whitening stem's output is already normalised.
        self.bn1 = None if self.preact or config.stem == "whiten" else nn.BatchNorm2d(config.stem_width)
        self.relu = nn.ReLU(inplace=True)

    def init_weights(self) -> None:
        """He (MSRA) init for convs [ResNet §3.4], BN = identity, then each block's own init where it has one;
        the one place weights are initialised."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                m.reset_parameters()
        if self.config.stem == "whiten":
            nn.init.zeros_(self.conv1.bias)
        for stage in self.stages():  # blocks with an init of their own (the speedrun block's identity filters)
            for blk in stage:
                if hasattr(blk, "init_weights"):
                    blk.init_weights()
        if self.config.zero_init_residual:  # each block starts as an identity (Goyal et al. 2017)
            for stage in self.stages():
                for blk in stage:
                    blk.zero_init_last()

    @property
    def needs_data_init(self) -> bool:
        """Whether `init_from_data` should run before training (the whitening stem)."""
        return self.config.stem == "whiten"

    def init_from_data(self, images: torch.Tensor) -> None:
        """Data-dependent initialisation, before training: the whitening stem's fixed filters from
        normalised training images (N x C x H x W; a few thousand suffice)."""
        if self.needs_data_init:
            init_whitening(self.conv1, images, self.config.whiten_eps)

    def train_whiten_bias(self, on: bool) -> None:
        """Train the whitening stem's bias or freeze it (airbench freezes it after 3 epochs): frozen, no
        gradient flows into the first block's input any more."""
        if self.config.stem != "whiten":
            raise ConfigError(f"only a whitening stem has a bias to freeze; this network's stem is {self.config.stem!r}")
        self.conv1.bias.requires_grad_(on)

    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if self.bn1 is not None:
            x = self.relu(self.bn1(x))
        return self.maxpool(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and stages; returns the last feature map (N, num_features, H/32 or H/4, ...)."""
        x = self.forward_stem(x)
        for stage in self.stages():
            x = stage(x)
        if self.final_bn is not None:
            x = self.relu(self.final_bn(x))
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pooling then the classifier (skipped with `pre_logits`)."""
        x = torch.flatten(self.avgpool(x), 1)
        if pre_logits:
            return x
        x = self.fc(x)
        # the logits' temperature: a headless net (num_classes=0) returns its pooled features as they are
        return x * self.config.logit_scale if self.config.logit_scale != 1.0 and self.config.num_classes else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def save_pretrained(self, folder, history: list[dict] | None = None, license: str | None = None):
        """A hub-style folder (model.safetensors, config.json, README.md) that `resnet.from_pretrained`
        reads back; the preprocessing and class names come from `self.pretrained_meta` (see models/hub.py)."""
        return hub.save_pretrained(self, folder, getattr(self, "pretrained_meta", None), history, license)

    def reset_classifier(self, num_classes: int) -> None:
        """A new, freshly initialised classifier for `num_classes` (0 removes it)."""
        if num_classes < 0:
            raise ConfigError(f"num_classes must be >= 0, got {num_classes}")
        old = next(self.fc.parameters(), None) if isinstance(self.fc, nn.Linear) else None
        like = old if old is not None else next(self.parameters())  # a bf16 model keeps a bf16 head
        self.fc = (nn.Linear(self.num_features, num_classes, device=like.device, dtype=like.dtype)
                   if num_classes else nn.Identity())
        self.config = dataclasses.replace(self.config, num_classes=num_classes)
