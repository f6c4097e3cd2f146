"""Fast CPU inference backends: BN folded into the convolutions (fold.py), channels_last, bf16, torch.compile with
freezing, int8 post-training quantization and ONNX Runtime, each checked against fp32 eager.

`prepare_inference(model, backend)` returns a `Predictor`: a callable taking a float32 NCHW
batch (normalised as the model was trained) and returning float32 logits, whatever runs inside.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from ..engine.precision import bf16_pays, bf16_speedup, cpu_supports_bf16, needs_reduced_range
from ..errors import BackendUnavailable, ConfigError, DataError
from ..files import cache_root
from ..version import install_hint
from . import extras
from .export import export_onnx
from .fold import fold_bn, unshare_modules

# Backends. `int8` is PT2E static quantization (torchao's X86InductorQuantizer) compiled by
# inductor with freezing: quantize/conv/add/ReLU fuse into oneDNN int8 kernels that run on AMX.
# Measured here (one run, 2 cores) it has the best throughput: ResNet-50 at batch 16, 186
# images/s against 54 for onnxruntime's static QDQ quantization (`onnxruntime-int8`); ResNet-20
# at batch 256, 8,700 against 3,800. So it is the default int8 path. onnxruntime-int8 has much
# less per-call overhead (ResNet-20 at batch 1: 0.34 ms against 1.6 ms; ResNet-50 at batch 1
# about equal, 15.8 against 15.4 ms), so it stays as the low-latency choice and needs no torchao
# (on AMX, ResNet-50's batch 1 went to PT2E int8 once compiled with the C++ wrapper: deploy/choose.py).
BACKENDS = ("eager-fp32", "eager-bf16", "compiled-bf16", "int8", "onnxruntime", "onnxruntime-int8")
REFERENCE = "eager-fp32"
_NEEDS = {"int8": extras.TORCHAO, "onnxruntime": extras.ONNX + extras.ONNXRUNTIME,
          "onnxruntime-int8": extras.ONNX + extras.ONNXRUNTIME}
# Backends that take any image size in one prepared model (eager, and ONNX graphs exported with
# dynamic height and width): what the multi-scale test needs. The compiled ones are specialised to
# the size they were prepared for.
DYNAMIC_SIZE_BACKENDS = ("eager-fp32", "eager-bf16", "onnxruntime", "onnxruntime-int8")


def backend_status(backend: str) -> str | None:
    """None when `backend` can run here, else why not (e.g. the missing package)."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    missing = extras.missing(*_NEEDS.get(backend, ()))
    if missing:
        return f"not installed: {', '.join(missing)} ({install_hint('deploy')})"
    if backend.startswith("compiled") or backend == "int8":
        if not hasattr(torch, "compile"):
            return "torch.compile needs PyTorch >= 2.0"
    return None


def require_dynamic_sizes(backend: str, what: str) -> None:
    """A one-line error unless `backend` runs images of any size (what `what` feeds it)."""
    if backend != "auto" and backend not in DYNAMIC_SIZE_BACKENDS:
        raise ConfigError(f"{what} feeds images of many sizes, which --backend {backend} (compiled for one size) "
                          f"cannot take; use one of: auto, {', '.join(DYNAMIC_SIZE_BACKENDS)}")


def inductor_cache_dir() -> Path:
    """The toolkit's folder for inductor's on-disk cache, one per kernel set that ATen and oneDNN run.
    Inductor's cache does not tell apart kernels built under ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA
    restrictions: measured on an AVX-512 machine, a cache filled under AVX2 emulation made the next
    compiled training step on the default path abort (tests/test_compile.py)."""
    isa = f"{torch.backends.cpu.get_cpu_capability()}-{os.environ.get('ONEDNN_MAX_CPU_ISA', 'native')}"
    return cache_root() / "inductor" / isa.lower()


def configure_compile_cache() -> Path:
    """Point inductor's on-disk cache (compiled kernels, FX graphs) at the toolkit cache, unless the
    user chose one: a second run of the same model and shapes then skips most of the compilation."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    # inductor writes its default (/tmp/torchinductor_USER) into the environment once used, so
    # "unset" and "equal to the default" both mean the user did not choose.
    if current is None or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(inductor_cache_dir())
    path = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------- predictors
@dataclass
class Predictor:
    """fp32 NCHW batch -> fp32 logits through one backend; `note` says what runs inside."""

    backend: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    note: str = ""
    extra: dict = field(default_factory=dict)
    chunk: int | None = None  # run larger batches this many images at a time (see auto_chunk)
    static_shapes: bool = False  # compiled per batch size: pad the last chunk rather than compile its size
    pad_to: int | None = None  # the job's batch (eval, predict): a shorter one (the last) runs padded to it

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            n, chunk = x.shape[0], self.chunk or x.shape[0]
            if n <= chunk:  # padded to the shape compiled for the job's other batches (or chunks)
                return self._run(x, min(self.pad_to, self.chunk or self.pad_to) if self.pad_to else n)
            return torch.cat([self._run(x[i:i + chunk], chunk) for i in range(0, n, chunk)])

    def _run(self, x: torch.Tensor, size: int) -> torch.Tensor:
        """`fn` of `x`, which a static-shape backend runs padded with zeros to `size` images (a compilation
        per batch size costs minutes for ResNet-50; each image's logits are its own, padded or not)."""
        if self.static_shapes and x.shape[0] < size:
            pad = x.new_zeros((size - x.shape[0],) + x.shape[1:])
            return self.fn(torch.cat([x, pad]))[:x.shape[0]]
        return self.fn(x)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Logits of a large tensor, `batch_size` images at a time (compiled backends see one shape)."""
        return torch.cat([self(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def auto_chunk(model: nn.Module, image_size: int | None, backend: str) -> int | None:
    """Sub-batch size for large batches of small images, or None (run the batch whole).

    For 32x32 inputs, batches above 64 run 64 images at a time: measured here, ResNet-20 at
    batch 256 runs about as fast either way (within the machine's noise), but a compiled
    backend then compiles one shape (the last chunk is padded) and activations stay small.
    ImageNet-size inputs are never split: re-reading ResNet-50's 25 M weights per sub-batch costs."""
    if backend in ("eager-fp32", "onnxruntime", "onnxruntime-int8") or not image_size or image_size > 64:
        return None
    return 64


def _bf16_or_warn(backend: str) -> bool:
    if bf16_pays():
        return True
    if cpu_supports_bf16():
        warnings.warn(f"{backend}: bf16 ran at {bf16_speedup():.2f}x fp32's speed on this CPU (native bf16 without "
                      "AMX, a measured probe): running fp32 instead, the faster here", stacklevel=3)
    else:
        warnings.warn(f"{backend}: this CPU has no native bf16 (AVX-512 BF16/AMX); running fp32 instead, "
                      "which is slower than the processors this path was made for", stacklevel=3)
    return False


def _eager_bf16(model: nn.Module) -> Predictor:
    # bf16 weights rather than autocast: autocast would re-cast every weight on every call, which
    # dominates at batch 1. BN is folded first, in fp32, then the folded weights are rounded.
    m = fold_bn(model).to(memory_format=torch.channels_last)
    if not _bf16_or_warn("eager-bf16"):
        return Predictor("eager-bf16", lambda x: m(x.contiguous(memory_format=torch.channels_last)), "fp32 (no bf16)",
                         extra={"module": m})
    m = m.to(torch.bfloat16)
    return Predictor("eager-bf16", lambda x: m(x.to(torch.bfloat16, memory_format=torch.channels_last)).float(),
                     "BN folded, channels_last, bf16 weights", extra={"module": m})


# Inductor's C++ wrapper (kernels called from C++, not from a Python function) for compilations whose
# batch holds up to this many pixels (256 CIFAR images, 5 of 224x224), where the per-kernel Python overhead
# shows against each kernel's work. ResNet-50 at batch 1: PT2E int8 14.4 against 15.3 ms (AMD EPYC with
# AVX-512 VNNI/BF16), 9.5 against 10.7 (Intel Xeon with AMX); at batch 16 int8 was slower with it on both
# (183 against 170 ms, 71.7 against 64.7). ResNet-20 at batch 256 (AMX): compiled-bf16 20.7 against 22.3 ms,
# int8 24.1 against 24.3. Two threads, 2026-12-04, `bench/inductor_wrapper.py`, which changes this.
CPP_WRAPPER_MAX_PIXELS = 256 * 32 * 32


def frozen_settings(shape: tuple[int, ...], settings: dict | None = None) -> dict:
    """Inductor's settings for compiling a frozen inference model for inputs of `shape` (N, C, H, W)."""
    pixels = shape[0] * (shape[-2] * shape[-1] if len(shape) >= 4 else 1)
    return {"freezing": True, "cpp_wrapper": pixels <= CPP_WRAPPER_MAX_PIXELS, **(settings or {})}


def _compile_frozen(module: nn.Module, autocast_bf16: bool = False,
                    settings: dict | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """torch.compile with inductor's freezing: weights become constants, so inductor folds BN,
    pre-packs weights for oneDNN and fuses int8 quantize/dequantize into the convolutions.

    Freezing is switched on around every call rather than through `torch.compile(options=...)`,
    which does not reach the int8 weight-prepacking passes (torch 2.13 + torchao 0.18), and
    rather than globally, which would change the user's other compiled code. `settings`: more
    inductor settings for this module's compilation only. Compilation happens at the first call
    of each input shape; inductor's on-disk cache keeps the results. Batches of few pixels compile
    with the C++ wrapper (CPP_WRAPPER_MAX_PIXELS)."""
    from torch._inductor import config as inductor_config  # here: it costs 1.6 s at import

    configure_compile_cache()
    compiled = torch.compile(module, dynamic=False)

    def run(x: torch.Tensor) -> torch.Tensor:
        # read at compilation: the first call of each input shape
        with inductor_config.patch(frozen_settings(tuple(x.shape), settings)), torch.no_grad(), warnings.catch_warnings():
            # inductor's int8 lowering warns about its own torch.tensor(tensor) calls while compiling
            warnings.filterwarnings("ignore", "To copy construct from a tensor", UserWarning)
            if autocast_bf16:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return compiled(x)
            return compiled(x)
    return run


def _compiled_bf16(model: nn.Module) -> Predictor:
    m = fold_bn(model).to(memory_format=torch.channels_last)
    bf16 = _bf16_or_warn("compiled-bf16")
    if bf16:
        m = m.to(torch.bfloat16)
    compiled = _compile_frozen(m)
    dtype = torch.bfloat16 if bf16 else torch.float32
    return Predictor("compiled-bf16", lambda x: compiled(x.to(dtype, memory_format=torch.channels_last)).float(),
                     "torch.compile(freezing) " + ("bf16" if bf16 else "fp32"))


def _calibration_batches(calibration, batch_size: int = 32) -> list[torch.Tensor]:
    if calibration is None:
        raise ConfigError("int8 needs calibration images: a float tensor N x C x H x W (a few hundred, normalised)")
    if isinstance(calibration, torch.Tensor):
        batches = [calibration[i:i + batch_size].float() for i in range(0, calibration.shape[0], batch_size)]
    else:
        batches = [b.float() for b in calibration if b.shape[0]]
    if not batches:
        raise DataError("no calibration images: int8 needs a few (a tensor N x C x H x W, normalised)")
    return batches


def _int8_pt2e(model: nn.Module, calibration) -> Predictor:
    """PT2E static quantization: torch.export -> X86InductorQuantizer -> calibrate -> compile (freezing)."""
    from torch._inductor import config as inductor_config

    # Importing torchao's X86InductorQuantizer installs its int8 graph pass (quant_lift_up) as inductor's
    # global pre_grad_custom_pass, where every later torch.compile of the process meets it: after an int8
    # evaluation, the compiled training step on oneDNN's AVX2 path went to NaN within 6 steps
    # (tests/test_compile.py after tests/test_auto_backend.py). The pass is kept for this model's
    # compilation only, and the global setting given back.
    global_pass = inductor_config.pre_grad_custom_pass
    # torch.utils._pytree: torchao registers an Enum the way torch now deprecates (a warning on every import)
    with extras.quiet_loggers("torchao", "torch.utils._pytree"):
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    int8_pass = getattr(xiq, "quant_lift_up", None)
    if global_pass is int8_pass:  # torchao was imported before: it installed the pass then
        global_pass = None
    inductor_config.pre_grad_custom_pass = global_pass

    batches = _calibration_batches(calibration)
    m = unshare_modules(fold_bn(model))
    batch = torch.export.Dim("batch", min=1, max=65536)
    # Traced on one image, torch.export specialises the batch to 1 and refuses the dynamic batch:
    # trace on at least two (one image repeated), calibrate on the real images below.
    example = batches[0] if batches[0].shape[0] >= 2 else batches[0][:1].repeat(2, 1, 1, 1)
    with torch.no_grad():
        graph = torch.export.export(m, (example,), dynamic_shapes=({0: batch},)).module()
    reduced = needs_reduced_range()  # no VNNI: 7-bit activations, or 16-bit pair sums may saturate
    config = xiq.get_default_x86_inductor_quantization_config(reduce_range=reduced)
    quantizer = xiq.X86InductorQuantizer().set_global(config)
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for b in batches:
            prepared(b)
    converted = convert_pt2e(prepared)
    bf16 = bf16_pays()
    # int8 convolutions; the few ops left in float (the stem's max-pool, pooling, fc input) run in bf16.
    compiled = _compile_frozen(converted, autocast_bf16=bf16, settings={"pre_grad_custom_pass": int8_pass})

    def run(x):  # NCHW in: the graph was captured that way; a channels_last input costs a relayout per call
        return compiled(x.contiguous()).float()
    return Predictor("int8", run, f"PT2E X86InductorQuantizer, {sum(b.shape[0] for b in batches)} calibration "
                     "images, torch.compile(freezing)" + (", bf16 elsewhere" if bf16 else "")
                     + (", 7-bit activations (no VNNI)" if reduced else ""))


def _ort_session(path: str | os.PathLike):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _ort_predictor(backend: str, session, note: str) -> Predictor:
    name = session.get_inputs()[0].name

    def run(x):
        return torch.from_numpy(session.run(None, {name: x.float().contiguous().numpy()})[0])
    return Predictor(backend, run, note, extra={"session": session})


def _onnxruntime(model: nn.Module, example: torch.Tensor, workdir: Path, dynamic_size: bool) -> Predictor:
    path = workdir / "model.onnx"
    export_onnx(model, path, dynamic_batch=True, example=example[:2], check=False, dynamic_size=dynamic_size)
    return _ort_predictor("onnxruntime", _ort_session(path), "ONNX (BN folded), onnxruntime CPU fp32")


def _onnxruntime_int8(model: nn.Module, example: torch.Tensor, calibration, workdir: Path,
                      dynamic_size: bool) -> Predictor:
    """onnxruntime static quantization: QDQ, per-channel int8 weights, uint8 activations (MinMax).
    Activation scales are per tensor, so a graph with dynamic height and width stays valid at any size."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = _calibration_batches(calibration)
    fp32, pre, int8 = workdir / "model.onnx", workdir / "model.pre.onnx", workdir / "model.int8.onnx"
    export_onnx(model, fp32, dynamic_batch=True, example=example[:2], check=False, dynamic_size=dynamic_size)
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches)

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {"input": b.numpy()}

    reduced = needs_reduced_range()  # no VNNI: 7-bit weights, or 16-bit pair sums may saturate
    quantize_static(str(pre), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=reduced, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return _ort_predictor("onnxruntime-int8", _ort_session(int8), "onnxruntime static QDQ int8"
                          + (", 7-bit weights (no VNNI)" if reduced else ""))


def prepare_inference(model: nn.Module, backend: str = "compiled-bf16", calibration=None,
                      example: torch.Tensor | None = None, workdir: str | os.PathLike | None = None,
                      chunk: int | str | None = "auto", dynamic_size: bool = False) -> Predictor:
    """A `Predictor` running `model` (left untouched) through `backend` (one of BACKENDS).

    `calibration`: normalised images (a tensor or an iterable of batches, a few hundred images)
    for the int8 backends. `example`: a batch of the right image size (ONNX export needs one).
    `workdir`: where ONNX files are kept (default: a temporary folder, removed). `chunk`: sub-batch
    size for large batches ("auto": see `auto_chunk`; None: whole batches). `dynamic_size`: the
    predictor takes images of any height and width (DYNAMIC_SIZE_BACKENDS only).
    """
    if dynamic_size:
        require_dynamic_sizes(backend, "dynamic_size=True")
    predictor = _prepare(model.eval(), backend, calibration, example, workdir, dynamic_size)
    if chunk == "auto":
        size = example.shape[-1] if example is not None else model.config.input_size
        chunk = auto_chunk(model, size, backend)
    predictor.chunk = chunk
    predictor.static_shapes = backend in ("compiled-bf16", "int8")
    return predictor


def _prepare(model: nn.Module, backend: str, calibration, example, workdir, dynamic_size: bool) -> Predictor:
    reason = backend_status(backend)
    if reason:
        raise BackendUnavailable(f"backend {backend}: {reason}")
    if backend == "eager-fp32":
        return Predictor(backend, model, "the reference: eager fp32, BN as trained")
    if backend == "eager-bf16":
        return _eager_bf16(model)
    if backend == "compiled-bf16":
        return _compiled_bf16(model)
    if backend == "int8":
        return _int8_pt2e(model, calibration)
    if example is None:
        example = _calibration_batches(calibration)[0] if calibration is not None else None
    if example is None:
        raise ValueError(f"{backend} needs an example batch (example=...) to export the model")
    if workdir is None:  # the session holds the model in memory; the files can go
        with tempfile.TemporaryDirectory(prefix="resnet-onnx-") as tmp:
            return _prepare(model, backend, calibration, example, tmp, dynamic_size)
    if backend == "onnxruntime":
        return _onnxruntime(model, example, Path(workdir), dynamic_size)
    return _onnxruntime_int8(model, example, calibration, Path(workdir), dynamic_size)


# --------------------------------------------------------------------------- eval and predict
CLI_BACKENDS = ("auto",) + BACKENDS
CALIBRATED_BACKENDS = ("int8", "onnxruntime-int8", "onnxruntime")  # need images before the first call


class PredictorModule(nn.Module):
    """A `Predictor` where an `nn.Module` is expected (`evaluate`, `ViewAverage`)."""

    def __init__(self, predictor: Predictor):
        super().__init__()
        self.predictor = predictor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(x)


def first_images(batches: Iterable, n: int = 256) -> torch.Tensor:
    """Up to `n` images from an iterable of batches (or of (images, ...) tuples): int8 calibration.
    The labels are never looked at: calibration only sets the activations' ranges."""
    taken, count = [], 0
    for batch in batches:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not x.shape[0]:  # (a batch whose every image was left out)
            continue
        taken.append(x.float().cpu().contiguous())
        count += x.shape[0]
        if count >= n:
            break
    if not taken:
        raise DataError("no images to calibrate the int8 backend on")
    return torch.cat(taken)[:n]
