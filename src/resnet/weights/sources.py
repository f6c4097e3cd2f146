"""Pretrained weights by name, with the preprocessing they need, and the class names they predict.

``torchvision:resnet50.IMAGENET1K_V2``, ``akamaster:resnet20``, ``timm:resnet50.a1_in1k`` name
published files: each is downloaded once from its official address, checked against its sha256
(the prefix in the file name, as ``torch.hub`` does, or the hash the server states for hub files),
and cached where torchvision caches (``$RESNET_WEIGHTS``, else ``$TORCH_HOME/hub/checkpoints``), so
files fetched by torchvision, or placed there by hand on a machine without internet, are reused.
Every source carries its evaluation preprocessing (resize, crop, mean, std, interpolation): a
mismatch there is the most common reason pretrained ResNets score badly. The schemes other than
torchvision register their sources from their own modules (``akamaster.py``, ``timm_hub.py``).
"""
from __future__ import annotations

import functools
import os
import re
import urllib.request
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from .. import files
from ..errors import ConfigError, WeightsError, WeightsUnavailableError
from .hf import cached_file
from .preprocess import Preprocess

SCHEMES = ("torchvision", "akamaster", "timm")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class WeightSource:
    name: str  # e.g. torchvision:resnet50.IMAGENET1K_V2
    model: str  # the registered model these weights fit
    url: str
    preprocess: Preprocess = field(default_factory=Preprocess)
    num_classes: int = 1000
    acc1: float | None = None  # the publisher's top-1 accuracy (%) on `dataset`'s test/validation set, at `preprocess`
    acc5: float | None = None
    model_args: dict = field(default_factory=dict, compare=False)  # beyond num_classes, e.g. for test doubles
    dataset: str = "ImageNet-1k"
    license: str = "BSD-3-Clause"
    classes: str = "imagenet"  # the names the outputs carry: "imagenet" or "cifar10"
    layout: str = "torchvision"  # the state dict's layout: "torchvision" (ours) or "akamaster" (converted on load)
    sha256: str | None = None  # the full hash, where the file name carries none
    cache_name: str | None = None  # the cached file's name where the address's is not unique (model.safetensors)
    hf_repo: str | None = None  # also found in the Hugging Face hub cache (where timm keeps it)
    pretrained_cfg: dict = field(default_factory=dict, compare=False)  # the publisher's own fields (timm)
    notes: str = ""

    @property
    def filename(self) -> str:
        return self.cache_name or self.url.rsplit("/", 1)[-1]

    @property
    def sha256_prefix(self) -> str | None:
        """The sha256 (or its start) the file must have: `sha256`, else the hex after the file name's last dash."""
        if self.sha256:
            return self.sha256
        stem = self.url.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        tail = stem.rsplit("-", 1)[-1] if "-" in stem else ""
        return tail if re.fullmatch(r"[0-9a-f]{8,64}", tail) else None

    def class_names(self) -> list[str] | None:
        if self.classes == "cifar10":
            return list(CIFAR10_CLASSES)
        return list(imagenet_classes()) if self.num_classes == 1000 else None


SOURCES: dict[str, WeightSource] = {}
DEFAULTS: dict[str, str] = {}  # "scheme:model" -> the tag that "scheme:model" alone means


def register(*sources: WeightSource, defaults: dict[str, str] | None = None) -> None:
    """Add named sources (each scheme's module calls this once); `defaults` maps scheme:model -> tag."""
    for s in sources:
        if s.name.split(":", 1)[0] not in SCHEMES:
            raise ConfigError(f"{s.name}: the scheme must be one of {SCHEMES}")
        SOURCES[s.name] = s
    DEFAULTS.update(defaults or {})


_V1, _V2 = Preprocess(resize=256), Preprocess(resize=232)  # torchvision's ImageClassification presets
_BASE = "https://download.pytorch.org/models/"
register(*[
    WeightSource("torchvision:resnet18.IMAGENET1K_V1", "resnet18", _BASE + "resnet18-f37072fd.pth", _V1, acc1=69.758, acc5=89.078),
    WeightSource("torchvision:resnet34.IMAGENET1K_V1", "resnet34", _BASE + "resnet34-b627a593.pth", _V1, acc1=73.314, acc5=91.420),
    WeightSource("torchvision:resnet50.IMAGENET1K_V1", "resnet50", _BASE + "resnet50-0676ba61.pth", _V1, acc1=76.130, acc5=92.862),
    WeightSource("torchvision:resnet50.IMAGENET1K_V2", "resnet50", _BASE + "resnet50-11ad3fa6.pth", _V2, acc1=80.858, acc5=95.434),
    WeightSource("torchvision:resnet101.IMAGENET1K_V1", "resnet101", _BASE + "resnet101-63fe2227.pth", _V1, acc1=77.374, acc5=93.546),
    WeightSource("torchvision:resnet101.IMAGENET1K_V2", "resnet101", _BASE + "resnet101-cd907fc2.pth", _V2, acc1=81.886, acc5=95.780),
    WeightSource("torchvision:resnet152.IMAGENET1K_V1", "resnet152", _BASE + "resnet152-394f9c45.pth", _V1, acc1=78.312, acc5=94.046),
    WeightSource("torchvision:resnet152.IMAGENET1K_V2", "resnet152", _BASE + "resnet152-f82ba261.pth", _V2, acc1=82.284, acc5=96.002),
], defaults={"torchvision:resnet18": "IMAGENET1K_V1", "torchvision:resnet34": "IMAGENET1K_V1",  # torchvision's DEFAULT
             "torchvision:resnet50": "IMAGENET1K_V2", "torchvision:resnet101": "IMAGENET1K_V2",
             "torchvision:resnet152": "IMAGENET1K_V2"})


# --------------------------------------------------------------------------- class names
@functools.lru_cache(maxsize=None)
def imagenet_classes() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names in torchvision's index order (shipped with the package)."""
    text = (resources.files("resnet.data") / "imagenet_classes.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)


@functools.lru_cache(maxsize=None)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1,000 WordNet ids (n01440764 ...) in index order: the sorted folder names of ImageNet's train/ and val/."""
    text = (resources.files("resnet.data") / "imagenet_wnids.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)


# --------------------------------------------------------------------------- sources
def is_named(spec) -> bool:
    """True for `scheme:name` specs of a known scheme (an existing file of that name wins)."""
    return isinstance(spec, str) and ":" in spec and spec.split(":", 1)[0] in SCHEMES and not Path(spec).exists()


def get_source(spec: str) -> WeightSource:
    """`torchvision:resnet50.IMAGENET1K_V2`, `akamaster:resnet20`, `timm:resnet50.a1_in1k`;
    `scheme:model` alone (or `.DEFAULT`) picks the publisher's default where it has one."""
    source = SOURCES.get(spec)
    if source is None:
        scheme, _, rest = spec.partition(":")
        model, _, tag = rest.partition(".")
        if tag in ("", "DEFAULT") and f"{scheme}:{model}" in DEFAULTS:
            source = SOURCES.get(f"{scheme}:{model}.{DEFAULTS[scheme + ':' + model]}")
    if source is None:
        raise ConfigError(f"unknown weights {spec!r}; named sources: {', '.join(SOURCES)} "
                         "(`resnet weights` lists them; or pass a local file or a hub-style folder)")
    return source


def weights_dir() -> Path:
    """Where named weights are downloaded to: $RESNET_WEIGHTS, else torch.hub's checkpoints folder
    ($TORCH_HOME/hub/checkpoints, ~/.cache/torch/hub/checkpoints), shared with torchvision."""
    env = os.environ.get("RESNET_WEIGHTS")
    return Path(env).expanduser() if env else Path(torch.hub.get_dir()) / "checkpoints"


def cache_dirs() -> list[Path]:
    """Where a named file is looked for: $RESNET_WEIGHTS, then torch.hub's checkpoints folder."""
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return list(dict.fromkeys([weights_dir(), hub]))


def sha256_of(path: Path) -> str:
    return files.file_hash(path, "sha256")


def find_cached(source: WeightSource) -> Path | None:
    """The file of `source` already on this machine: placed in a cache folder, or (hub files) in
    the Hugging Face cache where timm keeps its downloads. A placed file must have the right hash."""
    for folder in cache_dirs():
        path = folder / source.filename
        if path.is_file():
            expected = source.sha256_prefix
            if expected and not sha256_of(path).startswith(expected):
                raise WeightsError(f"{path} does not match {source.name} (its sha256 should start with "
                                   f"{expected[:8]}): delete it, or replace it with the file from {source.url}")
            return path
    if source.hf_repo:
        return cached_file(source.hf_repo, source.url.rsplit("/", 1)[-1])
    return None


def _offline_message(source: WeightSource, dest: Path, reason: str) -> str:
    check = f" (its sha256 starts with {source.sha256_prefix[:8]})" if source.sha256_prefix else ""
    return (f"cannot download {source.name} from {source.url} ({reason}). Without internet access, fetch "
            f"that file elsewhere and place it at {dest}{check}, or pass a local file with --weights PATH.")


class _RecordRedirects(urllib.request.HTTPRedirectHandler):
    """Keeps the headers of each redirect: the hub states a file's sha256 (X-Linked-Etag) on the
    redirect to its storage, not on the storage's answer."""

    def __init__(self):
        self.hops = []

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.hops.append(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def open_url(url: str, timeout: float):
    """urllib's urlopen, with the redirects' headers kept on the response (`redirect_headers`)."""
    recorder = _RecordRedirects()
    response = urllib.request.build_opener(recorder).open(url, timeout=timeout)
    response.redirect_headers = recorder.hops
    return response


def _server_sha256(response) -> str | None:
    """The sha256 a hub server states for an LFS file (X-Linked-Etag, or an ETag that is one), when it does."""
    for headers in [*getattr(response, "redirect_headers", []), getattr(response, "headers", None) or {}]:
        for key in ("X-Linked-Etag", "ETag"):
            value = str(headers.get(key) or "").strip().removeprefix("W/").strip('"').lower()
            if _HEX64.match(value):
                return value
    return None


def download(source: WeightSource, folder: Path | None = None, opener=None, stream=None) -> Path:
    """The local file of `source` (see `find_cached`), downloading and verifying it first when absent
    (`files.download`). `opener(url, timeout=...)` returns a file-like response (`open_url` by default;
    tests pass their own). The file appears in the cache only once its hash has been checked: against
    the source's own hash, else against the one the server states."""
    if folder is None and (cached := find_cached(source)) is not None:
        return cached
    folder = Path(folder) if folder is not None else weights_dir()
    dest = folder / source.filename
    if dest.is_file():
        if source.sha256_prefix and not sha256_of(dest).startswith(source.sha256_prefix):
            raise WeightsError(f"{dest} does not match {source.name} (its sha256 should start with "
                               f"{source.sha256_prefix[:8]}): delete it and try again")
        return dest
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WeightsUnavailableError(f"cannot create the weights cache {folder} ({e}); set $RESNET_WEIGHTS") from None

    def corrupt(got: str) -> WeightsError:
        want = f"{source.sha256_prefix[:16]}..." if source.sha256_prefix else "the one the server states"
        return WeightsError(f"the download of {source.url} is corrupt (sha256 {got[:16]}..., expected {want}); "
                            "nothing was cached, try again")
    return files.download(source.url, dest, "sha256", source.sha256_prefix,
                          lambda reason: WeightsUnavailableError(_offline_message(source, dest, reason)), corrupt,
                          opener=opener or open_url, stream=stream, stated=_server_sha256)
