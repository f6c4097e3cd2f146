"""torch.compile for the training step: how to compile, and whether it pays here (a cached measured probe).

`compile=auto` (the default) compiles where a short probe on this machine says the compiled step,
compile time included, finishes the run sooner than eager; `true` and `false` force the choice. The
probe times a fresh copy of the run's network (never the run's own: the run's weights and random
numbers stay untouched, so exact resume holds) on random data, and its result is cached per
processor, PyTorch version, threads, network, batch and precision in the toolkit's cache folder.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import allocator
from ..files import cache_root, read_json_cache, write_json_cache
from ..models import create_model
from .optim import can_fuse
from .precision import Precision, cpu_model

CACHE_FILE = "compile-probe.json"
MIN_GAIN = 0.97  # the compiled step must be 3% faster than eager to count as faster (timing noise)
# The largest saving compilation has shown on these networks (1.2-1.5x): a run whose eager time times
# this is below the compile time cannot win, and is not probed.
BEST_SAVING = 0.35
FIRST_COMPILE_GUESS = 60.0  # seconds, before anything was measured on this machine (2 cores: 36-60 s)
# Runs shorter than this are not even probed (tests, smoke runs); longer ones time a few eager steps
# first and compile only when BEST_SAVING of their eager time could pay for a compilation.
MIN_PROBE_STEPS = 100


# Inductor vectorises a channels_last CPU kernel (BN, ReLU, the residual adds) over the channels. A
# 512-bit vector of bf16 holds 32 channels, so the BN/ReLU/add kernels of a 16-channel layer (a CIFAR
# ResNet's first stage, its largest activations) run on half-empty vectors; 256-bit vectors fit them.
# Measured (bench/compile_step.py, Intel Xeon with AMX, 2026-12-05): ResNet-20 (BN widths 16-64, batch
# 128) bf16 compiled step 1.23x / 1.26x eager with 256-bit vectors against 1.20x / 1.23x with 512 (two
# runs); in fp32, where 16 channels fill a 512-bit vector, 256 was slower (1.10x against 1.15x); the
# speedrun net (a 24-channel whitening conv without BN, BN widths 64-256, batch 1024) 0.75x with 256
# against 0.83x with 512 (it stays eager). So the rule looks at the BN layers' widths.
NARROW_CHANNELS = 32
# Bumped when the step the probe times changes, so that cached decisions are measured again
# (2: fused optimizer updates and inductor_options, 2026-12-05; 3: the rule reads BN widths).
STEP_VERSION = 3


def inductor_options(model: nn.Module, precision: Precision) -> dict:
    """Inductor settings for compiling `model`'s training step in `precision` (see NARROW_CHANNELS)."""
    if precision.device.type != "cpu" or precision.dtype is None:
        return {}
    widths = [m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    return {"cpp.simdlen": 256} if widths and min(widths) < NARROW_CHANNELS else {}


def compile_kwargs(device: torch.device, model: nn.Module | None = None, precision: Precision | None = None) -> dict:
    """torch.compile's arguments for a training step on `device`.

    CUDA: CUDA graphs (mode="reduce-overhead"): CIFAR networks are launch-bound there, about 8 ms of
    kernel launches a ResNet-20 step on an H200, and a graph replays the whole step in one launch.
    CPU: inductor's default mode (fused BN/ReLU/add passes around oneDNN's convolutions), with
    `inductor_options` for `model` in `precision`; static shapes, so a last batch of another size gets
    a graph of its own instead of slower dynamic kernels."""
    if device.type == "cuda":
        return {"mode": "reduce-overhead", "dynamic": False}
    options = inductor_options(model, precision) if model is not None and precision is not None else {}
    return {"dynamic": False, **({"options": options} if options else {})}


def build_step_fn(model_name: str, precision: Precision, channels_last: bool, options: dict | None,
                  model_args: dict | None = None, lr: float = 0.05,
                  prepare: Callable[[nn.Module], nn.Module] | None = None):
    """An SGD step (forward, loss, backward, update) of a fresh `model_name`, eager (`options=None`)
    or compiled as the trainer compiles it (compile_kwargs) with `options` over that: torch.compile's
    `mode` and `dynamic`, inductor settings (a setting of None restores inductor's default),
    `compile_update` to compile the optimizer's update too. `prepare` may change the fresh network
    first (a bench strips layers to time the rest). For the probe and the benches."""
    device = precision.device
    model = create_model(model_name, **(model_args or {}))
    model = (prepare(model) if prepare else model).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    options = None if options is None else dict(options)
    compile_update = bool(options and options.pop("compile_update", False))
    # the trainer's update (make_optimizer: fused); a compiled update starts from torch's own per-tensor code
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9,
                          fused=None if compile_update else can_fuse([{"params": params}]) or None)
    forward = model
    update = torch.compile(opt.step) if compile_update else opt.step
    if options is not None:
        kwargs = compile_kwargs(device, model, precision)
        settings = {**kwargs.pop("options", {}), **options}
        kwargs.update({k: settings.pop(k) for k in ("mode", "dynamic") if k in settings})
        if settings:
            kwargs["options"] = settings
        forward = torch.compile(model, **kwargs)

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with precision.autocast():
            logits = forward(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        update()
        return loss.detach()

    return step


@dataclass(frozen=True)
class Probe:
    eager_s: float  # seconds per step
    compiled_s: float | None  # None: not probed (the run was too short to gain)
    compile_s: float  # seconds the compilation took (the probe's own, or the last real one)

    def gain(self, steps: int) -> float:
        """Seconds that compiling saves over `steps` steps, its compile time counted."""
        if self.compiled_s is None:
            return -self.compile_s
        return steps * (self.eager_s - self.compiled_s) - self.compile_s

    def wins(self, steps: int) -> bool:
        return self.compiled_s is not None and self.compiled_s < MIN_GAIN * self.eager_s and self.gain(steps) > 0


def probe_key(model_name: str, model_args: dict, batch: int, precision: Precision, channels_last: bool,
              image_size: int = 32) -> str:
    """What a probe's result depends on: the processor (model and ISA oneDNN runs), PyTorch, threads,
    the allocator settings, the network and its arguments, the batch, the precision and memory layout."""
    device = precision.device
    where = (torch.cuda.get_device_name(device) if device.type == "cuda" else
             f"{cpu_model()}|{torch.backends.cpu.get_cpu_capability()}|{os.environ.get('ONEDNN_MAX_CPU_ISA', '')}")
    args = json.dumps(model_args, sort_keys=True)
    layout = "cl" if channels_last else "nchw"
    return f"{where}|torch {torch.__version__}|{torch.get_num_threads()} threads|{allocator.describe()}|{model_name} {args}|" \
           f"batch {batch}x{image_size}px|{precision.name}|{layout}|step v{STEP_VERSION}"


def time_steps(step, x: torch.Tensor, y: torch.Tensor, steps: int, device: torch.device) -> float:
    """Median seconds of `steps` single steps (a moment of contention does not decide)."""
    times = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        step(x, y)
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_alternating(steps: dict, x: torch.Tensor, y: torch.Tensor, rounds: int, device: torch.device) -> dict:
    """{name: median seconds a step} of several step functions timed in turns, one step each a round:
    a change of load (another process starting, say) falls on every side alike, not on one of them."""
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name].append(time_steps(step, x, y, 1, device))
    return {name: statistics.median(t) for name, t in times.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_probe(model_name: str, model_args: dict, batch: int, precision: Precision, channels_last: bool,
              image_size: int = 32, steps: int = 8, run_steps: int | None = None,
              compile_guess: float = FIRST_COMPILE_GUESS) -> Probe:
    """Time eager steps, then (when `run_steps` could gain at all) compile and time compiled steps.
    Random numbers are drawn from a forked generator: the caller's RNG state is left as it was."""
    device = precision.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        x = torch.randn(batch, model_args.get("in_chans", 3), image_size, image_size, device=device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, max(model_args.get("num_classes", 10), 1), (batch,), device=device)
        eager = build_step_fn(model_name, precision, channels_last, None, model_args)
        time_steps(eager, x, y, 2, device)  # oneDNN builds its kernels
        eager_s = time_steps(eager, x, y, max(steps // 2, 1), device)  # enough to see if a compile could pay
        if run_steps is not None and run_steps * eager_s * BEST_SAVING < compile_guess:
            return Probe(eager_s, None, compile_guess)
        compiled = build_step_fn(model_name, precision, channels_last, {}, model_args)  # as the trainer compiles
        start = time.perf_counter()
        time_steps(compiled, x, y, 2, device)  # compiles the forward and the backward
        first_two_s = time.perf_counter() - start
        # Eager and compiled in turns: timed one after the other, a process starting beside the probe
        # once made the slower one look 13% faster (speedrun net, 2026-12-03).
        timed = time_alternating({"eager": eager, "compiled": compiled}, x, y, steps, device)
    # The two first calls ran compiled steps, so their time less two compiled steps is the compilation
    # (less two eager steps read 0 when a busy machine slowed the eager timing and inductor's cache was warm).
    return Probe(timed["eager"], timed["compiled"], max(first_two_s - 2 * timed["compiled"], 0.0))


class ProbeCache:
    """Probe results in one JSON file of the cache folder, {key: Probe fields}; written atomically."""

    def __init__(self, folder: str | Path | None = None):
        self.path = Path(folder or cache_root()) / CACHE_FILE

    def read(self) -> dict:
        return read_json_cache(self.path)  # none yet, or damaged: {} (probe again)

    def get(self, key: str) -> Probe | None:
        entry = self.read().get(key)
        return _as_probe(entry) if isinstance(entry, dict) else None

    def put(self, key: str, probe: Probe) -> None:
        data = self.read()
        data[key] = asdict(probe)
        write_json_cache(self.path, data)


def decide(choice: bool | str, model_name: str, model_args: dict, batch: int, precision: Precision,
           channels_last: bool, image_size: int, steps_left: int, world_size: int = 1,
           cache: ProbeCache | None = None) -> tuple[bool, str, str | None]:
    """(compile?, a line saying why, the probe's cache key) for `compile=choice` on a run with
    `steps_left` steps of `batch` images per process."""
    if choice is True or choice is False:
        return choice, "", None
    if world_size > 1:  # every process would have to probe, and agree
        return False, "compile=auto: not under torchrun (set compile=true to compile every process)", None
    cache = cache or ProbeCache()
    key = probe_key(model_name, model_args, batch, precision, channels_last, image_size)
    probe = cache.get(key)
    if probe is None and steps_left < MIN_PROBE_STEPS:
        return False, "", None  # too short to win back a compilation: eager, without a word
    source = f"cached in {cache.path}"
    if probe is None:
        guess = max((p.compile_s for p in map(_as_probe, cache.read().values()) if p), default=FIRST_COMPILE_GUESS)
        probe = run_probe(model_name, model_args, batch, precision, channels_last, image_size,
                          run_steps=steps_left, compile_guess=guess)
        if probe.compiled_s is None:
            return False, (f"compile=auto: eager; {steps_left} steps of {probe.eager_s * 1e3:.0f} ms are too few "
                           f"to win back a compilation (~{probe.compile_s:.0f} s here)"), None
        cache.put(key, probe)
        source = f"measured now, cached in {cache.path}"
    wins = probe.wins(steps_left)
    saving = probe.gain(steps_left)
    verdict = "compiling" if wins else "eager"
    return wins, (f"compile=auto: {verdict}; a step takes {probe.compiled_s * 1e3:.0f} ms compiled, "
                  f"{probe.eager_s * 1e3:.0f} ms eager ({source}); over this run's {steps_left} steps "
                  f"compiling {'saves' if saving > 0 else 'costs'} ~{abs(saving):.0f} s, "
                  f"its ~{probe.compile_s:.0f} s of compilation counted"), key


def _as_probe(entry) -> Probe | None:
    try:
        return Probe(**entry)
    except TypeError:  # another version's entry: probe again
        return None


def note_compile_seconds(key: str | None, seconds: float, cache: ProbeCache | None = None) -> None:
    """Remember how long the run's own compilation took (inductor's caches make repeats faster):
    the next decision for this key counts that, not the first probe's."""
    if key is None:
        return
    cache = cache or ProbeCache()
    probe = cache.get(key)
    if probe is not None:
        cache.put(key, Probe(probe.eager_s, probe.compiled_s, seconds))
