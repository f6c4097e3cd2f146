"""Shared machinery of the papers' experiments: one data split, many runs, resumable, self-describing."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import multiprocessing
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from ..version import __version__
from ..config import TrainConfig, make_config
from ..data import InMemoryDataset
from ..engine.checkpoint import latest_state_file, read_meta
from ..engine.trainer import Trainer, describe_data, split_train_val
from ..errors import ConfigError, ResNetError
from ..files import atomic_write_text
from ..models import check_model_args


@dataclass(frozen=True)
class RunSpec:
    """One training run of an experiment: a model (with arguments) and a seed."""

    model: str
    seed: int = 0
    model_args: dict = field(default_factory=dict)
    label: str = ""  # how tables and plots name it (default: the model name)

    @property
    def name(self) -> str:
        """The run's folder name: its label (or model and arguments) and seed, safe as a path."""
        base = self.label or self.model + "".join(f"-{k}{v}" for k, v in sorted(self.model_args.items()))
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", base).strip("_") + f"-s{self.seed}"

    @property
    def title(self) -> str:
        return self.label or self.model


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def base_config(data: str, epochs: int, recipe: str | None, overrides: list[str] | None) -> TrainConfig:
    """The recipe shared by every run (default: the paper's CIFAR schedule, milestones rescaled to `epochs`)."""
    cfg = make_config(recipe or "cifar10_paper", [f"data.path={data}", f"epochs={epochs}", *(overrides or [])])
    return cfg


def rescale_paper_milestones(cfg: TrainConfig, steps_per_epoch: int) -> TrainConfig:
    """The paper divides lr by 10 at 50% and 75% of training (32k, 48k of 64k); keep those fractions."""
    if cfg.schedule.name != "step" or tuple(cfg.schedule.milestones) != (32000, 48000):
        return cfg
    total = cfg.epochs * steps_per_epoch
    schedule = dataclasses.replace(cfg.schedule, milestones=(total // 2, total * 3 // 4))
    return dataclasses.replace(cfg, schedule=schedule)


# Settings a rerun may change without changing what a run computes (where the data and cache live, the
# loader's processes, compilation, how often a checkpoint is written).
_FREE_SETTINGS = {"compile", "checkpoint_minutes", "data.path", "data.cache_dir", "data.workers"}


def _differences(saved: dict, wanted: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(saved) | set(wanted)):
        name, a, b = prefix + key, saved.get(key), wanted.get(key)
        if name in _FREE_SETTINGS:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, name + ".")
        elif a != b:
            out.append(f"{name} {a!r} there, {b!r} now")
    return out


def check_same_settings(run_dir: Path, cfg: TrainConfig) -> None:
    """A run folder already there is read back or continued only when it ran with these settings: otherwise
    the report would present runs of another schedule (fewer epochs, another lr) as this experiment's. More
    epochs are allowed: the runs continue (with the paper's milestones rescaled to the new length)."""
    saved_file = run_dir / "config.yaml"
    if not saved_file.is_file():
        return
    saved = yaml.safe_load(saved_file.read_text()) or {}
    wanted = yaml.safe_load(yaml.safe_dump(cfg.to_dict(), sort_keys=False))  # tuples as the saved file's lists
    if isinstance(saved.get("epochs"), int) and saved["epochs"] < cfg.epochs:  # extended: the schedule follows
        saved = {**saved, "epochs": cfg.epochs, "schedule": {**saved.get("schedule", {}),
                                                            "milestones": wanted["schedule"].get("milestones")}}
    diff = _differences(saved, wanted)
    if diff:
        more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
        raise ConfigError(f"{run_dir} holds a run with other settings ({'; '.join(diff[:3])}{more}): rerun with "
                          "the settings it started with to continue it, or pick another --out")


def _check_same_data(run_dir: Path, train, steps: int, path: str) -> None:
    """A run folder already there is read back or continued only when it trained on data like this: data.path
    may change (the data moved), but other data in the same --out (the default is one folder for every data
    set) would be reported as this data's. Judged by the class names and the iterations an epoch."""
    records = read_metrics(run_dir)
    if not records:
        return
    theirs = read_meta(final_weights(run_dir)).get("classes")
    ran = records[-1]["step"] // max(records[-1]["epoch"], 1)
    what = []
    if theirs is not None and list(theirs) != list(train.classes):
        what.append(f"{len(theirs)} classes ({', '.join(map(str, theirs[:3]))}{', ...' if len(theirs) > 3 else ''}) "
                    f"there, {len(train.classes)} ({', '.join(map(str, train.classes[:3]))}"
                    f"{', ...' if len(train.classes) > 3 else ''}) now")
    if ran != steps:
        what.append(f"{ran:,} iterations an epoch there, {steps:,} now")
    if what:
        raise ConfigError(f"{run_dir} holds a run trained on other data than {path} ({'; '.join(what)}): "
                          "pick another --out for this data")


class Experiment:
    """A report folder: experiment.yaml (config, seeds, version, commit), runs/<name>/, plots, report.md."""

    def __init__(self, kind: str, out: str | Path, cfg: TrainConfig, specs: list[RunSpec], stream=None,
                 jobs: int = 1, data: tuple[InMemoryDataset, InMemoryDataset | None] | None = None):
        """`data`: (train, val) already prepared (e.g. normalised for pretrained weights); runs then train
        in this process, whatever `jobs` says (worker processes would load cfg.data.path afresh)."""
        if jobs < 1:
            raise ConfigError(f"jobs must be at least 1, got {jobs}")
        for spec in specs:  # a typo in model_args fails now, not after the data is read
            try:
                check_model_args(spec.model, **{**cfg.model_args, **spec.model_args})
            except (TypeError, ValueError) as e:  # one line naming the run (a ConfigError where it was no ResNetError)
                raise (type(e) if isinstance(e, ResNetError) else ConfigError)(f"{spec.title}: {e}") from None
        self.kind, self.out, self.cfg, self.specs, self.jobs = kind, Path(out), cfg, specs, jobs
        self.started = time.perf_counter()
        self.stream = stream or sys.stderr
        self._data, self._given = data, data is not None

    def describe(self, check: bool = True, **extra) -> None:
        """experiment.yaml, once the data has loaded: a call that fails on its data leaves no folder behind.
        check: the runs already in the folder are checked against these settings first, so a rerun that is
        refused leaves the description of the runs that are there (False where each run's config adds more)."""
        self.data()
        if check:
            for spec in self.specs:
                self._check_existing(spec, self._run_config(spec))
        self.out.mkdir(parents=True, exist_ok=True)
        info = {"experiment": self.kind, "version": __version__, "git_commit": git_commit(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": [dataclasses.asdict(s) for s in self.specs],
                "seeds": sorted({s.seed for s in self.specs}), "config": self.cfg.to_dict(), **extra}
        atomic_write_text(self.out / "experiment.yaml", yaml.safe_dump(info, sort_keys=False))

    def data(self) -> tuple[InMemoryDataset, InMemoryDataset | None]:
        """Loaded and split once: every run sees the same training and validation images."""
        if self._data is None:
            self._data = split_train_val(self.cfg)
            print(f"[{self.kind}] {describe_data(*self._data)}", file=self.stream)
        return self._data

    def run(self, spec: RunSpec) -> list[dict]:
        """Train one run, or resume it, or read it back when it is complete (experiments are resumable)."""
        run_dir = self.out / "runs" / spec.name
        cfg = self._run_config(spec)
        done = self._check_existing(spec, cfg)
        if done >= cfg.epochs:
            return read_metrics(run_dir)
        resume = latest_state_file(run_dir) is not None  # any checkpoint, even one before the first epoch's end
        print(f"[{self.kind}] {spec.name}: {'resuming at epoch ' + str(done) if resume else 'training'}"
              f" ({cfg.epochs} epochs)", file=self.stream)
        trainer = Trainer(cfg, run_dir, resume=resume, data=self.data(), stream=io.StringIO(),
                          callbacks=[lambda r, _: self._epoch_line(spec, cfg.epochs, r)])
        history = trainer.fit()
        last = history[-1]
        val = f" val err {last['val_err']:.2f}%" if last.get("val_err") is not None else " (no validation set)"
        print(f"[{self.kind}] {spec.name}: train err {last['train_err']:.2f}%{val}", file=self.stream)
        return history

    def _run_config(self, spec: RunSpec) -> TrainConfig:
        steps = len(self.data()[0]) // self.cfg.data.batch_size
        # The run's config records the experiment's hold-out seed: its own seed differs, its validation images do not.
        data = dataclasses.replace(self.cfg.data, split_seed=self.cfg.holdout_seed)
        return rescale_paper_milestones(dataclasses.replace(
            self.cfg, model=spec.model, seed=spec.seed, model_args={**self.cfg.model_args, **spec.model_args},
            data=data), steps)

    def _check_existing(self, spec: RunSpec, cfg: TrainConfig) -> int:
        """A ConfigError when the run already in the folder was trained on other data or with other settings;
        else its completed epochs (0 for none)."""
        run_dir = self.out / "runs" / spec.name
        done = completed_epochs(run_dir)
        if done:  # before the settings: other data's iterations an epoch would show as other lr milestones
            _check_same_data(run_dir, self.data()[0], len(self.data()[0]) // self.cfg.data.batch_size, cfg.data.path)
        check_same_settings(run_dir, cfg)
        return done

    def _epoch_line(self, spec: RunSpec, epochs: int, r: dict) -> None:
        """One plain line per finished epoch: progress shows in logs and pipes, not only on a terminal."""
        val = f", val err {r['val_err']:.2f}%" if r.get("val_err") is not None else ""
        minutes, seconds = divmod(int(time.perf_counter() - self.started), 60)
        print(f"[{self.kind}] {spec.name} epoch {r['epoch']}/{epochs}: train err {r['train_err']:.2f}%{val} "
              f"({r['seconds']:.1f} s; {minutes}:{seconds:02d} elapsed)", file=self.stream, flush=True)

    def run_all(self) -> list[tuple[RunSpec, list[dict]]]:
        """Every run, in order; with jobs > 1 up to that many train side by side in worker processes
        (small networks leave a GPU mostly idle, so several at once keep it busy)."""
        if self.jobs == 1 or len(self.specs) == 1 or self._given:
            return [(spec, self.run(spec)) for spec in self.specs]
        self.data()  # decode (and cache) the images once, before the workers read the cache
        workers = min(self.jobs, len(self.specs))
        # Share the cores instead of oversubscribing them (busy OpenMP threads of several processes on the
        # same cores slow small-tensor work many times over); never more than this process was given.
        threads = max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) // workers))
        context = multiprocessing.get_context("spawn")  # fork is unsafe once CUDA or OpenMP threads exist
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = [pool.submit(_run_in_worker, self.kind, str(self.out), self.cfg, spec, threads)
                       for spec in self.specs]
            with _forward_sigterm(pool):
                return [(spec, future.result()) for spec, future in zip(self.specs, futures)]


@contextlib.contextmanager
def _forward_sigterm(pool: ProcessPoolExecutor):
    """SIGTERM to this process goes on to the workers, which checkpoint and stop (their runs resume
    on the next call); without it they would train on, orphaned. Ctrl-C reaches them by itself."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(signum, frame):
        for process in list((getattr(pool, "_processes", None) or {}).values()):  # None once shut down
            try:
                os.kill(process.pid, signal.SIGTERM)
            except OSError:  # already gone
                pass

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_in_worker(kind: str, out: str, cfg: TrainConfig, spec: RunSpec, threads: int) -> list[dict]:
    torch.set_num_threads(threads)
    return Experiment(kind, out, cfg, [spec], stream=sys.stderr).run(spec)


def completed_epochs(run_dir: Path) -> int:
    """Epochs a run folder holds a checkpoint for (0: none, start it; the epochs: read it back)."""
    if latest_state_file(run_dir) is None:
        return 0
    records = read_metrics(run_dir)
    return records[-1]["epoch"] if records else 0


def final_weights(run_dir: Path) -> Path:
    """The weights of a run's newest checkpoint: last.safetensors, or the newest ckpt/ pair's in a folder
    that `resnet park` copied (it leaves out the last.* links, and a finished run is read back, not rerun)."""
    state = latest_state_file(run_dir)
    if state is None:
        raise FileNotFoundError(f"{run_dir} holds no checkpoint (last.state.pt or a ckpt/ pair)")
    return state.with_name(state.name.replace(".state.pt", ".safetensors"))


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def format_mean_std(mean: float, std: float, n: int) -> str:
    """'mean ± std' over n > 1 runs; one run has no spread to show (a '± 0.00' would claim one)."""
    return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f} (one run)"


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def count(n: int, word: str) -> str:
    """'1 epoch', '3 epochs', '63,882 iterations': numbers in reports read as words."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"
