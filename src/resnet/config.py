"""Training configuration: frozen dataclasses, YAML recipes and `section.key=value` overrides."""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from .errors import ConfigError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")  # auto: bf16 where the hardware runs it natively
INFERENCE_PRECISIONS = ("auto", "bf16", "fp32")  # eval/predict: fp16 only ever trained (CUDA loss scaling)


@dataclass(frozen=True)
class DataConfig:
    path: str = ""  # CIFAR folder or archive, or a class-per-folder image tree (or its .tar.gz)
    # Held out from the training set: a fraction when < 1, else a count. 10% gives the paper's 45k/5k
    # split of CIFAR-10 [ResNet §4.2] and works on a folder of any size, where a fixed count would not.
    val_size: float = 0.1
    batch_size: int = 128
    eval_batch_size: int = 1000
    pad: int = 4  # zero padding before the random crop [ResNet §4.2]
    pad_mode: str = "zeros"  # zeros [ResNet §4.2] | reflect (airbench's translation)
    # True: each image mirrored with probability 1/2 each epoch; "alternate": a random half mirrored, then all
    # of them flipped every other epoch, so each image alternates (airbench; in-memory data only)
    flip: bool | str = True
    cache_dir: str = ""  # where decoded images are cached; "" = the cache folder ($RESNET_CACHE, $XDG_CACHE_HOME/resnet, ~/.cache/resnet)
    skip_bad: bool = False  # leave out undecodable images (listed in RUN_DIR/skipped.txt) instead of stopping
    # Images over 64x64 (all images, with stream=true) are streamed through DataLoader workers:
    image_size: int = 224  # the training and evaluation crop of streamed images
    resize: int = 0  # evaluation: shorter side before the centre crop; 0 = image_size * 256/224
    augment: str = "paper"  # paper: scale 256-480, crop, flip, PCA lighting [ResNet §3.4] | rrc: random-resized crop, flip
    workers: int = -1  # DataLoader worker processes for streamed images; -1 = min(8, CPUs)
    stream: bool = False  # stream even images small enough to be held in memory
    # Seed of the train/val hold-out; -1 = the run's seed. Experiments fix it, so that every seed of a
    # network validates on the same images and `resnet eval --split val` finds them again.
    split_seed: int = -1
    # Train and test at different sizes (streamed images): torchvision v2 trains at 176 and tests at 224, RSB A3 160/224
    val_image_size: int = 0  # the evaluation crop; 0 = image_size (resize then defaults to val_image_size * 256/224)
    interpolation: str = "bilinear"  # bilinear | bicubic | nearest: resizing streamed images, the policies' geometric ops
    # Per-image augmentation after crop and flip (data/augment.py), in memory as batch ops, streamed in the workers:
    auto_augment: str = ""  # ra | ta_wide | imagenet | cifar10 (torchvision --auto-augment) | rand-m7-mstd0.5-inc1 (timm --aa)
    ra_magnitude: int = 9  # ra: the magnitude bin, of 31 (torchvision --ra-magnitude)
    random_erase: float = 0.0  # probability of erasing a box (torchvision --random-erase, timm --reprob)
    erase_mode: str = "const"  # const: the mean colour (torchvision) | pixel: per-pixel noise (timm --remode pixel)
    cutout: int = 0  # side of the square cut out of every image, pixels (DeVries & Taylor 2017: 16 on CIFAR-10)
    # The first early_crop_epochs train on random early_crop x early_crop crops of the unpadded images (no
    # padding, no Cutout; in-memory data): cheaper epochs, (early_crop/side)^2 of the compute (0 = off)
    early_crop: int = 0
    early_crop_epochs: int = 0
    no_augment_epochs: int = 0  # the last epochs train without the policy, erasing and Cutout (YOLOX's no_aug_epochs; in-memory data)
    # Batch mixing (data/mixing.py), as timm's Mixup; label_smoothing applies to the mixed targets
    mixup_alpha: float = 0.0  # timm --mixup, torchvision --mixup-alpha
    cutmix_alpha: float = 0.0  # timm --cutmix, torchvision --cutmix-alpha
    mixup_prob: float = 1.0  # probability that a batch is mixed at all (timm --mixup-prob)
    switch_prob: float = 0.5  # with both alphas: probability of CutMix instead of mixup (timm --mixup-switch-prob)
    repeated_aug: int = 1  # each image this many times an epoch, augmented apart (torchvision --ra-reps, timm --aug-repeats)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 0.1  # for the global batch
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    no_decay_bn_bias: bool = False  # exempt BN parameters and biases from weight decay
    bias_lr_scale: float = 1.0  # lr multiplier of BN parameters and biases (their decay per step unchanged)
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    name: str = "sgd"  # sgd | adamw | lamb (timm's, with its global gradient-norm clip at 1.0) | muon (conv filters; SGD the rest)
    betas: tuple[float, ...] = (0.9, 0.999)  # adamw, lamb
    eps: float = 0.0  # adamw, lamb; 0 = the optimizer's default (adamw 1e-8, lamb 1e-6)
    muon_lr: float = 0.24  # muon: the conv filters' peak lr (airbench94_muon's), shaped by the schedule
    muon_momentum: float = 0.6  # muon: the filters' Nesterov momentum (airbench94_muon's)
    muon_ns_steps: int = 3  # muon: Newton-Schulz iterations per step (airbench94_muon's 3; Keller Jordan's Muon 5)


@dataclass(frozen=True)
class ScheduleConfig:
    name: str = "step"  # step | cosine | onecycle | constant
    milestones: tuple[int, ...] = (32000, 48000)  # iterations where a step schedule multiplies lr by gamma
    gamma: float = 0.1
    warmup_steps: int = 0  # linear warm-up from warmup_start * lr (cosine, step, onecycle)
    warmup_start: float = 0.1
    warmup_lr: float = 0.0  # ResNet-110 [§4.2]: train at this lr until the training error of a global batch ...
    warmup_until_err: float = 0.0  # ... falls below this (%), then use lr (decided alike on every process)
    final_lr: float = 0.0  # fraction of lr reached at the end (cosine, onecycle)
    warmup_epochs: float = 0.0  # warm-up length in epochs instead of warmup_steps
    warmup_method: str = "linear"  # linear: warmup_start * lr up to lr | constant: warmup_start * lr throughout (torchvision)
    warmup_prefix: bool = False  # the cosine starts where the warm-up ends (torchvision's SequentialLR), not at step 0
    milestone_epochs: tuple[float, ...] = ()  # step schedule: milestones in epochs, instead of milestones (iterations)


@dataclass(frozen=True)
class TrainConfig:
    model: str = "resnet20"
    model_args: dict = field(default_factory=dict)  # passed to create_model (drop_path_rate, widths, ...)
    epochs: int = 182  # total epochs; 182 x 352 iterations = the paper's 64k
    seed: int = 0
    precision: str = "auto"  # auto | bf16 | fp16 | fp32
    # validation's precision: "train" = the training's, or auto | bf16 | fp32. Training compute budgets
    # (the speedrun's PFLOP) do not count it; fp32 scores the weights themselves, without bf16's rounding
    eval_precision: str = "train"
    channels_last: bool = True
    # torch.compile the training step: auto = where a short measured probe (cached per machine, network,
    # batch and precision) says it finishes the run sooner, compile time counted (engine/compile.py)
    compile: bool | str = "auto"
    weights: str = ""  # start from these weights: a file or e.g. torchvision:resnet50.IMAGENET1K_V2 (new head if sizes differ)
    accum_steps: int = 1  # gradient accumulation: each process's batch is split into this many chunks per update
    sync_bn: bool = False  # under torchrun: BatchNorm statistics of the global batch
    label_smoothing: float = 0.0
    ema_decay: float = 0.0  # 0 = no EMA of weights; evaluation uses the EMA when on
    tta_flip: bool = False  # average logits over the image and its mirror at evaluation
    tta_shift: int = 0  # also over copies shifted this many pixels up-left and down-right (airbench's TTA)
    eval_every: int = 1  # epochs between validations (the last epoch is always validated)
    checkpoint_minutes: float = 10.0  # also checkpoint mid-epoch this often (0 = only at epoch ends)
    nonfinite: str = "stop"  # a NaN/inf loss: stop (keeping the last good checkpoint) or skip the step
    loss: str = "ce"  # ce: cross-entropy, soft targets when mixing | bce: binary cross-entropy ("ResNet strikes back")
    bce_target_thresh: float = 0.0  # bce: targets above this become 1, the rest 0 (timm --bce-target-thresh); 0 = off
    ema_steps: int = 1  # update the EMA every this many steps (torchvision --model-ema-steps)
    # hlb-CIFAR10's / airbench's lookahead: an average of the weights that training is reset to every
    # lookahead_every steps from epoch lookahead_start on (engine/optim.py Lookahead); its decay per step
    # at the end of the run (airbench 0.95), 0 = off
    lookahead_decay: float = 0.0
    lookahead_every: int = 5
    lookahead_start: float = 3.0
    # a whitening stem's bias trains for this many epochs, then freezes (airbench's whiten_bias_train_steps:
    # 3 epochs); the first block's input gradient is then no longer computed (3.8% of the speedrun net's
    # training FLOPs). 0 = it trains the whole run
    whiten_bias_epochs: int = 0
    # selective backprop (Jiang et al. 2019, "Accelerating deep learning by focusing on the biggest losers"):
    # for select_epochs epochs from epoch select_start (0-based) each batch goes through a no-grad forward
    # first, and only its select_fraction with the highest loss is trained on; the training FLOPs count
    # both passes. select_fraction 1 = off. A negative select_epochs counts from the end: -3 = every epoch from
    # select_start but the last 3 (a recipe's whole-batch tail keeps its length when epochs is overridden)
    select_fraction: float = 1.0
    select_epochs: int = 0
    select_start: int = 0
    # part: the trained part's BN statistics are its own (and the running statistics follow them); batch: the
    # whole batch's, recorded in the ranking pass (no gradient through them; engine/selective.py)
    select_bn: str = "part"
    # what ranks the batch: self (the network's own no-grad forward, 0.35x a training step for the speedrun net)
    # or proxy (airbench96_faster's: a small network of the same family, widths select_proxy_widths, ranks with
    # its forward, and every select_proxy_every steps trains on its own highest-loss part)
    select_by: str = "self"
    select_proxy_widths: tuple[int, ...] = (32, 64, 64)
    select_proxy_every: int = 4
    # the trained part's loss: part = its mean; batch = its sum over the whole batch's size (airbench96_faster's:
    # the images left out count as zero, instead of the kept ones twice)
    select_loss: str = "part"
    ema_adjust: bool = False  # torchvision's EMA: decay for the global batch, ema_steps, epochs; a copy during warm-up
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    def __post_init__(self):
        checks = [(self.epochs >= 1, "epochs must be >= 1"), (self.data.batch_size >= 1, "data.batch_size must be >= 1"),
                  (self.data.eval_batch_size >= 1, "data.eval_batch_size must be >= 1"),
                  (self.optim.lr > 0, "optim.lr must be > 0"), (self.data.val_size >= 0, "data.val_size must be >= 0"),
                  (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
                  (self.eval_precision == "train" or self.eval_precision in INFERENCE_PRECISIONS,
                   f"eval_precision must be train or one of {', '.join(INFERENCE_PRECISIONS)}"),
                  (self.schedule.name in ("step", "cosine", "onecycle", "constant"),
                   "schedule.name must be step, cosine, onecycle or constant"),
                  (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
                  (0 <= self.ema_decay < 1, "ema_decay must be in [0, 1)"), (self.eval_every >= 1, "eval_every must be >= 1"),
                  (self.nonfinite in ("stop", "skip"), "nonfinite must be stop or skip"),
                  (self.checkpoint_minutes >= 0, "checkpoint_minutes must be >= 0")]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        for ok, message in [(self.accum_steps >= 1, "accum_steps must be >= 1"),
                            (self.compile in (True, False, "auto"), "compile must be auto, true or false"),
                            (self.optim.bias_lr_scale > 0, "optim.bias_lr_scale must be > 0"),
                            (self.tta_shift >= 0, "tta_shift must be >= 0"),
                            (0 <= self.lookahead_decay < 1, "lookahead_decay must be in [0, 1)"),
                            (self.lookahead_every >= 1, "lookahead_every must be >= 1"),
                            (self.lookahead_start >= 0, "lookahead_start must be >= 0 epochs"),
                            (self.whiten_bias_epochs >= 0, "whiten_bias_epochs must be >= 0"),
                            (not (self.sync_bn and self.model_args.get("ghost_batch")),
                             "sync_bn=true normalises over every process's batch, model_args.ghost_batch over small "
                             "groups: set one of them, not both"),
                            (self.data.flip in (True, False, "alternate"), "data.flip must be true, false or alternate"),
                            (self.data.pad_mode in ("zeros", "reflect"), "data.pad_mode must be zeros or reflect"),
                            (self.data.augment in ("paper", "rrc"), "data.augment must be paper or rrc"),
                            (self.data.image_size >= 8, "data.image_size must be >= 8"),
                            (self.data.val_size < 1 or float(self.data.val_size).is_integer(),
                             f"data.val_size must be a fraction below 1 or a whole count, got {self.data.val_size:g}")]:
            if not ok:
                raise ConfigError(message)
        _check_modern(self)

    @property
    def select_window(self) -> range:
        """The epochs (0-based) in which selective backprop runs; empty when it is off, or when a negative
        select_epochs leaves no epoch before the tail (e.g. the speedrun recipe cut to 3 epochs)."""
        if self.select_fraction == 1:
            return range(0)
        end = self.select_start + self.select_epochs if self.select_epochs >= 0 else self.epochs + self.select_epochs
        return range(self.select_start, max(end, self.select_start))

    @property
    def holdout_seed(self) -> int:
        """The seed that picks the validation images (data.split_seed, else the run's seed)."""
        return self.data.split_seed if self.data.split_seed >= 0 else self.seed

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))


# Checks that need a parser from a layer above config (data/augment.py's policy names) register here
# when their module is imported (the package imports it), so config never imports upwards.
EXTRA_CHECKS: list = []


def register_check(fn):
    """Add `fn(cfg)` (raising ConfigError) to what every TrainConfig is checked with."""
    EXTRA_CHECKS.append(fn)
    return fn


def _check_modern(cfg: TrainConfig) -> None:
    """Augmentation, mixing, loss, optimizer, EMA and warm-up settings (issue 14's additions)."""
    d, o, s = cfg.data, cfg.optim, cfg.schedule
    checks = [
        (d.interpolation in ("bilinear", "bicubic", "nearest"), "data.interpolation must be bilinear, bicubic or nearest"),
        (d.val_image_size == 0 or d.val_image_size >= 8, "data.val_image_size must be 0 (= image_size) or >= 8"),
        (0 <= d.random_erase <= 1, "data.random_erase must be a probability in [0, 1]"),
        (d.erase_mode in ("const", "pixel"), "data.erase_mode must be const or pixel"),
        (d.cutout >= 0, "data.cutout must be >= 0"),
        (d.early_crop >= 0 and d.early_crop_epochs >= 0, "data.early_crop and data.early_crop_epochs must be >= 0"),
        ((d.early_crop > 0) == (d.early_crop_epochs > 0), "data.early_crop and data.early_crop_epochs go together: set both or neither"),
        (0 <= d.no_augment_epochs <= cfg.epochs, "data.no_augment_epochs must be in [0, epochs]"),
        (d.mixup_alpha >= 0 and d.cutmix_alpha >= 0, "data.mixup_alpha and data.cutmix_alpha must be >= 0"),
        (0 <= d.mixup_prob <= 1 and 0 <= d.switch_prob <= 1, "data.mixup_prob and data.switch_prob must be in [0, 1]"),
        (d.repeated_aug >= 1, "data.repeated_aug must be >= 1"),
        (0 < cfg.select_fraction <= 1, "select_fraction must be in (0, 1]"),
        (cfg.select_start >= 0 and (cfg.select_epochs < 0 or cfg.select_start + cfg.select_epochs <= cfg.epochs),
         "select_start must be >= 0, with select_start + select_epochs <= epochs (a negative select_epochs counts "
         "from the end: -3 = all but the last 3 epochs)"),
        ((cfg.select_fraction < 1) == (cfg.select_epochs != 0),
         "select_fraction (below 1) and select_epochs (not 0) go together: set both or neither"),
        (cfg.select_bn in ("part", "batch"), "select_bn must be part or batch"),
        (cfg.select_by in ("self", "proxy"), "select_by must be self or proxy"),
        (cfg.select_loss in ("part", "batch"), "select_loss must be part or batch"),
        (cfg.select_proxy_every >= 1 and all(w >= 1 for w in cfg.select_proxy_widths),
         "select_proxy_every and select_proxy_widths must be >= 1"),
        (not (cfg.select_by == "proxy" and cfg.select_bn == "batch"),
         "select_bn=batch reuses the ranking pass's statistics, which with select_by=proxy are the proxy's: set one"),
        (not (cfg.select_bn == "batch" and cfg.model_args.get("ghost_batch")),
         "select_bn=batch normalises with the whole batch's statistics, model_args.ghost_batch with groups': set one"),
        (cfg.select_fraction == 1 or not (d.mixup_alpha or d.cutmix_alpha),
         "select_fraction ranks images by their own label's loss: it does not combine with data.mixup_alpha/cutmix_alpha"),
        (cfg.loss in ("ce", "bce"), "loss must be ce or bce"),
        (0 <= cfg.bce_target_thresh < 1, "bce_target_thresh must be in [0, 1)"),
        (cfg.ema_steps >= 1, "ema_steps must be >= 1"),
        (o.name in ("sgd", "adamw", "lamb", "muon"), "optim.name must be sgd, adamw, lamb or muon"),
        (o.muon_lr > 0 and 0 <= o.muon_momentum < 1, "optim.muon_lr must be > 0 and optim.muon_momentum in [0, 1)"),
        (o.muon_ns_steps >= 1, "optim.muon_ns_steps must be >= 1"),
        (len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas must be two numbers in [0, 1)"),
        (o.eps >= 0, "optim.eps must be >= 0"),
        (0 <= o.momentum < 1, "optim.momentum must be in [0, 1)"),
        (o.weight_decay >= 0, "optim.weight_decay must be >= 0"),
        (o.grad_clip >= 0, "optim.grad_clip must be >= 0 (0 = off)"),
        (d.pad >= 0 and d.resize >= 0, "data.pad and data.resize must be >= 0"),
        (s.gamma > 0, "schedule.gamma must be > 0"),
        (s.warmup_steps >= 0 and s.warmup_start >= 0 and s.final_lr >= 0,
         "schedule.warmup_steps, schedule.warmup_start and schedule.final_lr must be >= 0"),
        (all(m >= 0 for m in (*s.milestones, *s.milestone_epochs)),
         "schedule.milestones and schedule.milestone_epochs must be >= 0"),
        (s.warmup_lr >= 0 and s.warmup_until_err >= 0, "schedule.warmup_lr and schedule.warmup_until_err must be >= 0"),
        ((s.warmup_lr > 0) == (s.warmup_until_err > 0),
         "schedule.warmup_lr and schedule.warmup_until_err go together (lr warmup_lr until the training error falls "
         "below warmup_until_err %, ResNet-110's warm-up): set both or neither"),
        (not (s.name == "onecycle" and s.warmup_method == "constant"),
         "schedule.warmup_method=constant is for step and cosine schedules; onecycle's warm-up is its linear rise"),
        (not s.warmup_prefix or s.name == "cosine",
         "schedule.warmup_prefix starts the cosine where the warm-up ends: it is for schedule.name=cosine"),
        (s.warmup_epochs >= 0, "schedule.warmup_epochs must be >= 0"),
        (s.warmup_method in ("linear", "constant"), "schedule.warmup_method must be linear or constant"),
        (not (s.warmup_epochs and s.warmup_steps), "give schedule.warmup_epochs or schedule.warmup_steps, not both"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    for check in EXTRA_CHECKS:
        check(cfg)


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def recipe_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("resnet.recipes").iterdir() if p.name.endswith(".yaml"))


def read_yaml_mapping(text: str, what: str) -> dict:
    """YAML text that must hold a mapping (a recipe, a run's config.yaml): one ConfigError naming `what` and the
    line for text that is not YAML, or not a mapping; an empty file is an empty mapping."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{what} is not valid YAML ({getattr(e, 'problem', None) or e}{where})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a YAML mapping (key: value lines), got {type(data).__name__}")
    return data


def load_recipe(name_or_path: str) -> dict:
    """A recipe shipped with the package (by name) or a YAML file (by path), as a nested dict."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():  # a folder named like a recipe (digits/) is data, not it
        if not path.is_file():
            raise ConfigError(f"recipe file {path} {'is a folder' if path.is_dir() else 'does not exist'}")
        text = path.read_text()
    else:
        ref = resources.files("resnet.recipes") / f"{name_or_path}.yaml"
        if not ref.is_file():
            raise ConfigError(f"unknown recipe {name_or_path!r}; shipped recipes: {', '.join(recipe_names())}")
        text = ref.read_text()
    data = read_yaml_mapping(text, f"recipe {name_or_path}")
    for key in ("summary", "description", "published"):  # documentation, not configuration
        data.pop(key, None)
    return data


def recipe_info(name: str) -> dict:
    """A shipped recipe's one-line description and the accuracy its source publishes (for `resnet recipes`)."""
    ref = resources.files("resnet.recipes") / f"{name}.yaml"
    if not ref.is_file():
        raise ConfigError(f"unknown recipe {name!r}; shipped recipes: {', '.join(recipe_names())}")
    data = yaml.safe_load(ref.read_text()) or {}
    one_line = lambda key: " ".join(str(data.get(key, "-")).split())  # noqa: E731
    return {"name": name, "summary": one_line("summary"), "description": one_line("description"),
            "published": one_line("published")}


# A number as a user types it: YAML 1.1 (PyYAML) reads `1e-3`, `5E-4` and `1e3` as strings (its floats
# need a dot and a signed exponent), so numeric fields and model_args convert such strings themselves.
_NUMBER = re.compile(r"[-+]?(?=\.?\d)(\d(_?\d)*)?(\.(\d(_?\d)*)?)?([eE][-+]?\d+)?")


def _number(text: str):
    """int or float for a string that spells a number (`1e-3`, `.1`, `1_000`), else None."""
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        return None
    return float(text) if any(c in text for c in ".eE") else int(text)


def coerce_value(value, annotation, key: str):
    """Check (and gently convert) a YAML value against a field's annotated type."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):  # the first type that takes the value
        for arm in typing.get_args(annotation):
            try:
                return coerce_value(value, arm, key)
            except ConfigError:
                continue
        names = " or ".join(getattr(a, "__name__", str(a)) for a in typing.get_args(annotation))
        raise ConfigError(f"{key}: expected {names}, got {value!r}")
    if isinstance(value, str) and annotation in (int, float) and _number(value) is not None:
        value = _number(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif origin is tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        return tuple(coerce_value(v, typing.get_args(annotation)[0], key) for v in items)
    elif annotation is dict or origin is dict:
        if isinstance(value, dict):  # model_args: `drop_path_rate=1e-1` is a number, not a string
            return {k: _number(v) if isinstance(v, str) and _number(v) is not None else v for k, v in value.items()}
    type_name = getattr(annotation, "__name__", str(annotation))
    raise ConfigError(f"{key}: expected {type_name}, got {value!r}")


def _build(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = prefix + key
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=3)
            hint = f"; did you mean {', '.join(prefix + c for c in close)}?" if close else ""
            raise ConfigError(f"unknown config key {full!r}{hint} (valid: {', '.join(prefix + f for f in fields)})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{full}: expected a mapping of {hint.__name__} keys, got {value!r}")
            kwargs[key] = _build(hint, value, full + ".")
        else:
            kwargs[key] = coerce_value(value, hint, full)
    return cls(**kwargs)


def _annotation(parts: list[str]):
    """The annotated type of the config key `parts` (e.g. ['data', 'path'] -> str); None for no such key."""
    cls = TrainConfig
    for i, part in enumerate(parts):
        hint = typing.get_type_hints(cls).get(part)
        if hint is None or i == len(parts) - 1:
            return hint
        if not dataclasses.is_dataclass(hint):
            return None
        cls = hint
    return None


def parse_overrides(items: list[str]) -> dict:
    """['optim.lr=0.05', 'model_args.drop_path_rate=0.1'] -> nested dict with YAML-typed values."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. optim.lr=0.05)")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            value = text
        parts = key.strip().split(".")
        if _annotation(parts) is str and not text.strip().startswith(("'", '"')):  # a path or name as typed: YAML
            value = text.strip()  # reads 0.10 as the number 0.1, 2024-01-01 as a date, ~ as null, "a #1" as "a"
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {part}")
        node[parts[-1]] = value
    return out


def merge(base: dict, update: dict) -> dict:
    """Nested dict update: `update` wins, mappings merge key by key."""
    out = dict(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def make_config(recipe: str | None = None, overrides: list[str] | dict | None = None) -> TrainConfig:
    """A TrainConfig from defaults < recipe < overrides."""
    data = load_recipe(recipe) if recipe else {}
    if overrides:
        data = merge(data, parse_overrides(overrides) if isinstance(overrides, list) else overrides)
    return _build(TrainConfig, data)


def config_from_dict(data: dict) -> TrainConfig:
    return _build(TrainConfig, data)
