"""The fit loop: data, model, optimizer and schedule from a TrainConfig; one epoch; validation; checkpoints."""
from __future__ import annotations

import contextlib
import copy
import math
import signal
import sys
import threading
import time
from pathlib import Path

import torch
import yaml

from ..version import __version__
from ..config import TrainConfig
from ..data import ImagesTooLargeError, InMemoryDataset, load_dataset
from ..data.split import holdout
from ..errors import CheckpointError, ConfigError, ResNetError
from ..files import atomic_write_text, sweep_temporaries
from ..models import check_model_args, create_model
from ..models.complexity import train_flops_per_image
from ..models.layers import DropPath
from . import checkpoint, distributed
from .compile import compile_kwargs, decide, note_compile_seconds
from .evaluate import evaluate
from .logger import MetricsLog, Progress
from .losses import make_loss
from .optim import EMA, Lookahead, Schedule, ema_decay, load_optimizer_state, make_optimizer, set_lr
from .precision import Precision, default_device, resolve_precision
from .selective import normalising_with, recording_bn_stats
from ..data.augment import build_image_augment
from ..data.mixing import Mixer
from ..data.stream import image_channels, input_size, preprocess_meta, streaming_split, train_shape, train_size
from ..weights.pretrained import apply_preprocess, load_pretrained
from .plots import plot_training_curves


class NonFiniteLossError(ResNetError, RuntimeError):
    """The loss became NaN or infinite."""


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM: training stopped after a checkpoint of the exact position."""

    def __init__(self, signal_name: str, run_dir: Path, epoch: int, step: int):
        self.signal_name, self.run_dir, self.epoch, self.step = signal_name, run_dir, epoch, step
        self.where = f"{signal_name}: stopped at step {step} (epoch {epoch + 1}) after saving a checkpoint"
        super().__init__(f"{self.where}; continue with: resnet train --resume {run_dir}")

    @property
    def exit_code(self) -> int:
        """The shell's code for a process ended by the signal: 128 + 15 (SIGTERM) or 128 + 2 (SIGINT)."""
        return 143 if self.signal_name == "SIGTERM" else 130

    def __reduce__(self):  # rebuilt from its fields when a worker process raises it (experiments --jobs)
        return type(self), (self.signal_name, self.run_dir, self.epoch, self.step)


def _build_on_meta(model: str, model_args: dict) -> None:
    """Build `model` on the meta device (no memory, no random numbers drawn): its arguments' errors, now."""
    check_model_args(model, **model_args)
    with torch.device("meta"):
        create_model(model, **model_args)


def _dotted(config: dict, key: str):
    """config["data"]["batch_size"] for "data.batch_size" (None where absent)."""
    for part in key.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def _fresh_partial() -> dict:
    # seen: the images the loss and error are of; images: every image the steps went through (with
    # select_by=proxy the network sees only the selected part, but the epoch covered the whole batches)
    return {"batches": 0, "loss_sum": 0.0, "wrong": 0, "seen": 0, "images": 0, "seconds": 0.0, "skipped": 0}


def _syncs_are_costly(device: torch.device) -> bool:
    """Whether reading a number back from the device stalls it (asynchronous devices: CUDA)."""
    return device.type == "cuda"


class _DeviceTotals:
    """An epoch's summed loss and wrong predictions kept on the training device, and the first
    non-finite loss since the last check (its value and step), so that a step needs no host sync.
    Under torchrun the sums are those of the global batch (one all-reduce of five numbers a step: the
    last two carry each process's stop signal, so that every process stops after the same step),
    the same on every process: metrics, the ResNet-110 warm-up and mid-epoch checkpoints agree."""

    def __init__(self, partial: dict, device: torch.device, check_each_step: bool,
                 dist_ctx: distributed.DistContext | None = None):
        self.partial, self.check_each_step = partial, check_each_step
        self.dist = dist_ctx or distributed.DistContext()
        self.loss_sum = torch.tensor(float(partial["loss_sum"]), dtype=torch.float64, device=device)
        self.wrong = torch.tensor(float(partial["wrong"]), dtype=torch.float64, device=device)
        self.bad_step = torch.tensor(-1, dtype=torch.int64, device=device)
        self.bad_value = torch.tensor(0.0, dtype=torch.float32, device=device)
        self.stop_flags: torch.Tensor | None = None  # (SIGINT, SIGTERM) processes, from the last add()

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, step: int,
            stop: str | None = None) -> torch.Tensor:
        """Count this step's batch; returns (wrong, images) of the global batch as a float64 tensor.
        `stop`: this process's signal, summed over the processes into `stop_flags` (under torchrun)."""
        images = torch.full((), float(y.numel()), dtype=torch.float64, device=loss.device)
        parts = [loss.detach().double() * y.numel(), (logits.argmax(1) != y).sum().double(), images]
        if self.dist.enabled:
            parts += [images.new_tensor(float(stop == "SIGINT")), images.new_tensor(float(stop == "SIGTERM"))]
        stats = distributed.all_sum(torch.stack(parts), self.dist)
        self.stop_flags = stats[3:] if self.dist.enabled else None
        self.loss_sum += stats[0]
        self.wrong += stats[1]
        if not self.check_each_step:  # remember the first non-finite loss, for the next settle()
            newly = ~torch.isfinite(loss) & (self.bad_step < 0)
            self.bad_step = torch.where(newly, step, self.bad_step)
            self.bad_value = torch.where(newly, loss.float(), self.bad_value)
        return stats[1:3]

    def settle(self) -> tuple[float, int] | None:
        """Copy the totals into the epoch's partial record (a host sync); (value, step) of a non-finite loss."""
        if not self.check_each_step and int(self.bad_step) >= 0:
            return float(self.bad_value), int(self.bad_step)
        self.partial["loss_sum"], self.partial["wrong"] = float(self.loss_sum), int(self.wrong)
        return None


@contextlib.contextmanager
def _stop_on_signals(trainer: "Trainer"):
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint after the current step and stops."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        trainer.stop_signal = signal.Signals(signum).name

    # A signal the parent set to be ignored (SIGINT for background jobs) stays ignored.
    wanted = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not signal.SIG_IGN]
    previous = {s: signal.signal(s, handler) for s in wanted}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def split_train_val(cfg: TrainConfig) -> tuple[InMemoryDataset, InMemoryDataset | None]:
    """The training data and a seeded, stratified hold-out from it (the test set stays untouched).
    Images over 64x64 (any, with data.stream) are streamed instead of held in memory (data/stream.py)."""
    if cfg.data.stream:
        return streaming_split(cfg)
    try:
        data = load_dataset(cfg.data.path, "train", cache_dir=cfg.data.cache_dir or None, skip_bad=cfg.data.skip_bad)
    except ImagesTooLargeError as e:
        if not e.too_large:  # small images of mixed sizes (one 1x1 among 32x32): not a reason to train at 224 streamed
            raise
        return streaming_split(cfg)
    return holdout(data, cfg.data.val_size, cfg.holdout_seed)


def describe_data(train, val) -> str:
    """The log line of the data a run uses: sizes, and where its decoded cache was read or written."""
    sizes = f"{len(train)} training, {len(val) if val is not None else 0} validation images"
    info, line = getattr(train, "info", {}), f"data: {train.name} ({sizes})"
    if info.get("cache"):
        done = f"decoded in {info['decode_seconds']:.1f}s into the cache" if "decode_seconds" in info else \
            "read from the cache"
        line += f"; {done} {info['cache']} (see `resnet cache list`, `resnet cache clear`)"
    return line


class Trainer:
    """Trains `cfg.model` on `cfg.data.path` into `run_dir`; `resume=True` continues that folder exactly."""

    def __init__(self, cfg: TrainConfig, run_dir: str | Path, resume: bool = False, device=None, stream=None,
                 data: tuple[InMemoryDataset, InMemoryDataset | None] | None = None, callbacks=()):
        """`data` = (train, val) already in memory skips loading cfg.data.path (benchmarks, experiments).
        Each of `callbacks` is called as fn(record, trainer) after every epoch (rank 0 only)."""
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.callbacks = list(callbacks)
        # An unknown name or model_args key, or shortcut= on a plain net, fails here, before any data is read;
        # so do what only the layers check (widths that option A shortcuts cannot take): built on no memory
        _build_on_meta(cfg.model, cfg.model_args)
        if cfg.select_window and cfg.select_by == "proxy":  # the proxy too: one width a stage
            try:
                _build_on_meta(cfg.model, {**cfg.model_args, "widths": list(cfg.select_proxy_widths)})
            except ConfigError as e:
                raise ConfigError(f"select_by=proxy builds {cfg.model} at select_proxy_widths="
                                  f"{list(cfg.select_proxy_widths)}: {e}") from None
        self.dist = distributed.setup(device)  # torchrun: join the process group; rank 0 alone reports
        self.run_dir = Path(distributed.rank0_text(str(self.run_dir), self.dist))  # rank 0's (a default name: its clock)
        self.stream = distributed.stream_for(self.dist, stream or sys.stderr)
        self.device = torch.device(device) if device else (self.dist.device or default_device())
        self.precision = resolve_precision(cfg.precision, self.device)
        if cfg.precision == "auto":  # each process measures bf16 against fp32: all train as rank 0 found
            self.precision = Precision(distributed.rank0_text(self.precision.name, self.dist), self.device)
        self.eval_precision = (self.precision if cfg.eval_precision == "train"  # (only training warns of fp32)
                               else resolve_precision(cfg.eval_precision, self.device, warn=False))
        torch.manual_seed(cfg.seed)
        self.train_data, self.val_data = data or split_train_val(cfg)
        if data is None:
            print(describe_data(self.train_data, self.val_data), file=self.stream)
        if cfg.weights:
            apply_preprocess(cfg.weights, self.train_data, self.val_data)  # the pretrained weights' mean/std
        self.classes = self.train_data.classes
        self._skipped = list(self.train_data.info.get("skipped", []))  # with data.skip_bad: the images left out
        augment = build_image_augment(cfg.data, self.train_data.mean, self.train_data.std)
        in_memory = isinstance(self.train_data, InMemoryDataset)
        for setting, on, instead in (("data.flip=alternate", cfg.data.flip == "alternate", "use data.flip=true"),
                                     ("data.early_crop", cfg.data.early_crop > 0, "set data.image_size"),
                                     ("data.pad_mode=reflect", cfg.data.pad_mode == "reflect", "leave it zeros"),
                                     ("data.no_augment_epochs", cfg.data.no_augment_epochs > 0, "leave it 0")):
            if on and not in_memory:
                raise ConfigError(f"{setting} needs images held in memory (CIFAR-sized); for streamed images {instead}")
        self.train_loader = self.train_data.loader(cfg.data.batch_size, train=True, seed=cfg.seed, device=self.device,
                                                   channels_last=cfg.channels_last, pad=cfg.data.pad, flip=cfg.data.flip,
                                                   augment=augment, repeats=cfg.data.repeated_aug,
                                                   pad_mode=cfg.data.pad_mode, early_crop=cfg.data.early_crop,
                                                   early_crop_epochs=cfg.data.early_crop_epochs,
                                                   augment_until=cfg.epochs - cfg.data.no_augment_epochs)
        self.train_loader = distributed.shard_loader(self.train_loader, self.dist)  # this rank's slice of each batch
        if len(self.train_loader) == 0:
            raise ConfigError(f"data.batch_size={cfg.data.batch_size} exceeds the {len(self.train_data)} training images")
        self.val_loader = self.val_data.loader(cfg.data.eval_batch_size, train=False, device=self.device,
                                               channels_last=cfg.channels_last) if self.val_data else None
        side = min(self.train_data.images.shape[-2:]) if in_memory else input_size(self.train_data)
        if cfg.tta_shift >= side:  # (reflect padding needs fewer pixels than the side: a traceback at validation)
            raise ConfigError(f"tta_shift={cfg.tta_shift} must be below the side of the evaluated images ({side} px); "
                              "airbench's is 1")
        args = {"num_classes": len(self.classes), "in_chans": image_channels(self.train_data), **cfg.model_args}
        if args["num_classes"] != len(self.classes):
            raise ConfigError(f"num_classes={args['num_classes']}, but the training data has {len(self.classes)} classes")
        self._model_args = args
        self.model = create_model(cfg.model, **args).to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if cfg.weights and not resume and self.dist.is_main:  # DDP copies rank 0's weights to the others
            load_pretrained(self.model, cfg.weights)
        elif not resume and getattr(self.model, "needs_data_init", False):  # the whitening stem
            self.model.init_from_data(self._whitening_images())
        self._setup_proxy(resume)
        if cfg.whiten_bias_epochs and not getattr(self.model, "needs_data_init", False):
            raise ConfigError(f"whiten_bias_epochs={cfg.whiten_bias_epochs} needs a network with a whitening stem "
                              f"(stem=whiten, e.g. speedrun_resnet8); {cfg.model} has none: set whiten_bias_epochs=0")
        self._flop_cache: dict[tuple, float] = {}
        self.train_module = distributed.wrap_model(self.model, self.dist, self.device, cfg.sync_bn)
        # drop path draws from the global RNG in training: under torchrun each process reseeds it every step
        # (distributed.step_seed); one process keeps the stream torch.manual_seed began
        self._rank_streams = self.dist.enabled and any(isinstance(m, DropPath) for m in self.model.modules())
        self.optimizer = make_optimizer(self.model, cfg.optim)
        self.scaler = self.precision.grad_scaler()
        self.total_steps = cfg.epochs * len(self.train_loader)
        self.schedule = Schedule(cfg.schedule, cfg.optim.lr, self.total_steps, len(self.train_loader))
        self._setup_loss_and_ema()
        self.epoch = self.step = 0
        self.best_val_err = math.inf
        self.history: list[dict] = []
        self.partial = _fresh_partial()  # progress through the current epoch, saved with mid-epoch checkpoints
        self.stop_signal: str | None = None
        self.compiled, self._restored_compiled, self._compile_pending = False, None, False
        self._compile_key, self._epoch_compile_seconds = None, None
        self.last_save = time.perf_counter()
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main:  # a run killed mid-write (SIGKILL) left its temporary file: gone on resume
            for folder in (self.run_dir, self.run_dir / "ckpt"):
                sweep_temporaries(folder)
        if self._skipped and self.dist.is_main:  # every process loaded the same data: rank 0 writes the list
            (self.run_dir / "skipped.txt").write_text("".join(f"{path}\t{why}\n" for path, why in self._skipped))
        self.log = MetricsLog(self.run_dir) if self.dist.is_main else distributed.NullLog()
        if resume:
            self._restore()
        else:
            self.log.rewrite([])
        self._setup_compile()
        if self.dist.is_main:
            atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    def _whitening_images(self) -> torch.Tensor:
        """The first 5,000 training images, normalised: what a whitening stem's filters are computed from."""
        return next(iter(self.train_data.loader(5000, train=False, device=self.device,
                                                channels_last=self.cfg.channels_last)))[0]

    def _setup_proxy(self, resume: bool) -> None:
        """select_by=proxy: the small ranking network (the model's family at select_proxy_widths), its own
        optimizer (the run's settings, the run's schedule) and, for fp16, its own gradient scaler."""
        self.proxy = self.proxy_optimizer = self.proxy_scaler = None
        cfg = self.cfg
        if not cfg.select_window or cfg.select_by != "proxy":
            return
        if self.dist.world_size > 1:
            raise ConfigError("select_by=proxy ranks with a proxy network on one process; under torchrun use "
                              "select_by=self")
        self._proxy_args = {**self._model_args, "widths": list(cfg.select_proxy_widths)}
        self.proxy = create_model(cfg.model, **self._proxy_args).to(self.device)
        if cfg.channels_last:
            self.proxy = self.proxy.to(memory_format=torch.channels_last)
        if not resume and getattr(self.proxy, "needs_data_init", False):
            self.proxy.init_from_data(self._whitening_images())
        self.proxy_optimizer = make_optimizer(self.proxy, cfg.optim)
        self.proxy_scaler = self.precision.grad_scaler()

    def _setup_compile(self) -> None:
        """torch.compile the training module if cfg.compile says so; with `auto` a measured probe decides
        (engine/compile.py) and a resumed run keeps the decision it started with, so that its steps are
        the same computation as an uninterrupted run's. The model itself stays eager (evaluation, EMA,
        checkpoints see the one set of weights the compiled module shares)."""
        if self.cfg.select_bn == "batch" and self.cfg.select_window:  # BN's forward is swapped per pass
            if self.cfg.compile is True:
                raise ConfigError("select_bn=batch swaps BatchNorm's forward between the ranking and the training "
                                  "pass, which a compiled step would not follow: set compile=false")
            return
        if self.cfg.compile == "auto" and self._restored_compiled is not None:
            self.compiled = self._restored_compiled
        else:
            per_process = self.cfg.data.batch_size // max(self.dist.world_size, 1) // self.cfg.accum_steps
            self.compiled, why, self._compile_key = decide(
                self.cfg.compile, self.cfg.model, self._model_args, max(per_process, 1), self.precision,
                self.cfg.channels_last, train_size(self.train_data), self.total_steps - self.step,
                self.dist.world_size)
            if why:
                print(why, file=self.stream)
        if self.compiled:
            self._compile_train_module()
            self._compile_pending = True

    def _compile_train_module(self) -> None:
        self.train_module = torch.compile(self.train_module, **compile_kwargs(self.device, self.model, self.precision))

    def _setup_loss_and_ema(self) -> None:
        """The loss, batch mixing (mixup/CutMix) and the EMA the config asks for (engine/losses.py,
        data/mixing.py, engine/optim.py)."""
        cfg, d = self.cfg, self.cfg.data
        self.mixer = Mixer(len(self.classes), d.mixup_alpha, d.cutmix_alpha, d.mixup_prob, d.switch_prob,
                           cfg.label_smoothing, cfg.seed)
        if not self.mixer.enabled:
            self.mixer = None
        elif self.dist.enabled and (d.batch_size // self.dist.world_size) % 2:
            raise ConfigError(f"mixup/CutMix pair neighbouring images: data.batch_size={d.batch_size} must give each of "
                              f"the {self.dist.world_size} processes an even number of images")
        self.criterion = make_loss(cfg.loss, len(self.classes), cfg.label_smoothing, cfg.bce_target_thresh)
        self.ema = None
        if cfg.ema_decay > 0:
            decay = ema_decay(cfg.ema_decay, cfg.ema_steps, cfg.ema_adjust, d.batch_size, cfg.epochs)
            copy_until = self.schedule.warmup_steps + cfg.ema_steps if cfg.ema_adjust else 0
            self.ema = EMA(self.model, decay, cfg.ema_steps, copy_until)
        self.lookahead = None
        if cfg.lookahead_decay > 0:
            start = math.ceil(cfg.lookahead_start * len(self.train_loader))
            self.lookahead = Lookahead(cfg.lookahead_decay, cfg.lookahead_every, start, self.total_steps)

    # ------------------------------------------------------------------ state
    def _state(self) -> dict:
        state = {"epoch": self.epoch, "step": self.step, "optimizer": self.optimizer.state_dict(),
                 "schedule": self.schedule.state_dict(), "rng": torch.get_rng_state(), "history": self.history,
                 "best_val_err": self.best_val_err, "config": self.cfg.to_dict(), "partial": dict(self.partial),
                 "compiled": self.compiled}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state()
        if self.lookahead is not None:
            state["lookahead"] = self.lookahead.state_dict()
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
            state["model_raw"] = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if self.proxy is not None:
            state["proxy"] = {k: v.detach().cpu() for k, v in self.proxy.state_dict().items()}
            state["proxy_optimizer"] = self.proxy_optimizer.state_dict()
            if self.proxy_scaler is not None:
                state["proxy_scaler"] = self.proxy_scaler.state_dict()
        return state

    def _restore(self) -> None:
        state, weights = checkpoint.load_training_state(self.run_dir)
        saved = state.get("config", {})
        if saved.get("model") not in (None, self.cfg.model):
            raise CheckpointError(f"--resume {self.run_dir}: that run trains {state['config']['model']}, not {self.cfg.model}")
        began_with = saved.get("optim", {}).get("name")
        if began_with not in (None, self.cfg.optim.name):  # another optimizer's state would fail at its first step
            raise CheckpointError(f"--resume {self.run_dir}: that run trains with optim.name={began_with}, not "
                                  f"{self.cfg.optim.name}; its optimizer state continues only with that optimizer")
        try:
            self.model.load_state_dict(state.get("model_raw", weights))
            load_optimizer_state(self.optimizer, state["optimizer"])  # the config's weight decay, momentum, ...
            if self.proxy is not None and "proxy" in state:
                self.proxy.load_state_dict(state["proxy"])
                load_optimizer_state(self.proxy_optimizer, state["proxy_optimizer"])
        except (RuntimeError, ValueError) as e:  # torch's multi-line size mismatches, group counts
            raise CheckpointError(self._misfit(saved, e)) from None
        self.schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"])
        if self.ema is not None:  # EMA turned on at resume: average from the restored weights, not the random init
            self.ema.load_state_dict(state["ema"] if "ema" in state else self.model.state_dict())
        if self.lookahead is not None and "lookahead" in state:
            self.lookahead.load_state_dict(state["lookahead"], self.model)
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        if self.proxy is not None:
            if "proxy" not in state:
                raise CheckpointError(f"--resume {self.run_dir}: that run has no proxy network to continue "
                                      "select_by=proxy with; start a new run for it")
            if self.proxy_scaler is not None and "proxy_scaler" in state:
                self.proxy_scaler.load_state_dict(state["proxy_scaler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.history, self.best_val_err = list(state["history"]), float(state["best_val_err"])
        self.partial = {**_fresh_partial(), **state.get("partial", {})}
        # (config.yaml would then say fewer epochs than its metrics hold; a run stopped mid-epoch has begun the
        # next epoch: its weights are past the end of the epochs asked for)
        begun = self.epoch + (1 if self.partial["batches"] else 0)
        if begun > self.cfg.epochs:
            trained = f"{self.epoch} epochs" + (f" and {self.partial['batches']} steps of the next" if begun > self.epoch
                                                else "")
            raise CheckpointError(f"--resume {self.run_dir}: that run has trained {trained}, more than "
                                  f"epochs={self.cfg.epochs}; give --epochs {begun} or more to continue it, "
                                  "or evaluate or export it as it is")
        self._check_steps_per_epoch(saved)
        self._restored_compiled = state.get("compiled")
        self.log.rewrite(self.history)

    def _check_steps_per_epoch(self, saved: dict) -> None:
        """The restored step must be where this config's epochs put it: another batch size or hold-out (or
        other training images) changes the steps an epoch, and the schedule (a function of the step) would
        jump, e.g. to its end, and a mid-epoch position would skip the wrong batches (or all of them)."""
        per_epoch, done = len(self.train_loader), int(self.partial["batches"])
        if self.step == self.epoch * per_epoch + done and done < per_epoch:
            return
        keys = ("data.path", "data.batch_size", "data.val_size")
        now = self.cfg.to_dict()
        changed = ", ".join(f"{k} {_dotted(saved, k)} -> {_dotted(now, k)}" for k in keys
                            if saved and _dotted(saved, k) != _dotted(now, k))
        raise CheckpointError(f"--resume {self.run_dir}: that run is at step {self.step} (epoch {self.epoch + 1}), "
                              f"which does not fit this config's {per_epoch} steps an epoch "
                              f"({f'changed since the run began: {changed}' if changed else 'its training data changed'}); "
                              "resume with the run's own data and batch size, or start a new run")

    def _misfit(self, saved: dict, error: Exception) -> str:
        """Why a run's checkpoint does not load into the network and optimizer this config builds, naming the
        settings that shape them and changed since the run began (`saved`: that run's config)."""
        def shaping(c: dict) -> dict:  # the settings that shape the network and the optimizer's groups
            return {**{f"model_args.{k}": v for k, v in c.get("model_args", {}).items()},
                    **{f"optim.{k}": c.get("optim", {}).get(k) for k in ("no_decay_bn_bias", "bias_lr_scale")},
                    "select_proxy_widths": c.get("select_proxy_widths")}
        changed = ""
        if saved:
            was, is_ = shaping(saved), shaping(self.cfg.to_dict())
            changed = ", ".join(f"{k} {was.get(k, 'unset')} -> {is_.get(k, 'unset')}" for k in sorted({*was, *is_})
                                if was.get(k) != is_.get(k))
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]  # torch's: a heading, then details
        detail = " ".join(lines[:2] if len(lines) > 1 and lines[0].endswith(":") else lines[:1])
        return (f"--resume {self.run_dir}: its checkpoint does not fit the network and optimizer this config builds"
                f"{f' (changed since the run began: {changed})' if changed else ''}; resume with the run's own "
                f"settings, or start a new run ({detail})")

    def eval_model(self) -> torch.nn.Module:
        """The weights that are evaluated and published: the EMA when on, else the model itself."""
        if self.ema is None:
            return self.model
        ema_model = copy.deepcopy(self.model)
        ema_model.load_state_dict(self.ema.shadow)
        return ema_model

    def meta(self) -> dict:
        return {"model": self.cfg.model, "model_config": self.model.config.to_dict(), "classes": self.classes,
                "mean": list(self.train_data.mean), "std": list(self.train_data.std),
                "input_size": input_size(self.train_data), **preprocess_meta(self.train_data),
                "epoch": self.epoch, "step": self.step,
                "dataset": self.train_data.name, "config": self.cfg.to_dict(), "version": __version__}

    # ------------------------------------------------------------------ loop
    def train_epoch(self) -> dict:
        """One pass over the training set (or its rest, after a mid-epoch resume); loss, error (%), images/s.

        The running totals stay on the device and are read (a host sync) only for a progress line, a
        checkpoint and the epoch's end: on a GPU, reading a number every step makes the CPU wait for
        the GPU and the GPU for the CPU's next launches (the loop ran at 0.52x the bare step on an H200
        that way). On a CPU nothing waits, so there every step's loss is checked before its update."""
        model, opt, cfg, acc = self.model, self.optimizer, self.cfg, self.partial
        model.train()
        self._set_whiten_bias(self._whiten_bias_trains(self.epoch))
        self.train_loader.set_epoch(self.epoch)
        if acc["batches"] and hasattr(self.train_loader, "skip_batches"):
            self.train_loader.skip_batches(acc["batches"])  # streamed: skip without decoding
        progress = Progress(len(self.train_loader), f"epoch {self.epoch + 1}/{cfg.epochs}", self.stream,
                            done=acc["batches"], images=acc["seen"])  # after a mid-epoch resume: counts so far
        start, lr = time.perf_counter() - acc["seconds"], None
        # Deferred checks need no sync; with several processes every one must stop at the same step, and
        # nonfinite=skip must know before the update: those (and CPUs, where it is free) check every step.
        check_each_step = not _syncs_are_costly(self.device) or cfg.nonfinite == "skip" or self.dist.world_size > 1
        totals = _DeviceTotals(acc, self.device, check_each_step, self.dist)
        for i, (x, y) in enumerate(self.train_loader):
            if i < acc["batches"]:
                continue  # done before the interruption; the epoch's batches are a function of (seed, epoch)
            new_lr = self.schedule.lr(self.step)
            if new_lr != lr:
                lr = new_lr
                set_lr(opt, lr)
            if self.mixer is not None:  # mixed images and soft targets; metrics keep each image's own label
                x, target, _ = self.mixer(x, y, self.epoch, i)
            else:
                target = y
            first, batch_images = time.perf_counter(), x.shape[0]
            if self._rank_streams:
                torch.manual_seed(distributed.step_seed(cfg.seed, self.dist.rank, self.step))
            if self._selects(self.epoch):  # (no mixing: the config rejects it with selection)
                logits, loss, finite, y = self._selective_step(x, y, totals.check_each_step)
            else:
                logits, loss, finite = self._train_step(x, y, totals.check_each_step, target)
            if self._compile_pending:
                self._compiled_in(time.perf_counter() - first)
            if finite:
                wrong, images = totals.add(loss, logits, y, self.step, self.stop_signal)
                if self.dist.enabled:  # the global batch's count (synced anyway); torchrun has no proxy selection
                    acc["seen"] += (n := int(images))
                    acc["images"] += n
                else:
                    acc["seen"] += y.numel()
                    acc["images"] += batch_images
                if not self.schedule.warmup_done:  # the global batch's error: every process switches together
                    self.schedule.observe_train_error(100.0 * float(wrong) / float(images))
            self.step += 1
            acc["batches"] = i + 1
            acc["seconds"] = time.perf_counter() - start
            if progress.due() or i + 1 == len(self.train_loader):
                self._settle(totals)
                seen = max(acc["seen"], 1)
                progress.update(i + 1, seen, acc["loss_sum"] / seen, 100.0 * acc["wrong"] / seen, force=True)
            if i + 1 < len(self.train_loader):
                self._maybe_checkpoint_mid_epoch(totals)
        progress.close()
        self._settle(totals)
        if self.device.type == "cuda":  # the last steps may still be queued on the GPU: count them in the time
            torch.cuda.synchronize(self.device)
            acc["seconds"] = time.perf_counter() - start
        if self.lookahead is not None:
            self.lookahead.sync(self.model)
        seen = acc["seen"] or math.nan  # every step skipped (nonfinite=skip): no loss or error, not a perfect 0
        record = {"lr": lr, "train_loss": acc["loss_sum"] / seen, "train_err": 100.0 * acc["wrong"] / seen,
                  "images_per_sec": acc["images"] / max(acc["seconds"], 1e-9), "train_seconds": acc["seconds"],
                  "train_pflop": self.train_flops() / 1e15}
        if acc["skipped"]:
            record["skipped_steps"] = acc["skipped"]
        if self._epoch_compile_seconds is not None:  # counted in this epoch's time and images/s
            record["compile_seconds"], self._epoch_compile_seconds = self._epoch_compile_seconds, None
        self.partial = _fresh_partial()
        return record

    def _compiled_in(self, seconds: float) -> None:
        """The first compiled step has run (it compiled the forward and backward): report its time."""
        self._compile_pending, self._epoch_compile_seconds = False, round(seconds, 2)
        print(f"compiled the training step in {seconds:.1f} s (counted in this epoch's time)", file=self.stream)
        note_compile_seconds(self._compile_key, seconds)

    def _whiten_bias_trains(self, epoch: int) -> bool:
        return not self.cfg.whiten_bias_epochs or epoch < self.cfg.whiten_bias_epochs

    def _set_whiten_bias(self, on: bool) -> None:
        """Freeze (or, resuming an earlier epoch, train) the whitening stem's bias. Under torchrun the DDP
        wrapper is rebuilt: its reducer would wait forever for a gradient that no longer comes."""
        if not self.cfg.whiten_bias_epochs or self.model.conv1.bias.requires_grad == on:
            return
        self.model.train_whiten_bias(on)
        if self.dist.enabled:  # the model's BN is already synchronised where asked: do not convert again
            self.train_module = distributed.wrap_model(self.model, self.dist, self.device)
            if self.compiled:
                self._compile_train_module()

    def _flops_per_image(self, epoch: int, backward: bool = True, proxy: bool = False) -> float:
        """FlopCounterMode's training FLOPs per image in `epoch` (0-based): its crop size (early crops),
        with or without the whitening bias's gradient; backward=False: the forward pass alone;
        proxy=True: those of the ranking proxy (whose whitening bias always trains)."""
        d = self.cfg.data
        # the training crop: (height, width), not width squared (in-memory images may be wider than tall)
        size = (d.early_crop, d.early_crop) if epoch < d.early_crop_epochs else train_shape(self.train_data)
        key = (size, proxy or self._whiten_bias_trains(epoch), backward, proxy)
        if key not in self._flop_cache:
            args = self._proxy_args if proxy else self._model_args
            self._flop_cache[key] = train_flops_per_image(self.cfg.model, args, *key[:3])
        return self._flop_cache[key]

    def _flops_per_batch(self, epoch: int) -> float:
        """Training FLOPs of one global batch in `epoch`; with selective backprop, the ranking forward of the
        whole batch (the network's or the proxy's) and the training step of the part selected."""
        batch, world = self.cfg.data.batch_size, self.dist.world_size
        if not self._selects(epoch):
            return batch * self._flops_per_image(epoch)
        trained = world * self._selected(batch // world)
        ranking = self._flops_per_image(epoch, backward=False, proxy=self.proxy is not None)
        return batch * ranking + trained * self._flops_per_image(epoch)

    def train_flops(self) -> float:
        """Training compute so far, all processes: FlopCounterMode's count of the forward and backward
        passes (machine-independent), with what the optimizer computes itself (Muon's Newton-Schulz)
        and the ranking proxy's own training steps."""
        per_epoch = len(self.train_loader)
        epochs, rest = divmod(self.step, per_epoch)
        flops = sum(per_epoch * self._flops_per_batch(e) for e in range(epochs)) + rest * self._flops_per_batch(epochs)
        flops += sum(n * self._proxy_step_flops(e) for e, n in self._proxy_steps_per_epoch().items())
        return flops + self.step * getattr(self.optimizer, "flops_per_step", 0)

    def _proxy_trains(self, step: int) -> bool:
        return step % self.cfg.select_proxy_every == 0

    def _proxy_steps_per_epoch(self) -> dict[int, int]:
        """{epoch: how many of its steps so far trained the proxy} (select_by=proxy)."""
        if self.proxy is None:
            return {}
        per_epoch, c, k = len(self.train_loader), self.cfg, self.cfg.select_proxy_every

        def multiples_below(n: int) -> int:  # steps 0..n-1 that _proxy_trains
            return -(-n // k)

        return {e: max(0, multiples_below(min(self.step, (e + 1) * per_epoch)) - multiples_below(e * per_epoch))
                for e in c.select_window}

    def _proxy_step_flops(self, epoch: int) -> float:
        """One training step of the proxy on its selected part, with its optimizer's own computation."""
        return (self._selected(self.cfg.data.batch_size) * self._flops_per_image(epoch, proxy=True)
                + getattr(self.proxy_optimizer, "flops_per_step", 0))

    def _selects(self, epoch: int) -> bool:
        return epoch in self.cfg.select_window

    def _selected(self, images: int) -> int:
        """How many of a batch of `images` selective backprop trains on."""
        return max(1, round(self.cfg.select_fraction * images))

    def _selective_step(self, x: torch.Tensor, y: torch.Tensor,
                        check: bool) -> tuple[torch.Tensor, torch.Tensor, bool, torch.Tensor]:
        """Selective backprop: a no-grad forward of the whole batch as training sees it (BN on the batch's
        statistics; in eval mode the net errs far more while the rate is high: 47% against 26% at epoch 4
        of the speedrun) ranks its images by their own label's cross-entropy, and the select_fraction
        with the highest loss trains. The ranking pass's updates of BN's running statistics are undone; with
        select_bn=batch they stay, and the trained part is normalised with the whole batch's statistics.
        Returns the whole batch's logits and mean loss (so the training error is every image's, not only
        the hard ones'), whether the trained part's loss was finite, and the labels the logits are for.
        With select_by=proxy the proxy ranks instead (`_proxy_selects`), and the logits, loss and labels
        returned are the trained part's: the network sees no other images."""
        weight = self.cfg.select_fraction if self.cfg.select_loss == "batch" else 1.0
        if self.proxy is not None:
            keep = self._proxy_selects(x, y, weight)
            logits, loss, finite = self._train_step(self._part(x, keep), y[keep], check, weight=weight)
            return logits, loss / weight, finite, y[keep]
        whole = self.cfg.select_bn == "batch"
        buffers = None if whole else [b.clone() for b in self.model.buffers()]
        with torch.no_grad(), recording_bn_stats(self.model) if whole else contextlib.nullcontext({}) as stats:
            with self.precision.autocast():
                logits = self.model(x).float()
            for b, saved in zip(self.model.buffers(), buffers or []):
                b.copy_(saved)
        keep = self._hardest(logits, y)
        with normalising_with(stats) if whole else contextlib.nullcontext():
            _, _, finite = self._train_step(self._part(x, keep), y[keep], check, weight=weight)
        return logits, self.criterion(logits, y).detach(), finite, y

    def _hardest(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Batch positions of the select_fraction with the highest cross-entropy, in batch order."""
        losses = torch.nn.functional.cross_entropy(logits, y, reduction="none")
        return losses.topk(self._selected(len(y))).indices.sort().values

    def _part(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        xs = x[keep]
        return xs.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else xs

    def _proxy_selects(self, x: torch.Tensor, y: torch.Tensor, weight: float) -> torch.Tensor:
        """The proxy ranks the batch with a no-grad train-mode forward (its own running statistics follow)
        and, every select_proxy_every steps, trains on the part it selected, at the schedule's lr (a
        forward of that part again with autograd: cheaper than a backward through the whole batch)."""
        proxy, opt = self.proxy, self.proxy_optimizer
        proxy.train()
        with torch.no_grad(), self.precision.autocast():
            keep = self._hardest(proxy(x).float(), y)
        if self._proxy_trains(self.step):
            set_lr(opt, self.schedule.lr(self.step))
            opt.zero_grad(set_to_none=True)
            with self.precision.autocast():
                loss = self.criterion(proxy(self._part(x, keep)), y[keep]) * weight
            if self._finite(loss.detach(), proxy=True):
                if self.proxy_scaler is not None:
                    self.proxy_scaler.scale(loss).backward()
                    self.proxy_scaler.step(opt)
                    self.proxy_scaler.update()
                else:
                    loss.backward()
                    opt.step()
        return keep

    def _settle(self, totals: "_DeviceTotals") -> None:
        """The device totals into self.partial; a loss that went non-finite since the last check stops here."""
        bad = totals.settle()
        if bad is not None:
            raise self._nonfinite_error(*bad)

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, check: bool = True, target: torch.Tensor | None = None,
                    weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Forward, backward and update on this process's batch: (logits, loss x weight, whether it was finite).
        `target` is what the loss compares with: y itself, or mixed soft targets (B x classes).
        With accum_steps > 1 the batch goes through in chunks whose gradients add up, and DDP
        all-reduces them once, with the last chunk. Every process agrees on skipping a non-finite step.
        With check=False the loss is not read (no host sync): the caller checks it later."""
        n, module = self.cfg.accum_steps, self.train_module
        if self.compiled and self.device.type == "cuda":  # CUDA graphs: a new step may reuse the last one's buffers
            torch.compiler.cudagraph_mark_step_begin()
        target = y if target is None else target
        self.optimizer.zero_grad(set_to_none=True)
        # nonfinite=skip: a skipped step leaves the network as it was, BN's running statistics included (the
        # forward pass has already folded the batch into them: NaN once the batch's activations are)
        kept = [b.detach().clone() for b in self.model.buffers()] if check and self.cfg.nonfinite == "skip" else None
        chunks = [(x, y, target)] if n == 1 else list(zip(x.chunk(n), y.chunk(n), target.chunk(n)))
        outputs, total = [], 0.0
        for j, (xc, yc, tc) in enumerate(chunks):
            last = j + 1 == len(chunks)
            with distributed.no_sync(module, sync=last):
                with self.precision.autocast():
                    logits = module(xc)
                part = self.criterion(logits, tc)
                if weight != 1.0:  # select_loss=batch
                    part = part * weight
                if len(chunks) > 1:
                    part = part * (yc.numel() / y.numel())
                    if not last:
                        (self.scaler.scale(part) if self.scaler is not None else part).backward()
            outputs.append(logits)
            total = total + part.detach()
        finite = self._finite(distributed.all_mean(total, self.dist)) if check else True
        if finite:
            self._backward_step(part)
        elif kept is not None:
            for b, saved in zip(self.model.buffers(), kept):
                b.copy_(saved)
        return (outputs[0] if len(outputs) == 1 else torch.cat(outputs)), total, finite

    def _finite(self, loss: torch.Tensor, proxy: bool = False) -> bool:
        """False (after logging) for a NaN/inf loss the config says to skip; raises when it says to stop.
        A skipped step of the proxy (select_by=proxy) is not a skipped training step."""
        if torch.isfinite(loss):
            return True
        whose = "the proxy's" if proxy else "the"
        if self.cfg.nonfinite == "skip":
            self.partial["skipped"] += not proxy
            print(f"step {self.step}: {whose} loss is {float(loss)}; {whose} step skipped (nonfinite=skip)",
                  file=self.stream)
            return False
        raise self._nonfinite_error(float(loss), self.step, whose)

    def _nonfinite_error(self, value: float, step: int, whose: str = "the") -> NonFiniteLossError:
        kept = (f"the last good checkpoint is in {self.run_dir}" if checkpoint.latest_state_file(self.run_dir)
                else "no checkpoint was written before it")
        return NonFiniteLossError(f"{whose} training loss became {value} at step {step} (epoch {self.epoch + 1}); "
                                  f"{kept}. Lower optim.lr, set optim.grad_clip, or pass nonfinite=skip to skip "
                                  "such steps.")

    def _agreed_stop(self, totals: "_DeviceTotals | None" = None) -> str | None:
        """The stop signal as every process sees it. Under torchrun each process's flag is summed over all, so
        all stop after the same step: a signal reaches the processes at slightly different moments, and one
        that stopped alone would leave the others waiting in the next all-reduce, with rank 0's checkpoint
        unwritten. In a step the flags came with its totals' all-reduce (`totals`; a skipped non-finite step,
        skipped by all alike, has none: the next step carries them); elsewhere one all-reduce of their own."""
        if not self.dist.enabled:
            return self.stop_signal
        if totals is not None:
            flags, totals.stop_flags = totals.stop_flags, None
            if flags is None:
                return None
        else:
            flags = distributed.all_sum(torch.tensor([self.stop_signal == "SIGINT", self.stop_signal == "SIGTERM"],
                                                     dtype=torch.float64, device=self.device), self.dist)
        interrupt, terminate = flags.tolist()
        return "SIGTERM" if terminate else "SIGINT" if interrupt else None

    def _stop(self, signal_name: str):
        """Stop on an agreed signal, the checkpoint written. Every process stops here at the same step, so they
        leave the process group together at exit (distributed.cleanup's barrier): one leaving while rank 0 still
        writes the checkpoint made gloo abort a process (SIGABRT)."""
        distributed.mark_finished()
        raise TrainingInterrupted(signal_name, self.run_dir, self.epoch, self.step)

    def _maybe_checkpoint_mid_epoch(self, totals: "_DeviceTotals") -> None:
        """On SIGINT/SIGTERM, and every cfg.checkpoint_minutes, save the exact mid-epoch position."""
        interval = self.cfg.checkpoint_minutes * 60
        due = interval > 0 and time.perf_counter() - self.last_save > interval
        stop = self._agreed_stop(totals)
        if not (stop or due):
            return
        self._settle(totals)  # never save weights that a non-finite step has touched
        self.save()
        if stop:
            self._stop(stop)

    def _backward_step(self, loss: torch.Tensor) -> None:
        clip = self.cfg.optim.grad_clip
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.optimizer.step()
        if self.ema is not None:
            self.ema.step(self.model, self.step)
        if self.lookahead is not None:
            self.lookahead.step(self.model, self.step + 1)

    def validate(self) -> dict | None:
        if self.val_loader is None or not self.dist.is_main:  # rank 0 validates for all
            return None
        return evaluate(self.eval_model(), self.val_loader, self.eval_precision, len(self.classes), self.cfg.tta_flip,
                        self.cfg.tta_shift)

    def save(self, best: bool = False) -> None:
        if self.dist.is_main:  # rank 0 writes for all processes
            checkpoint.save_checkpoint(self.run_dir, self.eval_model(), self._state(), self.meta(), best=best)
        self.last_save = time.perf_counter()

    def fit(self) -> list[dict]:
        """Train until cfg.epochs (the total), checkpointing after every epoch; SIGINT/SIGTERM stop cleanly."""
        with _stop_on_signals(self):
            while self.epoch < self.cfg.epochs:
                self._fit_epoch()
                # The mid-epoch check skips an epoch's last step (its end checkpoint follows), so a signal
                # during that step or validation (every signal, with one step an epoch) is acted on here.
                if self.epoch < self.cfg.epochs and (stop := self._agreed_stop()):
                    self._stop(stop)
        self.log.close()
        distributed.mark_finished()
        return self.history

    def _fit_epoch(self) -> None:
        start = time.perf_counter() - self.partial["seconds"]
        record = {"epoch": self.epoch + 1, **self.train_epoch()}
        last = self.epoch + 1 == self.cfg.epochs
        val = self.validate() if (last or (self.epoch + 1) % self.cfg.eval_every == 0) else None
        record.update(val_loss=val and val["loss"], val_err=val and val["top1_err"],
                      val_top5_err=val and val["top5_err"])
        self.epoch += 1
        record.update(step=self.step, seconds=time.perf_counter() - start)
        best = val is not None and val["top1_err"] < self.best_val_err
        if best:
            self.best_val_err = val["top1_err"]
        # lr to 6 significant figures: 6 decimals would log a small one (2.5e-7) as 0
        record = {k: (float(f"{v:.6g}") if k == "lr" else round(v, 6)) if isinstance(v, float) else v
                  for k, v in record.items()}
        self.history.append(record)
        self.save(best=best)
        self.log.append(record)
        self._report(record)
        if self.dist.is_main:
            for fn in self.callbacks:
                fn(record, self)

    def _report(self, r: dict) -> None:
        val = f" val loss {r['val_loss']:.4f} err {r['val_err']:.2f}%" if r.get("val_err") is not None else ""
        print(f"epoch {r['epoch']}/{self.cfg.epochs} step {r['step']} lr {r['lr']:.4g} train loss {r['train_loss']:.4f} "
              f"err {r['train_err']:.2f}%{val} {r['images_per_sec']:,.0f} img/s {r['seconds']:.1f}s", file=self.stream)


def train_trainer(trainer: "Trainer") -> list[dict]:
    """Fit a set-up Trainer and draw its curves; returns the per-epoch records."""
    history = trainer.fit()
    if history and trainer.dist.is_main:
        plot_training_curves(history, Path(trainer.run_dir) / "curves.png",
                             title=f"{trainer.cfg.model} on {trainer.train_data.name}")
    return history


def train(cfg: TrainConfig, run_dir: str | Path, resume: bool = False, device=None, stream=None,
          callbacks=()) -> list[dict]:
    """Train (or continue) a run and draw its curves; returns the per-epoch records."""
    return train_trainer(Trainer(cfg, run_dir, resume=resume, device=device, stream=stream, callbacks=callbacks))
