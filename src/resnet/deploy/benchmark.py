"""`resnet benchmark`: every inference backend side by side on one model.

Per backend and batch size: images/s, latency median and p99, peak memory, and top-1 agreement
with the fp32 eager model (plus accuracy when labelled images are given).

Peak memory is the process's resident-set high-water mark (VmHWM) during the timed loop: it is
reset to the current RSS just before the loop by writing 5 to /proc/self/clear_refs (Linux), so it
counts everything resident while the backend runs (interpreter, libraries, weights, the reference
model and the check images as well as the backend's activations); `mem_delta_mb` is the part
added during the loop. Where the reset is not possible the field is the lifetime maximum
(ru_maxrss) and `peak_mem_note` says so.
"""
from __future__ import annotations

import gc
import resource
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from . import backends as inf

FIELDS = ("backend", "batch", "images_per_sec", "latency_ms_p50", "latency_ms_p99", "peak_mem_mb", "agreement")


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
                 warmup: int = 3) -> dict:
    """Latency of `predictor(x)` over a timed loop of at least `min_iters` calls and `seconds`."""
    for _ in range(warmup):
        predictor(x)
    gc.collect()
    reset = _reset_peak_rss()
    rss0 = _rss_mb("VmRSS")
    times = []
    start = time.perf_counter()
    while len(times) < max_iters and (len(times) < min_iters or time.perf_counter() - start < seconds):
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
    return row


def _release():
    gc.collect()
    if hasattr(torch, "_dynamo"):
        torch._dynamo.reset()


def _inputs(images: torch.Tensor, batch: int) -> torch.Tensor:
    reps = -(-batch // images.shape[0])
    return images.repeat(reps, 1, 1, 1)[:batch].contiguous() if reps > 1 else images[:batch].contiguous()


def run_benchmark(model: nn.Module, backends=inf.DEFAULT_BACKENDS, batches=(1, 16), image_size: int = 224,
                  images: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                  calibration: torch.Tensor | None = None, seconds: float = 3.0, check_batch: int | None = None,
                  log=None, min_iters: int = 10) -> list[dict]:
    """One row per (backend, batch): the FIELDS plus setup_s (preparation, calibration and the first
    call, where compilation happens), note, skipped (why) and accuracy.

    `images`: inputs for the agreement check (and the timed batches); random ones when None.
    `calibration`: images for the int8 backends (default: `images`)."""
    model = model.eval()
    chans = getattr(getattr(model, "config", None), "in_chans", 3)
    images = inf.random_images(256, image_size, chans) if images is None else images
    calibration = images if calibration is None else calibration
    check_batch = check_batch or max(batches)
    with torch.no_grad():
        reference = inf.Predictor(inf.REFERENCE, model).predict(images, check_batch)
    # Agreement means little when the reference puts every input in one or two classes
    # (a randomly initialised network often does): the table's title says how many it used.
    distinct = int(reference.argmax(1).unique().numel())
    rows = []
    for backend in backends:
        base = {"backend": backend, "image_size": image_size, "threads": torch.get_num_threads(),
                "reference_classes": distinct}
        skip = inf.backend_status(backend)
        if skip is None:
            try:
                t0 = time.perf_counter()
                predictor = inf.prepare_inference(model, backend, calibration=calibration, example=images[:2])
                predictor(images[:check_batch])  # compiled backends compile here
                setup = time.perf_counter() - t0
                out = predictor.predict(images, check_batch)
                base.update(agreement=inf.agreement(reference, out), note=predictor.note, setup_s=setup,
                            max_abs_diff=float((out.float() - reference).abs().max()), check_images=images.shape[0])
                if labels is not None:
                    base["accuracy"] = 100 * float((out.argmax(1) == labels).float().mean())
                    base["accuracy_fp32"] = 100 * float((reference.argmax(1) == labels).float().mean())
            except Exception as e:  # one broken backend must not hide the others' numbers
                skip = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        for batch in batches:
            row = dict(base, batch=batch)
            if skip is None:
                t0 = time.perf_counter()
                row.update(time_backend(predictor, _inputs(images, batch), seconds, min_iters))
                if log:
                    log(f"{backend} batch {batch}: {row['images_per_sec']:.1f} img/s "
                        f"({time.perf_counter() - t0:.0f} s)")
            else:
                row.update({k: None for k in FIELDS[2:]}, skipped=skip)
            rows.append(row)
        if skip is None:
            del predictor
        _release()
    return rows


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


def benchmark(spec: str, backends=inf.DEFAULT_BACKENDS, batches=(1, 16), image_size: int | None = None,
              data: str | None = None, check_images: int = 256, calib_images: int = 256, seconds: float = 3.0,
              log=None, min_iters: int = 10) -> tuple[list[dict], str]:
    """Load a checkpoint or build a registered model, pick inputs, run every backend: (rows, title).

    With `data`, agreement is measured on real images (the run's validation hold-out for a
    checkpoint) and int8 is calibrated on other images of the training set; without it, on
    standard-normal inputs."""
    model, meta = inf.load_for_inference(spec)
    image_size = image_size or meta["input_size"]
    labels = calibration = None
    if data:
        images, labels = inf.real_images(data, meta, check_images, image_size, seed=0, split="val")
        calibration, _ = inf.real_images(data, meta, calib_images, image_size, seed=1, split="train")
        if meta.get("random_init") or not meta.get("classes"):
            labels = None  # a random-init model's classes are not the dataset's
        source = f"{images.shape[0]} real images of {data}"
    else:
        chans = model.config.in_chans
        images = inf.random_images(check_images, image_size, chans, seed=0)
        calibration = inf.random_images(calib_images, image_size, chans, seed=1)
        source = f"{check_images} random inputs"
    if meta.get("random_init"):
        inf.reestimate_bn(model, calibration[:64])
        source += " (random weights, BN statistics re-estimated on 64 calibration inputs)"
    rows = run_benchmark(model, inf.parse_list(backends), inf.parse_list(batches, int), image_size, images, labels,
                         calibration, seconds, log=log, min_iters=min_iters)
    for r in rows:
        r["model"] = meta.get("model", spec)
    title = (f"{meta.get('model', spec)} at {image_size}x{image_size}, {torch.get_num_threads()} threads, "
             f"torch {torch.__version__}; agreement = top-1 equal to eager fp32 on {source} "
             f"(eager fp32 predicts {rows[0]['reference_classes'] if rows else '?'} distinct classes on them)")
    return rows, title
