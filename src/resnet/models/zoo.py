"""Registered variants of both papers; each builder lists only what differs from ResNetConfig."""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import re
import typing
from dataclasses import dataclass
from typing import Callable

from ..config import coerce_value
from ..errors import ConfigError, UnknownArgumentError
from .blocks import block_class
from .resnet import ResNet, ResNetConfig

IMAGENET_WIDTHS = (64, 128, 256, 512)
CIFAR_WIDTHS = (16, 32, 64)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    config: ResNetConfig
    paper: str  # where the paper describes it

    @property
    def input_size(self) -> int:
        """The native image side: 224 for ImageNet nets, 32 for CIFAR nets (from the stem)."""
        return self.config.input_size


_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, paper: str, **config) -> None:
    if name in _REGISTRY:
        raise ConfigError(f"model {name!r} is registered twice")
    _REGISTRY[name] = ModelEntry(name, ResNetConfig(**config), paper)


def cifar_config(depth: int, block: str = "basic", **overrides) -> dict:
    """Config of a CIFAR net of `depth`: 6n+2 with two-conv blocks, 9n+2 with bottlenecks [ResNet §4.2]."""
    convs = 3 if block_class(block).bottleneck else 2
    n, rest = divmod(depth - 2, 3 * convs)
    if rest or n < 1:
        raise ConfigError(f"a CIFAR {block} net has depth {3 * convs}n+2 (e.g. {3 * convs + 2}, {6 * convs + 2}); got {depth}")
    base = dict(block=block, layers=(n, n, n), widths=CIFAR_WIDTHS, stem="cifar", stem_width=16, num_classes=10)
    return {**base, **overrides}


IMAGENET_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
                   152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}


def _register_all() -> None:
    for d in (18, 34, 50, 101, 152):
        register(f"resnet{d}", "ResNet Table 1", block="basic" if d < 50 else "bottleneck", layers=IMAGENET_LAYERS[d])
    for d in (50, 101, 152):
        register(f"resnet{d}_v1", "ResNet Table 1 (stride on 1x1)", block="bottleneck_v1", layers=IMAGENET_LAYERS[d])
    for d in (18, 34):
        register(f"plain{d}", "ResNet §4.1, Fig. 3", block="plain_basic", layers=IMAGENET_LAYERS[d])
    for d in (20, 32, 44, 56, 110, 1202):
        register(f"resnet{d}", "ResNet §4.2, Table 6", **cifar_config(d, shortcut="A"))
    for d in (20, 32, 44, 56, 110):
        register(f"plain{d}", "ResNet §4.2, Fig. 6", **cifar_config(d, "plain_basic"))
    # Identity Mappings: Table 2 has ResNet-110 and -164 (activation orders), Table 3 and 4 add ResNet-1001;
    # Table 5 the ImageNet ResNet-152 and -200 (18 to 101 are the same units at torchvision's depths)
    register("preact_resnet110", "Identity Mappings Table 2", **cifar_config(110, "preact_basic"))
    register("preact_resnet164", "Identity Mappings Table 2", **cifar_config(164, "preact_bottleneck"))
    register("preact_resnet1001", "Identity Mappings Table 3", **cifar_config(1001, "preact_bottleneck"))
    for d in (18, 34, 50, 101, 152, 200):
        block = "preact_basic" if d < 50 else "preact_bottleneck"
        register(f"preact_resnet{d}", "Identity Mappings Table 5", block=block, layers=IMAGENET_LAYERS[d])
    # The CIFAR speedrun network (recipe cifar10_speedrun): airbench94's widths and whitening stem with
    # Page's / hlb-CIFAR10's residual branch in every stage; 8 weighted layers.
    register("speedrun_resnet8", "Page 2018 ResNet-9; hlb-CIFAR10; airbench94", block="speedrun",
             layers=(1, 1, 1), widths=(64, 256, 256), stem="whiten", stem_width=24, num_classes=10,
             pool="max", logit_scale=1 / 9)


_register_all()


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style pattern, in natural order (resnet18 < resnet101)."""
    return sorted(fnmatch.filter(_REGISTRY, pattern), key=_natural_key)


def get_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `resnet models` for every name"
        raise ConfigError(f"unknown model {name!r}{hint}") from None


def _refuse_shortcut_args(label: str, block: str, kwargs: dict) -> None:
    """A plain net has no identity path: `shortcut=` and `drop_path_rate=` would be silently ignored."""
    if not block_class(block).plain:
        return
    given = [f"{k}={kwargs[k]!r}" for k in ("shortcut", "drop_path_rate")
             if k in kwargs and not (k == "drop_path_rate" and kwargs[k] == 0)]
    if given:
        raise ConfigError(f"{label} is a plain network: plain nets have no shortcuts, so {' and '.join(given)} would "
                         "have nothing to act on (drop_path_rate drops residual branches); use a resnet for those")


def check_model_args(name: str, **kwargs) -> ResNetConfig:
    """The config `create_model(name, **kwargs)` would build, checked without building anything: an
    unknown name or key, a bad value, or an argument the network cannot use raises here."""
    entry = get_entry(name)
    fields = set(ResNetConfig.__dataclass_fields__)
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        close = [c for k in unknown for c in difflib.get_close_matches(k, fields, n=1)]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownArgumentError(f"model {name!r} got unknown argument(s) {unknown}{hint} "
                                   f"(valid: {', '.join(sorted(fields))})")
    # typed as the config file's keys are: a wrong type is one ConfigError naming the key, not a TypeError deep
    # in the network's construction (model_args.widths=4,8,8 is the string '4,8,8'; zero_init_residual=maybe)
    hints = typing.get_type_hints(ResNetConfig)
    kwargs = {k: coerce_value(v, hints[k], f"model_args.{k}") for k, v in kwargs.items()}
    config = dataclasses.replace(entry.config, **kwargs)
    _refuse_shortcut_args(name, config.block, kwargs)
    return config


def create_model(name: str, **kwargs) -> ResNet:
    """Build a registered network; kwargs override its config (num_classes, shortcut, drop_path_rate, ...)."""
    model = ResNet(check_model_args(name, **kwargs))
    model.model_name = name
    return model


def build_resnet(depth: int | None = None, block: str = "basic", *, layers=None, widths=None,
                 stem: str | None = None, **kwargs) -> ResNet:
    """A network of any depth or shape without writing a class.

    `build_resnet(1001, "preact_bottleneck")` gives a CIFAR net of that depth (with basic blocks the paper's
    option-A shortcuts, as `resnet56`; `shortcut=` to choose); `layers=`,
    `widths=` and `stem=` describe any other shape, e.g. a 10-stage plain net:
    `build_resnet(block="plain_basic", layers=[1]*10, widths=[16]*10, stem="cifar")`.
    """
    _refuse_shortcut_args(f"block {block!r}", block, kwargs)
    if layers is None:
        if depth is None:
            raise ConfigError("give a depth (CIFAR-style 6n+2 / 9n+2) or layers=[blocks per stage]")
        # basic blocks take option A as the paper's CIFAR ResNets do (resnet20..1202); other blocks the config's B
        config = cifar_config(depth, block, **({"shortcut": "A"} if block == "basic" else {}))
        if widths is not None:
            config["widths"] = tuple(widths)
        if stem is not None:
            config["stem"] = stem
        return ResNet(ResNetConfig(**{**config, **kwargs}))
    layers = tuple(layers)
    cifar = (stem or "imagenet") == "cifar"
    defaults = dict(widths=CIFAR_WIDTHS if cifar else IMAGENET_WIDTHS, stem_width=16 if cifar else 64)
    if widths is None and len(layers) != len(defaults["widths"]):
        raise ConfigError(f"{len(layers)} stages need widths= of the same length")
    config = dict(defaults, block=block, layers=layers, stem=stem or "imagenet")
    if widths is not None:
        config["widths"] = tuple(widths)
    return ResNet(ResNetConfig(**{**config, **kwargs}))
