"""`resnet benchmark`: every inference backend side by side on one model.

Per backend and batch size: images/s, latency median and p99, peak memory, and top-1 agreement
with the fp32 eager model (plus accuracy when labelled images are given).

Peak memory is the process's resident-set high-water mark (VmHWM) during the timed loop: it is
reset to the current RSS just before the loop by writing 5 to /proc/self/clear_refs (Linux), so it
counts everything resident while the backend runs (interpreter, libraries, weights, the reference
model and the check images as well as the backend's activations); `mem_delta_mb` is the part
added during the loop. Where the reset is not possible the field is the lifetime maximum
(ru_maxrss) and `peak_mem_note` says so.

A time budget (default two minutes) bounds the whole run: each timed loop gets its share of what
is left (and at least `min_iters` calls while budget is left, one once it is spent), and a backend
that would start after the budget is spent is listed as skipped, saying how to ask for more. Backends run cheapest to prepare first, so the
budget cuts those that compile.
"""
from __future__ import annotations

import argparse
import gc
import resource
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from .. import allocator
from ..errors import DataError
from ..models.counting import check_image_size
from ..models.zoo import create_model
from . import backends as inference_backends  # the module: `backends` names lists of backend names below
from . import parity
from .backends import REFERENCE, Predictor, backend_status, prepare_inference
from .parity import batch_inputs


def batch_sizes(text: str) -> list[int]:
    """'1,16' -> [1, 16]: the --batch of `resnet benchmark` and the bench scripts; a usage error (argparse's
    one line), not a traceback later, for 0, -1, 'x' or nothing."""
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated batch sizes of at least 1, got {text!r}")
    return values


FIELDS = ("backend", "batch", "images_per_sec", "latency_ms_p50", "latency_ms_p99", "peak_mem_mb", "agreement")
# Cheapest to prepare first: eager (nothing), ONNX Runtime (an export), then the compiled ones
# (inductor compiles every shape, minutes for ResNet-50 on two cores).
DEFAULT_BACKENDS = ("eager-fp32", "eager-bf16", "onnxruntime", "onnxruntime-int8", "compiled-bf16", "int8")
DEFAULT_BUDGET = 120.0  # seconds for the whole run: ResNet-50's eager and ONNX Runtime rows on two cores


class Budget:
    """Seconds left of a time budget (None: no limit); `clock` is replaceable for tests."""

    def __init__(self, seconds: float | None, clock=time.perf_counter):
        self.seconds, self.clock, self.start = seconds, clock, clock()

    def left(self) -> float:
        return float("inf") if self.seconds is None else self.seconds - (self.clock() - self.start)

    def share(self, loops_left: int, cap: float) -> float:
        """Seconds for the next timed loop: `cap`, or an equal share of what is left."""
        return max(0.0, min(cap, self.left() / max(loops_left, 1)))

    def status(self) -> str:
        return "" if self.seconds is None else f"; {max(0.0, self.left()):.0f} s of the {self.seconds:.0f} s budget left"


def _rss_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def time_backend(predictor, x: torch.Tensor, seconds: float = 3.0, min_iters: int = 10, max_iters: int = 2000,
                 warmup: int = 3, spent=None) -> dict:
    """Latency of `predictor(x)` over a timed loop of at least `min_iters` calls and `seconds`.

    `spent()` True (the time budget is used up) ends the warm-up and the loop early, after one call
    of each: a slow model on a busy machine must not run past the budget by min_iters calls."""
    spent = spent or (lambda: False)
    for i in range(warmup):
        if i and spent():
            break
        predictor(x)
    gc.collect()
    reset = _reset_peak_rss()
    rss0 = _rss_mb("VmRSS")
    times = []
    start = time.perf_counter()
    while len(times) < max_iters and (len(times) < min_iters or time.perf_counter() - start < seconds) \
            and not (times and spent()):
        t0 = time.perf_counter()
        predictor(x)
        times.append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    peak = _rss_mb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times_ms = sorted(1000 * t for t in times)
    p99 = times_ms[min(len(times_ms) - 1, int(round(0.99 * (len(times_ms) - 1))))]
    row = {"images_per_sec": x.shape[0] * len(times) / total, "latency_ms_p50": statistics.median(times_ms),
           "latency_ms_p99": p99, "iters": len(times), "peak_mem_mb": peak,
           "mem_delta_mb": (peak - rss0) if reset and peak is not None and rss0 is not None else None}
    if not reset:
        row["peak_mem_note"] = "lifetime maximum RSS (could not reset the high-water mark)"
    if len(times) < min_iters:
        row["note_timing"] = f"{len(times)} timed call(s): the time budget was spent"
    return row


def with_wrapper(predictor, cpp_wrapper: bool):
    """`predictor` whose frozen compilations (one per input shape, at its first call) use inductor's C++
    wrapper or its Python one, whatever backends.CPP_WRAPPER_MAX_PIXELS says: for A/B timings."""
    def run(x):
        saved = inference_backends.CPP_WRAPPER_MAX_PIXELS
        inference_backends.CPP_WRAPPER_MAX_PIXELS = 1 << 40 if cpp_wrapper else 0
        try:
            return predictor(x)
        finally:
            inference_backends.CPP_WRAPPER_MAX_PIXELS = saved
    return run


def random_model(model_name: str, image_size: int, images: int = 64) -> tuple[nn.Module, torch.Tensor]:
    """(model, images): `model_name` with random weights (seed 0) whose BN statistics are re-estimated on
    `images` random images of `image_size`: speed does not depend on the weights, but BN's must be sane."""
    torch.manual_seed(0)
    x = parity.random_images(images, image_size, 3)
    return reestimate_bn(create_model(model_name).eval(), x), x


def alternating_latencies(runs: dict, x: torch.Tensor, rounds: int) -> tuple[dict, dict]:
    """({name: first-call seconds}, {name: [p50 ms per round]}) of every callable in `runs` on `x`, taking
    turns round by round, so that drift on a shared machine hits all alike (the bench/ scripts' A/B timings)."""
    setup = {}
    with torch.no_grad():
        for name, run in runs.items():  # the first call compiles this shape
            t0 = time.perf_counter()
            run(x)
            setup[name] = time.perf_counter() - t0
        times = {name: [] for name in runs}
        for _ in range(rounds):
            for name, run in runs.items():
                row = time_backend(run, x, seconds=0, min_iters=max(3, 20 // x.shape[0]), warmup=2)
                times[name].append(row["latency_ms_p50"])
    return setup, times


def _release():
    gc.collect()
    if hasattr(torch, "_dynamo"):
        torch._dynamo.reset()


def run_benchmark(model: nn.Module, backends=DEFAULT_BACKENDS, batches=(1, 16), image_size: int = 224,
                  images: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                  calibration: torch.Tensor | None = None, seconds: float = 3.0, check_batch: int | None = None,
                  log=None, min_iters: int = 10, budget: float | None = None, clock=time.perf_counter) -> list[dict]:
    """One row per (backend, batch): the FIELDS plus setup_s (preparation, calibration and the first
    call, where compilation happens), note, skipped (why) and accuracy.

    `images`: inputs for the agreement check (and the timed batches); random ones when None.
    `calibration`: images for the int8 backends (default: `images`). `budget`: seconds for the
    whole run (None: no limit), see the module's docstring."""
    model = model.eval()
    clock_budget = Budget(budget, clock)
    images = parity.random_images(256, image_size, model.config.in_chans) if images is None else images
    calibration = images if calibration is None else calibration
    check_batch = check_batch or max(batches)
    reference = parity.logits(Predictor(REFERENCE, model), images, check_batch)
    # Agreement means little when the reference puts every input in one or two classes
    # (a randomly initialised network often does): the table's title says how many it used.
    distinct = int(reference.argmax(1).unique().numel())
    rows = []
    for k, backend in enumerate(backends):
        base = {"backend": backend, "image_size": image_size, "threads": torch.get_num_threads(),
                "reference_classes": distinct}
        predictor, skip = _prepare_and_check(model, backend, images, labels, calibration, reference, check_batch,
                                             base, clock_budget)
        for j, batch in enumerate(batches):
            row = dict(base, batch=batch)
            if skip is None:
                t0 = clock()
                loops_left = (len(backends) - k) * len(batches) - j
                row.update(time_backend(predictor, batch_inputs(images, batch), clock_budget.share(loops_left, seconds),
                                        min_iters, spent=lambda: clock_budget.left() <= 0))
                if log:
                    log(f"{backend} batch {batch}: {row['images_per_sec']:.1f} img/s "
                        f"({clock() - t0:.0f} s{clock_budget.status()})")
            else:
                row.update({k2: None for k2 in FIELDS[2:]}, skipped=skip)
            rows.append(row)
        del predictor
        _release()
    return rows


def _prepare_and_check(model, backend, images, labels, calibration, reference, check_batch, base: dict,
                       budget: Budget):
    """(predictor, None), with the agreement check's figures in `base`, or (None, why it is skipped)."""
    skip = backend_status(backend)
    if skip is None and budget.left() <= 0:
        skip = (f"the time budget ({budget.seconds:.0f} s) was spent before it started; "
                "measure it with a larger --budget or --backends " + backend)
    if skip is not None:
        return None, skip
    try:
        t0 = time.perf_counter()
        predictor = prepare_inference(model, backend, calibration=calibration, example=images[:2])
        predictor(images[:check_batch])  # compiled backends compile here
        base["setup_s"] = time.perf_counter() - t0
        check = parity.compare(reference, parity.logits(predictor, images, check_batch), labels)
        base.update(agreement=check["agreement"], note=predictor.note, max_abs_diff=check["max_abs_diff"],
                    check_images=images.shape[0])
        base.update({k: check[k] for k in ("accuracy", "accuracy_fp32") if k in check})
        return predictor, None
    except Exception as e:  # one broken backend must not hide the others' numbers
        return None, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def format_table(rows: list[dict], title: str = "") -> str:
    """A fixed-width table; skipped backends show why."""
    has_acc = any("accuracy" in r for r in rows)
    head = (f"{'backend':<18}{'batch':>6}{'images/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'peak MB':>9}{'+loop MB':>9}"
            f"{'agree':>8}" + (f"{'acc %':>8}" if has_acc else "") + f"{'setup s':>9}")
    lines = ([title] if title else []) + [head, "-" * len(head)]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"{r['backend']:<18}{r['batch']:>6}  skipped: {r['skipped']}")
            continue
        delta = r.get("mem_delta_mb")
        acc = f"{r['accuracy']:>8.2f}" if has_acc else ""
        lines.append(f"{r['backend']:<18}{r['batch']:>6}{r['images_per_sec']:>11.1f}{r['latency_ms_p50']:>9.2f}"
                     f"{r['latency_ms_p99']:>9.2f}{r['peak_mem_mb']:>9.0f}{'' if delta is None else f'{delta:.0f}':>9}"
                     f"{100 * r['agreement']:>7.2f}%{acc}{r['setup_s']:>9.1f}")
    return "\n".join(lines)


@torch.no_grad()
def reestimate_bn(model: nn.Module, images: torch.Tensor, batch_size: int = 32) -> nn.Module:
    """Replace every BN's running statistics by those of `images` (cumulative average), in place.

    For randomly initialised networks only: with BN at its initial statistics (mean 0, var 1)
    a random ResNet-50's activations grow through the residual sums until one class wins for
    every input, and top-1 agreement with fp32 is then trivially 100%. With statistics matched
    to the inputs its logits spread over many classes, so agreement measures something."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for i in range(0, images.shape[0], batch_size):
        model(images[i:i + batch_size])
    for m, mom in zip(bns, saved):
        m.momentum = mom
    return model.eval()


def _model_labels(labels: torch.Tensor, classes: list[str], meta: dict, model: nn.Module) -> torch.Tensor | None:
    """The data's labels as the model's class indices, paired as `resnet eval` pairs them (by name or
    WordNet id; by position only for a model without class names); None (no accuracy) when they do
    not pair. A random-init model's classes are not the dataset's: the caller gives it no labels."""
    try:
        mapping = parity.class_mapping(classes, meta.get("classes"), int(getattr(model.fc, "out_features", 0)))
    except DataError:
        return None
    return torch.tensor(mapping)[labels]


def benchmark(model: nn.Module, meta: dict, backends=DEFAULT_BACKENDS, batches=(1, 16), image_size: int | None = None,
              data: str | None = None, check_images: int = 64, calib_images: int = 64, seconds: float = 2.0,
              log=None, min_iters: int = 3, budget: float | None = DEFAULT_BUDGET) -> tuple[list[dict], str]:
    """`resnet benchmark`: pick inputs for a loaded model (`serve.load.load_spec`), run every
    backend within `budget` seconds: (rows, title).

    With `data`, agreement is measured on real images (the run's validation hold-out for a
    checkpoint) and int8 is calibrated on other images (those the run trained on); without it, on
    standard-normal inputs."""
    name = meta.get("model", "model")
    image_size = image_size or int(meta.get("input_size") or model.config.input_size)
    check_image_size(model, image_size)
    labels = calibration = None
    if data:
        chans = model.config.in_chans
        images, labels, classes = parity.real_images(data, meta, check_images, image_size, seed=0, split="val",
                                                     channels=chans)
        calibration = parity.real_images(data, meta, calib_images, image_size, seed=1, split="train", channels=chans)[0]
        labels = None if meta.get("random_init") else _model_labels(labels, classes, meta, model)
        source = f"{images.shape[0]} real images of {data}"
    else:
        chans = model.config.in_chans
        images = parity.random_images(check_images, image_size, chans, seed=0)
        calibration = parity.random_images(calib_images, image_size, chans, seed=1)
        source = f"{check_images} random inputs"
    if meta.get("random_init"):
        reestimate_bn(model, calibration[:64])
        source += f" (random weights, BN statistics re-estimated on {min(64, calibration.shape[0])} calibration inputs)"
    rows = run_benchmark(model, list(backends), list(batches), image_size, images, labels, calibration, seconds,
                         log=log, min_iters=min_iters, budget=budget)
    for r in rows:
        r["model"] = name
    title = (f"{name} at {image_size}x{image_size}, {torch.get_num_threads()} threads, "
             f"torch {torch.__version__}, {allocator.describe()}; agreement = top-1 equal to eager fp32 on {source} "
             f"(eager fp32 predicts {rows[0]['reference_classes'] if rows else '?'} distinct classes on them)")
    return rows, title
