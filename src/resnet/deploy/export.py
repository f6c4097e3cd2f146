"""ONNX and TorchScript export, each followed by a parity check against the PyTorch model.

A failed parity check raises `ExportParityError`: an export that computes something else is an
error, not a warning. BN is folded (`fold.fold_bn`) and the check is `parity.check_close`, both
looked up when called, so they are the places to change (or, in a test, to replace).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, ExportParityError
from ..files import shareable
from ..models.counting import check_image_size
from . import extras, fold, parity
from .parity import ATOL, RTOL

DEFAULT_OPSET = 18  # the lowest opset torch.onnx's exporter (torch.export based) emits natively
# The lowest every network here exports at: option-A shortcuts subsample by a strided Slice (opset 10); below it
# the exporter or onnxruntime failed with a traceback of its own (GELU's Erf at 8, adaptive max-pooling at 7)
MIN_OPSET = 10
INPUT_NAME, OUTPUT_NAME = "input", "logits"
FORMATS = ("onnx", "torchscript")
# The names each kind of output is known by: --out with another kind's name is refused (a TorchScript file
# named x.onnx fails in onnxruntime with a protobuf error far from its cause). Other names are taken as given.
SUFFIXES = {"onnx": (".onnx",), "torchscript": (".pt", ".pth", ".ts", ".torchscript"), "hub": (),
            "weights": (".safetensors", ".bin")}


def check_out_name(fmt: str, out: str | os.PathLike) -> None:
    """A one-line error when the name of `out` says another format than `fmt` (onnx, torchscript or hub)."""
    suffix = Path(out).suffix.lower()
    claimed = next((f for f, names in SUFFIXES.items() if suffix in names), None)
    if claimed is None or claimed == fmt:
        return
    what = "a weights file" if claimed == "weights" else f"--format {claimed}"
    fix = f"name it {Path(out).with_suffix(SUFFIXES[fmt][0])}" if SUFFIXES.get(fmt) else "name the folder without it"
    raise ConfigError(f"--out {out}: a {suffix} name says {what}, but --format is {fmt}; {fix}, or change --format")


def _prepare(model: nn.Module, fold_bn: bool) -> nn.Module:
    model = model.eval()
    return fold.fold_bn(model) if fold_bn else model


def _example(model: nn.Module, example: torch.Tensor | None, image_size: int | None) -> torch.Tensor:
    if example is not None:
        return example.float()
    return parity.random_images(2, image_size or model.config.input_size, model.config.in_chans, seed=0)


def _check_inputs(example: torch.Tensor, real: torch.Tensor | None, dynamic_batch: bool) -> list[tuple[str, torch.Tensor]]:
    """Random inputs (at the exported batch, and at another batch size when it is dynamic) and real ones."""
    g = torch.Generator().manual_seed(1)
    shape = tuple(example.shape)
    checks = [("random", torch.randn(shape, generator=g))]
    if dynamic_batch:
        checks.append(("random, batch 5", torch.randn((5,) + shape[1:], generator=g)))
    if real is not None:
        if not dynamic_batch:  # a fixed-batch graph only takes whole batches of its own size:
            # fewer images than one batch are repeated up to one (onnxruntime rejects a short batch)
            real = parity.batch_inputs(real, shape[0] * max(1, real.shape[0] // shape[0]))
        checks.append(("real images", real.float()))
    return checks


def _run_in_batches(fn, x: torch.Tensor, batch: int | None) -> torch.Tensor:
    if batch is None:
        return torch.as_tensor(fn(x))
    return torch.cat([torch.as_tensor(fn(x[i:i + batch])) for i in range(0, x.shape[0], batch)])


def check_onnx(path: str | os.PathLike, model: nn.Module, example: torch.Tensor, real: torch.Tensor | None = None,
               dynamic_batch: bool = False, atol: float = ATOL, rtol: float = RTOL) -> list[dict]:
    """Run the ONNX file in onnxruntime next to `model` (fp32 eager, BN as trained) and compare."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    run = lambda x: session.run(None, {name: x.contiguous().numpy()})[0]  # noqa: E731
    reports = []
    with torch.no_grad():
        for what, x in _check_inputs(example, real, dynamic_batch):
            fixed = None if dynamic_batch else example.shape[0]
            reports.append(parity.check_close(_run_in_batches(model, x, fixed), _run_in_batches(run, x, fixed),
                                              what, atol, rtol))
    return reports


def _onnx_write(model: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic_batch: bool,
                optimize: bool, dynamic_size: bool = False) -> None:
    """torch.export-based exporter for opset >= 18; the older TorchScript-based one below that.

    The new exporter emits opset 18 at the least (it silently ignores a lower request) and
    onnx's version converter cannot take its Pad (option-A shortcuts) further down, so older
    runtimes get the deprecated exporter, which still writes opsets 9-17."""
    quiet = extras.quiet_loggers("torch.onnx._internal.exporter._registration")
    with warnings.catch_warnings(), torch.no_grad(), quiet:
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        if opset >= DEFAULT_OPSET:
            dims = {0: torch.export.Dim("batch", min=1, max=65536)} if dynamic_batch else {}
            if dynamic_size:  # any height and width (the multi-scale test feeds whole images)
                dims.update({2: torch.export.Dim("height", min=8, max=8192), 3: torch.export.Dim("width", min=8, max=8192)})
            dynamic = (dims,) if dims else None
            program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset,
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                        dynamic_shapes=dynamic, verbose=False, optimize=optimize)
            program.save(str(path), external_data=False)
        else:
            axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else {}
            if dynamic_size:
                axes.setdefault(INPUT_NAME, {}).update({2: "height", 3: "width"})
            axes = axes or None
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=axes,
                              do_constant_folding=optimize)
    if _file_opset(path) != opset:
        raise ConfigError(f"asked for ONNX opset {opset}, the exporter wrote {_file_opset(path)}")


@contextlib.contextmanager
def _published(path: Path):
    """A temporary file beside `path` to write and check; it becomes `path` only when the block succeeds (an
    export whose opset or parity check fails leaves no file that looks like a good one)."""
    if path.is_dir():
        raise ConfigError(f"--out {path} is a folder; give a file name (e.g. {path / 'model.onnx'})")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        shareable(tmp)  # mkstemp made it private; an exported model is for others to run
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _file_opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx"))


def export_onnx(model: nn.Module, path: str | os.PathLike, opset: int = DEFAULT_OPSET, dynamic_batch: bool = False,
                fold_bn: bool = True, example: torch.Tensor | None = None, image_size: int | None = None,
                real: torch.Tensor | None = None, check: bool = True, dynamic_size: bool = False) -> dict:
    """Export to ONNX (one self-contained file), then check it in onnxruntime (unless check=False).

    `example` fixes the input shape (its batch is the fixed batch); `real`: real images for the
    check. `fold_bn=False` keeps the BatchNormalization nodes, so it also skips the exporter's graph
    optimizer (which would fold them). Returns {"path", "opset", "dynamic_batch", "fold_bn",
    "checks": [...]}; raises ExportParityError when onnxruntime's output differs from PyTorch's.
    `dynamic_size`: height and width are free too."""
    extras.require("ONNX export", *(extras.ONNX if opset >= DEFAULT_OPSET else extras.ONNX[:1]))
    if check:
        extras.require("the ONNX parity check", *extras.ONNXRUNTIME)
    import onnx  # an optional package (required just above): imported where it is used

    if opset > onnx.defs.onnx_opset_version():  # before the exporter logs its own traceback for it
        raise ConfigError(f"--opset {opset}: the installed onnx knows opsets up to {onnx.defs.onnx_opset_version()}")
    if opset < MIN_OPSET:
        raise ConfigError(f"--opset {opset}: these networks export at opset {MIN_OPSET} or higher (option-A shortcuts "
                          f"subsample by a strided Slice, opset 10); give --opset {MIN_OPSET} or more (default "
                          f"{DEFAULT_OPSET})")
    model = model.eval()
    example = _example(model, example, image_size)
    exported = _prepare(model, fold_bn)
    path = Path(path)
    with _published(path) as tmp:
        _onnx_write(exported, example, tmp, opset, dynamic_batch, optimize=fold_bn, dynamic_size=dynamic_size)
        report = {"path": str(path), "format": "onnx", "opset": _file_opset(tmp), "dynamic_batch": dynamic_batch,
                  "fold_bn": fold_bn, "input_shape": ["batch" if dynamic_batch else example.shape[0], *example.shape[1:]],
                  "size_mb": tmp.stat().st_size / 2**20, "checks": []}
        if check:
            report["checks"] = check_onnx(tmp, model, example, real, dynamic_batch)
    return report


def export_torchscript(model: nn.Module, path: str | os.PathLike, fold_bn: bool = True,
                       example: torch.Tensor | None = None, image_size: int | None = None,
                       real: torch.Tensor | None = None, check: bool = True) -> dict:
    """Trace to TorchScript (batch stays dynamic), save, load it back and compare with `model`."""
    model = model.eval()
    example = _example(model, example, image_size)
    exported = _prepare(model, fold_bn)
    path = Path(path)
    with _published(path) as tmp:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))
            traced = torch.jit.trace(exported, example, check_trace=False)
            traced = torch.jit.freeze(traced)
            torch.jit.save(traced, str(tmp))
            loaded = torch.jit.load(str(tmp), map_location="cpu")  # our own file, written just above
        report = {"path": str(path), "format": "torchscript", "fold_bn": fold_bn, "dynamic_batch": True,
                  "size_mb": tmp.stat().st_size / 2**20, "checks": []}
        if check:
            with torch.no_grad():
                for what, x in _check_inputs(example, real, dynamic_batch=True):
                    report["checks"].append(parity.check_close(model(x), loaded(x), what))
    return report


def format_report(report: dict) -> str:
    lines = [f"wrote {report['path']} ({report['format']}, {report['size_mb']:.1f} MB"
             + (f", opset {report['opset']}" if "opset" in report else "")
             + f", batch {'dynamic' if report['dynamic_batch'] else 'fixed'}, BN {'folded' if report['fold_bn'] else 'kept'})"]
    for c in report["checks"]:
        lines.append(f"  parity on {c['inputs']:<16} n={c['n']:<4} max abs diff {c['max_abs_diff']:.2e}  "
                     f"max rel diff {c['max_rel_diff']:.2e}  top-1 agreement {100 * c['top1_agreement']:.1f}%  OK")
    return "\n".join(lines)


def export_model(model: nn.Module, meta: dict, fmt: str, out: str | os.PathLike, opset: int = DEFAULT_OPSET,
                 dynamic_batch: bool = False, fold_bn: bool = True, batch: int = 1, image_size: int | None = None,
                 data: str | None = None, real_images: int = 64) -> dict:
    """`resnet export`: a loaded model (`serve.load.load_spec`) -> ONNX or TorchScript, checked.

    Parity is checked on random inputs and, with `data`, on `real_images` real images as well
    (the run's hold-out where `meta` describes one), preprocessed as `meta` says."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be onnx or torchscript, got {fmt!r}")
    check_out_name(fmt, out)
    image_size = image_size or int(meta.get("input_size") or model.config.input_size)
    check_image_size(model, image_size)  # before the exporter's own traceback for a map shrunk to nothing
    example = parity.random_images(batch, image_size, model.config.in_chans, seed=0)
    real = (parity.real_images(data, meta, real_images, image_size, split="val", channels=model.config.in_chans)[0]
            if data else None)
    if fmt == "onnx":
        return export_onnx(model, out, opset, dynamic_batch, fold_bn, example, real=real)
    return export_torchscript(model, out, fold_bn, example, real=real)
