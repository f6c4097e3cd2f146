"""Residual, pre-activation and plain blocks; interchangeable, built by `make_block`.

Every block takes (in_planes, planes, stride, shortcut, drop_path) and exposes `expansion`
(output channels = planes * expansion) and `zero_init_last()`. Each block class also declares its
traits, so nothing else reads them from its name: `preact` (BN-ReLU before each conv, nothing after
the addition), `plain` (no shortcut: `shortcut` and `drop_path` have nothing to act on),
`bottleneck` (1x1-3x3-1x1, three convs a block), `response_layers` (the modules whose outputs
ResNet Fig. 7 measures: each 3x3 conv after its BN, before ReLU or the addition) and
`original_unit` (for a pre-activation block, the block name of the original unit it is compared
with [Identity Mappings Table 3]). A new block type declares them too.
"""
from __future__ import annotations

import torch
from torch import nn

from .layers import DropPath, conv1x1, conv3x3, make_shortcut
from ..errors import ConfigError


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, + shortcut, ReLU [ResNet Fig. 2, Fig. 5 left]."""

    expansion = 1
    preact = plain = bottleneck = False
    response_layers: tuple[str, ...] = ("bn1", "bn2")
    original_unit: str | None = None

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str | None = "B", drop_path: float = 0.0):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, out)
        self.bn2 = nn.BatchNorm2d(out)
        self.downsample = make_shortcut(shortcut, in_planes, out, stride)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.drop_path(self.residual(x)) + identity)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)


class Bottleneck(nn.Module):
    """1x1-BN-ReLU-3x3-BN-ReLU-1x1-BN, + shortcut, ReLU [ResNet Fig. 5 right].

    Stride on the 3x3 conv ("v1.5", torchvision's default): about 0.5% better top-1 than
    the paper's stride on the first 1x1 (see `BottleneckV1`), for 6% more MACs.
    """

    expansion = 4
    has_shortcut = True
    stride_on_1x1 = False
    preact = plain = False
    bottleneck = True
    response_layers = ("bn2",)  # the 3x3 conv's BN
    original_unit = None

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str | None = "B", drop_path: float = 0.0):
        super().__init__()
        out = planes * self.expansion
        s1, s3 = (stride, 1) if self.stride_on_1x1 else (1, stride)
        self.conv1 = conv1x1(in_planes, planes, s1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, s3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = make_shortcut(shortcut, in_planes, out, stride)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))

    forward = BasicBlock.forward

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)


class BottleneckV1(Bottleneck):
    """The paper's bottleneck: stride on the first 1x1 conv [ResNet §3.3, Table 1]."""

    stride_on_1x1 = True


class PreActBasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3, + identity; nothing after the addition [Identity Mappings Fig. 4(e)].

    A projection shortcut (conv only) takes the pre-activated input, as in the authors' code.
    """

    expansion = 1
    preact, plain, bottleneck = True, False, False
    response_layers = ("conv1", "conv2")  # no BN follows a conv here: the 3x3 convs' own outputs stand in
    original_unit = "basic"

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str | None = "B", drop_path: float = 0.0):
        super().__init__()
        out = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = make_shortcut(shortcut, in_planes, out, stride, norm=False)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def residual(self, preact: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.bn2(self.conv1(preact))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = self.relu(self.bn1(x))
        identity = x if self.downsample is None else self.downsample(preact)
        return self.drop_path(self.residual(preact)) + identity

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv2.weight)


class PreActBottleneck(nn.Module):
    """BN-ReLU-1x1-BN-ReLU-3x3-BN-ReLU-1x1, + identity [Identity Mappings Fig. 4(e)]; stride on the 3x3."""

    expansion = 4
    preact, plain, bottleneck = True, False, True
    response_layers = ("conv2",)  # the 3x3 conv's own output
    original_unit = "bottleneck"

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str | None = "B", drop_path: float = 0.0):
        super().__init__()
        out = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = conv1x1(in_planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = make_shortcut(shortcut, in_planes, out, stride, norm=False)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def residual(self, preact: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn2(self.conv1(preact)))
        out = self.relu(self.bn3(self.conv2(out)))
        return self.conv3(out)

    forward = PreActBasicBlock.forward

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv3.weight)


class PlainBasicBlock(BasicBlock):
    """BasicBlock without the shortcut: the paper's plain baseline [ResNet §4.1, Fig. 3 middle]."""

    plain = True  # no identity path: `shortcut` and `drop_path` would have nothing to act on

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str | None = "B", drop_path: float = 0.0):
        super().__init__(in_planes, planes, stride, shortcut=None)  # `shortcut`, `drop_path`: no branch to apply them to

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.residual(x))

    def zero_init_last(self) -> None:
        pass  # zeroing the last BN of a plain block would cut the signal, not make an identity


class PlainBottleneck(Bottleneck):
    """Bottleneck without the shortcut, for plain nets of any depth."""

    plain = True  # no identity path: `shortcut` and `drop_path` would have nothing to act on

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str | None = "B", drop_path: float = 0.0):
        super().__init__(in_planes, planes, stride, shortcut=None)

    forward = PlainBasicBlock.forward
    zero_init_last = PlainBasicBlock.zero_init_last


def frozen_scale_bn(channels: int) -> nn.BatchNorm2d:
    """BatchNorm whose scale stays 1 (only the shift trains): the speedruns' "BN with frozen scales".
    Before a ReLU-like unit a learned scale mostly trades off against the next layer's weights; fixing
    it removes that redundancy (Page, "How to train your ResNet" part 8; hlb-CIFAR10; airbench).
    Statistics as airbench94's BatchNorm: eps 1e-12, running averages at momentum 0.4 (its 0.6 in the
    other convention): fast enough to follow the lookahead's jumps of the weights."""
    bn = nn.BatchNorm2d(channels, eps=1e-12, momentum=0.4)
    bn.weight.requires_grad_(False)
    return bn


class SpeedrunBlock(nn.Module):
    """conv3x3-maxpool/2-BN-GELU, then + [conv3x3-BN-GELU] as a residual branch: one stage of the
    CIFAR speedrun ResNets (Page's ResNet-9 "residual layer", hlb-CIFAR10's ConvGroup).

    A block that changes the width or gets stride 2 (each stage's first in the speedrun nets: the stem
    is 24 wide) halves the resolution by its max-pool, and its shortcut is the identity around the
    second conv. Further blocks in a stage (layers > 1: same width, stride 1) keep the resolution and
    add [conv3x3-BN-GELU-conv3x3-BN-GELU] to their input. BN scales are frozen at 1
    (`frozen_scale_bn`); GELU as airbench."""

    expansion = 1
    has_shortcut = True  # drop_path acts on the branch; the shortcut is always the identity (no option)
    preact = plain = bottleneck = False
    response_layers = ("bn2",)  # the residual branch's conv, after its BN, before GELU and the addition
    original_unit = None

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str | None = "B", drop_path: float = 0.0):
        super().__init__()
        self.pools = stride != 1 or in_planes != planes  # else the identity can go around both convs
        self.conv1 = conv3x3(in_planes, planes)
        self.pool = nn.MaxPool2d(2) if self.pools else nn.Identity()
        self.bn1 = frozen_scale_bn(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = frozen_scale_bn(planes)
        self.act = nn.GELU()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.pool(self.conv1(x))))
        return (y if self.pools else x) + self.drop_path(self.act(self.bn2(self.conv2(y))))

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv2.weight)  # the BN scale is frozen: zero the conv that feeds it instead

    @torch.no_grad()
    def init_weights(self) -> None:
        """airbench's init: PyTorch's default for each conv, then its first in_channels filters set to
        the identity (dirac), an implicit shortcut in every conv (airbench's ablations: 21 -> 18 epochs
        to 94%)."""
        for conv in (self.conv1, self.conv2):
            conv.reset_parameters()
            nn.init.dirac_(conv.weight[:conv.in_channels])


BLOCKS: dict[str, type[nn.Module]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
    "bottleneck_v1": BottleneckV1,
    "preact_basic": PreActBasicBlock,
    "preact_bottleneck": PreActBottleneck,
    "plain_basic": PlainBasicBlock,
    "plain_bottleneck": PlainBottleneck,
    "speedrun": SpeedrunBlock,
}


def block_class(name: str) -> type[nn.Module]:
    try:
        return BLOCKS[name]
    except KeyError:
        raise ConfigError(f"unknown block {name!r}; choose one of {sorted(BLOCKS)}") from None

