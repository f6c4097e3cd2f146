"""The fit loop: data, model, optimizer and schedule from a TrainConfig; one epoch; validation; checkpoints."""
from __future__ import annotations

import copy
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from .. import __version__
from ..config import TrainConfig
from ..data import InMemoryDataset, load_dataset, stratified_split
from ..models import create_model
from . import checkpoint
from .evaluate import evaluate
from .logger import MetricsLog, Progress
from .optim import EMA, Schedule, make_optimizer
from .precision import default_device, resolve_precision


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite."""


def split_train_val(cfg: TrainConfig) -> tuple[InMemoryDataset, InMemoryDataset | None]:
    """The training data and a seeded, stratified hold-out from it (the test set stays untouched)."""
    data = load_dataset(cfg.data.path, "train", cache_dir=cfg.data.cache_dir or None)
    size = cfg.data.val_size
    count = int(round(size * len(data))) if size < 1 else int(size)
    if count == 0:
        return data, None
    if count >= len(data):
        raise ValueError(f"data.val_size={size} leaves no training images out of {len(data)}")
    train_idx, val_idx = stratified_split(data.labels, count, seed=cfg.seed)
    return data.subset(train_idx), data.subset(val_idx)


class Trainer:
    """Trains `cfg.model` on `cfg.data.path` into `run_dir`; `resume=True` continues that folder exactly."""

    def __init__(self, cfg: TrainConfig, run_dir: str | Path, resume: bool = False, device=None, stream=None,
                 data: tuple[InMemoryDataset, InMemoryDataset | None] | None = None):
        """`data` = (train, val) already in memory skips loading cfg.data.path (benchmarks, experiments)."""
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.stream = stream or sys.stderr
        self.device = torch.device(device) if device else default_device()
        self.precision = resolve_precision(cfg.precision, self.device)
        torch.manual_seed(cfg.seed)
        self.train_data, self.val_data = data or split_train_val(cfg)
        self.classes = self.train_data.classes
        self.train_loader = self.train_data.loader(cfg.data.batch_size, train=True, seed=cfg.seed, device=self.device,
                                                   channels_last=cfg.channels_last, pad=cfg.data.pad, flip=cfg.data.flip)
        if len(self.train_loader) == 0:
            raise ValueError(f"data.batch_size={cfg.data.batch_size} exceeds the {len(self.train_data)} training images")
        self.val_loader = self.val_data.loader(cfg.data.eval_batch_size, train=False, device=self.device,
                                               channels_last=cfg.channels_last) if self.val_data else None
        args = {"num_classes": len(self.classes), "in_chans": int(self.train_data.images.shape[1]), **cfg.model_args}
        self.model = create_model(cfg.model, **args).to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(self.model, cfg.optim)
        self.scaler = self.precision.grad_scaler()
        self.total_steps = cfg.epochs * len(self.train_loader)
        self.schedule = Schedule(cfg.schedule, cfg.optim.lr, self.total_steps)
        self.ema = EMA(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.epoch = self.step = 0
        self.best_val_err = math.inf
        self.history: list[dict] = []
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log = MetricsLog(self.run_dir)
        if resume:
            self._restore()
        else:
            self.log.rewrite([])
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    # ------------------------------------------------------------------ state
    def _state(self) -> dict:
        state = {"epoch": self.epoch, "step": self.step, "optimizer": self.optimizer.state_dict(),
                 "schedule": self.schedule.state_dict(), "rng": torch.get_rng_state(), "history": self.history,
                 "best_val_err": self.best_val_err, "config": self.cfg.to_dict()}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state()
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
            state["model_raw"] = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def _restore(self) -> None:
        state, weights = checkpoint.load_training_state(self.run_dir)
        if state.get("config", {}).get("model") not in (None, self.cfg.model):
            raise ValueError(f"--resume {self.run_dir}: that run trains {state['config']['model']}, not {self.cfg.model}")
        self.model.load_state_dict(state.get("model_raw", weights))
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"])
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.history, self.best_val_err = list(state["history"]), float(state["best_val_err"])
        self.log.rewrite(self.history)

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
                "input_size": int(self.train_data.images.shape[-1]), "epoch": self.epoch, "step": self.step,
                "dataset": self.train_data.name, "config": self.cfg.to_dict(), "version": __version__}

    # ------------------------------------------------------------------ loop
    def train_epoch(self) -> dict:
        """One pass over the training set; returns loss, error (%) and images/s of the training steps alone."""
        model, opt, cfg = self.model, self.optimizer, self.cfg
        model.train()
        self.train_loader.set_epoch(self.epoch)
        loss_sum = torch.zeros((), device=self.device)
        wrong = torch.zeros((), device=self.device, dtype=torch.long)
        seen, lr = 0, None
        progress = Progress(len(self.train_loader), f"epoch {self.epoch + 1}/{cfg.epochs}", self.stream)
        start = time.perf_counter()
        for i, (x, y) in enumerate(self.train_loader):
            new_lr = self.schedule.lr(self.step)
            if new_lr != lr:
                lr = new_lr
                for group in opt.param_groups:
                    group["lr"] = lr
            with self.precision.autocast():
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            self._backward_step(loss)
            batch_wrong = (logits.argmax(1) != y).sum()
            loss_sum += loss.detach() * y.numel()
            wrong += batch_wrong
            seen += y.numel()
            self.step += 1
            if not self.schedule.warmup_done:
                self.schedule.observe_train_error(100.0 * float(batch_wrong) / y.numel())
            if progress.due() or i + 1 == len(self.train_loader):
                self._check_finite(loss_sum)
                progress.update(i + 1, seen, float(loss_sum) / seen, 100.0 * float(wrong) / seen, force=True)
        progress.close()
        seconds = time.perf_counter() - start
        return {"lr": lr, "train_loss": float(loss_sum) / seen, "train_err": 100.0 * float(wrong) / seen,
                "images_per_sec": seen / seconds, "train_seconds": seconds}

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
            self.ema.update(self.model)

    def _check_finite(self, loss_sum: torch.Tensor) -> None:
        if not torch.isfinite(loss_sum):
            raise NonFiniteLossError(f"the training loss became {float(loss_sum)} by step {self.step} "
                                     f"(epoch {self.epoch + 1}); the last good checkpoint is in {self.run_dir}. "
                                     "Lower optim.lr or set optim.grad_clip.")

    def validate(self) -> dict | None:
        if self.val_loader is None:
            return None
        return evaluate(self.eval_model(), self.val_loader, self.precision, len(self.classes), self.cfg.tta_flip)

    def fit(self) -> list[dict]:
        """Train until cfg.epochs (the total), checkpointing after every epoch."""
        cfg = self.cfg
        while self.epoch < cfg.epochs:
            start = time.perf_counter()
            record = {"epoch": self.epoch + 1, **self.train_epoch()}
            last = self.epoch + 1 == cfg.epochs
            val = self.validate() if (last or (self.epoch + 1) % cfg.eval_every == 0) else None
            record.update(val_loss=val and val["loss"], val_err=val and val["top1_err"],
                          val_top5_err=val and val["top5_err"])
            self.epoch += 1
            record.update(step=self.step, seconds=time.perf_counter() - start)
            best = val is not None and val["top1_err"] < self.best_val_err
            if best:
                self.best_val_err = val["top1_err"]
            record = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.items()}
            self.history.append(record)
            checkpoint.save_checkpoint(self.run_dir, self.eval_model(), self._state(), self.meta(), best=best)
            self.log.append(record)
            self._report(record)
        self.log.close()
        return self.history

    def _report(self, r: dict) -> None:
        val = f" val loss {r['val_loss']:.4f} err {r['val_err']:.2f}%" if r.get("val_err") is not None else ""
        print(f"epoch {r['epoch']}/{self.cfg.epochs} step {r['step']} lr {r['lr']:.4g} train loss {r['train_loss']:.4f} "
              f"err {r['train_err']:.2f}%{val} {r['images_per_sec']:,.0f} img/s {r['seconds']:.1f}s", file=self.stream)


def train(cfg: TrainConfig, run_dir: str | Path, resume: bool = False, device=None, stream=None) -> list[dict]:
    """Train (or continue) a run and draw its curves; returns the per-epoch records."""
    from ..plots import plot_training_curves

    trainer = Trainer(cfg, run_dir, resume=resume, device=device, stream=stream)
    history = trainer.fit()
    if history:
        plot_training_curves(history, Path(run_dir) / "curves.png", title=f"{cfg.model} on {trainer.train_data.name}")
    return history
