"""`--backend auto`: the fastest inference backend that keeps top-1 agreement with fp32 >= 99%.

Chosen from the processor's flags by a rule that the measurements below justify, or, where
`resnet benchmark --save` has measured this machine and model, by that cached table (the fastest
row whose agreement is >= 99%) at the job's batch, else the nearest measured batch of its kind
(`ChoiceCache.fastest`). Measured (ResNet-50, 224x224, images/s, batch 1 / 16):

- Intel with AMX (amx_int8, amx_bf16; 2026-11-27): int8 (PT2E) 164-192 at batch 16, compiled-bf16
  107-214, eager-bf16 79, onnxruntime int8 96, onnxruntime fp32 34-47. At batch 1 onnxruntime-int8
  has the least per-call overhead (ResNet-20: 0.34 ms against 1.6 ms). 2026-12-04, batch 1 frozen
  compilations through inductor's C++ wrapper (bench/inductor_wrapper.py): ResNet-50 PT2E int8 9.47 ms
  against onnxruntime-int8 11.82 (`resnet benchmark`: 8.19 against 10.48 p50), so int8 leads at batch 1
  there too; ResNet-20 at 32x32 still 1.22 against 0.30 ms.
- AMD EPYC with AVX-512 VNNI/BF16, no AMX (2026-12-04): ResNet-50 batch 1 PT2E int8 (C++ wrapper)
  14.42 ms against onnxruntime-int8 13.50; batch 16 int8 90 against 87 images/s.
- AMD Zen 3, AVX2 + FMA, no VNNI, no bf16 (issue 17, 2026-12-01): onnxruntime-int8 25.0 / 25.4-30,
  int8 (PT2E) 18.7 / 28.7, compiled (fp32 there) 11.7 / 12.4, onnxruntime fp32 12.6 / 11-15.5,
  eager fp32 6.7 / 5.7. Measured again on a Zen 3 on 2026-12-07 (`bench/cpu_session.sh`):
  onnxruntime-int8 30.4 / 34.3, int8 22.9 / 26.3, onnxruntime fp32 18.7 / 19.6, compiled fp32
  15.4 / 14.8, eager fp32 9.8 / 12.6: without native bf16 onnxruntime's fp32 leads the compiled
  path (1.13-1.17x on the Intel Xeon too), so it comes before compiled there. Without VNNI, int8
  products of unsigned 8-bit activations and signed 8-bit
  weights are summed in pairs into 16 bits (vpmaddubsw) and can saturate; both int8 backends then
  quantize with `reduce_range` (7-bit activations for PT2E, 7-bit weights for onnxruntime), which
  keeps every pair sum in range.

ResNet-20 at 32x32 on the AMX machine (README): compiled-bf16 8,514 images/s at batch 256, int8 7,753,
onnxruntime-int8 4,198; at batch 1 onnxruntime-int8 0.51 ms, onnxruntime 0.79, compiled-bf16 1.46.

So: AMX or VNNI -> int8 (PT2E) for batches (compiled-bf16 first for small images where bf16 is
native), onnxruntime-int8 for batch 1 except images over 64 pixels on AMX (int8); AVX2 without VNNI ->
onnxruntime-int8 (reduced range) at every batch; a backend whose packages are missing gives way to
the next of int8 / onnxruntime-int8 / compiled / eager (onnxruntime fp32 before compiled where bf16 is
not native). Preparing a quantized or compiled backend
costs seconds to a minute, so one-shot jobs (`resnet eval`, `resnet predict`) take this choice only
when their work is large enough to pay for it (PREPARE_WORTH_MACS), else the eager path.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from .. import allocator
from ..engine.precision import (Precision, bf16_pays, cpu_flags, cpu_kind, cpu_model, cpu_supports_bf16,  # noqa: F401
                               needs_reduced_range, resolve_precision)
from ..errors import BackendUnavailable, ConfigError
from ..files import cache_root, read_json_cache, write_json_cache
from ..models.complexity import measure
from .backends import (BACKENDS, CALIBRATED_BACKENDS, CLI_BACKENDS, DYNAMIC_SIZE_BACKENDS, Predictor,
                       PredictorModule, backend_status, prepare_inference)
from .parity import compare_with_fp32

MIN_AGREEMENT = 0.99
# Multiply-accumulates a one-shot job must do before auto prepares int8/compiled backends (about a
# minute to prepare on two cores, against eager ResNet-50 at ~10-80 images/s): e.g. ResNet-50 on
# 2,500 images at 224x224 (4.1 GMAC each), or ResNet-20 on 250,000 CIFAR images.
PREPARE_WORTH_MACS = 10e12
CACHE_FILE = "inference-choice.json"


def rule(flags: frozenset[str] | set[str], batch: int, bf16: bool, image_size: int = 224) -> list[str]:
    """Backends in order of preference for `batch` images of `image_size` on a processor with `flags`
    (the module's note)."""
    kind = cpu_kind(flags)
    compiled = ["compiled-bf16"]  # bf16 where native, else the same path in fp32
    eager = ["eager-bf16", "eager-fp32"] if bf16 else ["eager-fp32"]
    if kind in ("amx", "vnni"):
        # batch 1: onnxruntime-int8's lower per-call overhead wins, except ResNet-50-sized images on AMX,
        # where PT2E int8 through inductor's C++ wrapper measured 8.2-9.5 against 10.5-11.8 ms
        lowest_overhead_first = batch == 1 and not (kind == "amx" and image_size > 64)
        int8 = ["onnxruntime-int8", "int8"] if lowest_overhead_first else ["int8", "onnxruntime-int8"]
        if batch > 1 and bf16 and image_size <= 64:  # ResNet-20 at batch 256: 8,514 against int8's 7,753
            return compiled + int8 + ["onnxruntime"] + eager
    else:
        int8 = ["onnxruntime-int8", "int8"]
    if not bf16:  # the compiled path runs fp32 then, and onnxruntime's fp32 beat it wherever measured
        return int8 + ["onnxruntime"] + compiled + eager
    return int8 + compiled + ["onnxruntime"] + eager


def machine_key(model_name: str, image_size: int, batch: int) -> str:
    return f"{cpu_model()}|torch {torch.__version__}|{torch.get_num_threads()} threads|{allocator.describe()}|{model_name}|" \
           f"{image_size}px|batch {batch}"


class ChoiceCache:
    """Measured backend tables, {machine_key: {backend: {"images_per_sec", "agreement"}}}, in the cache folder."""

    def __init__(self, folder: str | Path | None = None):
        self.path = Path(folder or cache_root()) / CACHE_FILE

    def read(self) -> dict:
        return read_json_cache(self.path)

    def save_rows(self, model_name: str, image_size: int, rows: list[dict]) -> None:
        """Store `resnet benchmark` rows (backend, batch, images_per_sec, agreement) for this machine."""
        data = self.read()
        for r in rows:
            if r.get("images_per_sec") and r.get("agreement") is not None:
                entry = data.setdefault(machine_key(model_name, image_size, int(r["batch"])), {})
                entry[r["backend"]] = {"images_per_sec": float(r["images_per_sec"]),
                                       "agreement": float(r["agreement"])}
        write_json_cache(self.path, data)

    def fastest(self, model_name: str, image_size: int, batch: int) -> tuple[str, dict, int] | None:
        """(backend, its row, the batch it was measured at): the fastest measured here with agreement >=
        MIN_AGREEMENT at `batch`, else at the measured batch nearest to it (by ratio) of the same kind, or None.
        Batch 1 is per-call overhead and stands alone; above 1 the ranking is throughput's, as the rule
        (made from batch-16 measurements) assumes: `benchmark --save` measures 1 and 16, eval runs 64 or 1000."""
        key = machine_key(model_name, image_size, batch)
        prefix = key[:key.rindex(" ") + 1]  # everything but the batch
        tables = {int(k[len(prefix):]): t for k, t in self.read().items()
                  if k.startswith(prefix) and k[len(prefix):].isdigit() and isinstance(t, dict)}
        alike = [b for b in tables if (b == 1) == (batch == 1)]
        if not alike:
            return None
        near = min(alike, key=lambda b: (max(b, batch) / min(b, batch), -b))
        good = {b: r for b, r in tables[near].items() if b in BACKENDS and r.get("agreement", 0) >= MIN_AGREEMENT}
        if not good:
            return None
        best = max(good, key=lambda b: good[b]["images_per_sec"])
        return best, good[best], near


def candidates(model_name: str, image_size: int, batch: int, bf16: bool, flags=None,
               cache: ChoiceCache | None = None, available=backend_status) -> list[tuple[str, str]]:
    """[(backend, why), ...] in order of preference: this machine's measured fastest (>= 99% agreement)
    if `resnet benchmark --save` measured it (at this batch or the nearest, `ChoiceCache.fastest`), then
    the rule's backends that can run here, eager last."""
    cache = cache or ChoiceCache()
    out = []
    measured = cache.fastest(model_name, image_size, batch)
    if measured is not None and available(measured[0]) is None:
        name, row, at = measured
        nearest = "" if at == batch else f" (the nearest measured to this job's {batch})"
        out.append((name, f"measured here by resnet benchmark --save: {row['images_per_sec']:,.1f} images/s at "
                          f"batch {at}{nearest}, {100 * row['agreement']:.1f}% top-1 agreement with fp32 "
                          f"({cache.path})"))
    flags = cpu_flags() if flags is None else flags
    kind = cpu_kind(flags)
    for name in rule(flags, batch, bf16, image_size):
        if available(name) is None and name not in (n for n, _ in out):
            out.append((name, f"the rule for {kind} processors at batch {batch} (deploy/choose.py)"))
    if not any(n == "eager-fp32" for n, _ in out):
        out.append(("eager-fp32", "the reference, when nothing else can run"))
    return out


def choose_backend(model_name: str, image_size: int, batch: int, bf16: bool, flags=None,
                   cache: ChoiceCache | None = None, available=backend_status) -> tuple[str, str]:
    """(backend, why): the first of `candidates`."""
    return candidates(model_name, image_size, batch, bf16, flags, cache, available)[0]


def worth_preparing(macs_per_image: int, images: int) -> bool:
    """Whether a one-shot job does enough work to pay for preparing a quantized or compiled backend."""
    return macs_per_image * images >= PREPARE_WORTH_MACS


def resolve_auto(model, bf16: bool, work: tuple[int, int, int] | None, calibrated: bool = True
                 ) -> list[tuple[str, str]]:
    """`--backend auto` for a one-shot job of `work` = (images, batch, image side): the fast backends to
    try in order (the caller keeps the first whose agreement with fp32 on the calibration images is
    >= 99%) when the job pays for their preparation, else only the eager path (bf16 weights where
    allowed). Without calibration images the int8 and onnxruntime backends cannot be prepared."""
    eager = "eager-bf16" if bf16 else "eager-fp32"
    if work is None:
        return [(eager, "no job size given")]
    images, batch, side = work
    macs = measure(model, side).macs
    if not worth_preparing(macs, images):
        return [(eager, f"{images:,} images x {macs / 1e9:.2f} GMAC is too little work to pay for preparing an "
                        "int8 or compiled backend")]
    needs_images = ("int8", "onnxruntime-int8", "onnxruntime")

    def available(name: str) -> str | None:
        if name in needs_images and not calibrated:
            return "no calibration images"
        if name == "eager-bf16" and not bf16 or name == "compiled-bf16" and not bf16 and bf16_pays():
            return "bf16 not allowed (--precision fp32)"
        return backend_status(name)
    return candidates(getattr(model, "model_name", type(model).__name__), side, batch, bf16, available=available)


# --------------------------------------------------------------------------- eval and predict
def inference_model(model: nn.Module, backend: str, precision: str, device: torch.device,
                    calibration=None, dynamic_sizes: bool = False, work: tuple[int, int, int] | None = None):
    """(module, Precision) that `resnet eval` and `resnet predict` run: the fast CPU paths of
    `prepare_inference`, or on CUDA the model under bf16/fp16 autocast.

    `backend` "auto" on CPU: for a job of `work` = (images, batch, image side) large enough to pay for
    preparing it, the fastest backend that keeps top-1 agreement with fp32 >= 99% (`resolve_auto`);
    otherwise BN folded + channels_last + bf16 weights (eager-bf16) where the processor has native
    bf16 and `precision` allows it, else the fp32 model as trained. On CUDA, autocast at `precision`.
    `calibration` returns normalised images for the int8/ONNX backends. `dynamic_sizes`: the module
    will see images of many sizes (the multi-scale test), so auto picks only among backends that take them."""
    if backend not in CLI_BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(CLI_BACKENDS)}, got {backend!r}")
    model = model.eval().to(device)
    if device.type != "cpu":
        if backend != "auto":
            raise ConfigError(f"--backend {backend} is a CPU path; on {device.type} use --backend auto")
        return model.to(memory_format=torch.channels_last), resolve_precision(precision, device)
    fp32 = Precision("fp32", device)
    if backend == "auto":
        bf16 = resolve_precision(precision, device, warn=False).name == "bf16"  # auto measures; the trainer warns
        return PredictorModule(_auto_predictor(model, bf16, work, calibration, dynamic_sizes)), fp32
    images = calibration() if backend in CALIBRATED_BACKENDS and calibration is not None else None
    predictor = prepare_inference(model, backend, calibration=images,
                                  example=images[:2] if images is not None else None, dynamic_size=dynamic_sizes)
    return PredictorModule(predictor), fp32


def _auto_predictor(model: nn.Module, bf16: bool, work, calibration, dynamic_sizes: bool = False) -> Predictor:
    """The first of `resolve_auto`'s backends whose top-1 agreement with fp32 on the calibration images
    is >= 99% (the eager paths are taken as they are): the rule cannot know every network."""
    options = resolve_auto(model, bf16, work, calibrated=calibration is not None)
    if dynamic_sizes:
        options = [o for o in options if o[0] in DYNAMIC_SIZE_BACKENDS] or [("eager-fp32", "")]
    images = calibration() if calibration is not None and len(options) > 1 else None
    for name, why in options:
        if name.startswith("eager") or images is None:
            return prepare_inference(model, name)
        try:
            predictor = prepare_inference(model, name, calibration=images, example=images[:2],
                                          dynamic_size=dynamic_sizes)
        except BackendUnavailable:
            continue
        agree = compare_with_fp32(model, predictor, images)["agreement"]
        if agree >= MIN_AGREEMENT:
            predictor.note += f"; auto: {why}; {100 * agree:.1f}% agreement on {images.shape[0]} images"
            return predictor
        warnings.warn(f"--backend auto: {name} agrees with fp32 on {100 * agree:.1f}% of {images.shape[0]} images, "
                      f"under {100 * MIN_AGREEMENT:.0f}%: trying the next backend", stacklevel=2)
    return prepare_inference(model, "eager-fp32")
