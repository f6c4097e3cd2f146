"""JPEG encodings of a data set: what quality and chroma subsampling its files carry, and copies of
its images re-encoded at another quality (PIL / libjpeg, IJG tables), written as a class-per-folder tree.

The shared CIFAR-10 images are IJG quality 75 with 4:2:0 chroma; re-encoding them at lower
qualities measures how error grows with the quantiser step, the JPEG share of the gap to the papers.
"""
from __future__ import annotations

import functools
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, JpegImagePlugin

from ..errors import ConfigError
from ..files import sweep_stale_folders
from .folder import _hidden, is_archive, is_image_file, walk_tree
from .memory import _stem, fingerprint

SUBSAMPLING = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}  # PIL's codes (JpegImagePlugin.get_sampling)
ENCODING_FILE = "encoding.json"  # written last: a folder without it is an unfinished copy
JPEG_FOLDER = "jpeg-quality"  # the copies' folder in the cache folder (`resnet cache list` kind "jpeg")
FORMAT_VERSION = 1


def ijg_scale(quality: int) -> float:
    """libjpeg's quantiser scaling for a quality (1-100), in percent of the base tables (Annex K):
    5000/q below 50, 200 - 2q from 50 on. Quality 75 -> 50, 50 -> 100, 25 -> 200, 100 -> 0 (lossless
    but for rounding and colour conversion): the quantiser step grows in proportion to it."""
    if not 1 <= quality <= 100:
        raise ConfigError(f"JPEG quality must be 1-100, got {quality}")
    return 5000.0 / quality if quality < 50 else 200.0 - 2.0 * quality


@functools.lru_cache(maxsize=None)
def _tables_of(quality: int) -> tuple:
    """The quantisation tables PIL writes at `quality` (found by encoding a tiny image)."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG", quality=quality)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        return tuple(tuple(t) for _, t in sorted(im.quantization.items()))


def jpeg_encoding(data: bytes) -> dict:
    """{'format', 'quality' (IJG 1-100, None when the tables are not IJG's scaled ones), 'subsampling'}
    of one encoded image."""
    with Image.open(io.BytesIO(data)) as im:
        if im.format != "JPEG":
            return {"format": im.format, "quality": None, "subsampling": None}
        tables = tuple(tuple(t) for _, t in sorted(im.quantization.items()))
        channels = len(im.getbands())
        sampling = SUBSAMPLING.get(JpegImagePlugin.get_sampling(im)) if channels == 3 else None
    # Greyscale files carry only the luminance table: compare as many tables as the file has.
    quality = next((q for q in range(100, 0, -1) if _tables_of(q)[:len(tables)] == tables), None)
    return {"format": "JPEG", "quality": quality, "subsampling": sampling}


def first_image_bytes(path: str | Path) -> bytes | None:
    """The bytes of the first image file (by sorted path) of a folder tree or a tar archive; None for
    anything else (CIFAR batches, 'digits': arrays, not encoded files)."""
    p = Path(path).expanduser()
    if p.is_dir():
        for cur, dnames, fnames in walk_tree(p):  # through symlinked class folders, as the data set loads them
            for f in sorted(fnames):
                if is_image_file(f) and not f.startswith("."):
                    return (Path(cur) / f).read_bytes()
        return None
    if is_archive(p):
        with tarfile.open(p, "r:*") as tar:
            for m in tar:  # the first image member in archive order: a sequential read, no full listing
                if m.isfile() and is_image_file(m.name) and not _hidden(m.name.removeprefix("./")):
                    with tar.extractfile(m) as f:  # type: ignore[union-attr]
                        return f.read()
    return None


def source_encoding(path: str | Path) -> dict:
    """How the images of a data set are stored, judged by its first image file (a data set's files
    share one encoder setting as a rule; the shared CIFAR-10 JPEGs do): see `jpeg_encoding`."""
    data = first_image_bytes(path)
    if data is None:
        return {"format": "arrays", "quality": None, "subsampling": None}
    return jpeg_encoding(data)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name).strip("._") or "class"


def _class_folder(name: str) -> str:
    """A class's folder name in a copy: the name itself wherever it can be one (an image folder's classes
    are folder names already; "golden retriever" made "golden_retriever" would load back as another class,
    and may sort elsewhere, moving the labels), else `_safe`'s."""
    usable = name and "/" not in name and "\\" not in name and "\0" not in name and not _hidden(name) \
        and name.strip() == name
    return name if usable else _safe(name)


def _encode(pixels: np.ndarray, quality: int) -> bytes:
    """One H x W x C uint8 image as JPEG bytes: 4:2:0 chroma (PIL subsampling=2), as the shared files."""
    img = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, subsampling=2)
    return buf.getvalue()


def write_reencoded(ds, quality: int, folder: str | Path) -> dict:
    """Re-encode every image of `ds` (an InMemoryDataset) at `quality` into `folder/<class>/NNNNN.jpg`.

    Files are numbered in the data set's order within each class, so the tree loads back in the same
    order with the same labels (and the same seeded hold-out picks the same images). The folder
    appears complete or not at all (written beside it, then renamed). Returns the encoding record
    (also in `folder/encoding.json`): quality, subsampling, mean bytes per image and the PSNR of the
    copy against the images it was made from."""
    folder = Path(folder)
    try:
        return _write_reencoded(ds, quality, folder)
    except ConfigError:
        raise
    except OSError as e:  # this machine's disk (full, read-only): one line saying where and what to do
        raise JpegCopyWriteError(f"{folder.parent}: cannot write the JPEG copy at quality {quality} "
                                 f"({e.strerror or e}); free space there, or set data.cache_dir ($RESNET_CACHE) "
                                 "to another folder") from e


class JpegCopyWriteError(OSError):
    """A re-encoded copy could not be written (a full disk, an unwritable folder); nothing is left of it."""


def _write_reencoded(ds, quality: int, folder: Path) -> dict:
    folder.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_folders(folder.parent, f".{folder.name}.")  # a copy killed earlier (SIGKILL) left it
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        names = [_class_folder(c) for c in ds.classes]
        if len(set(names)) != len(names):
            raise ConfigError(f"class names {ds.classes} collide once made safe as folder names")
        for name in names:
            (tmp / name).mkdir()
        counts = [0] * len(names)
        nbytes, sq_err, pixels = 0, 0.0, 0
        images = ds.images.permute(0, 2, 3, 1).contiguous().numpy()  # N x H x W x C
        for img, label in zip(images, ds.labels.tolist()):
            data = _encode(img, quality)
            (tmp / names[label] / f"{counts[label]:05d}.jpg").write_bytes(data)
            counts[label] += 1
            nbytes += len(data)
            with Image.open(io.BytesIO(data)) as im:
                back = np.asarray(im.convert("L" if img.shape[2] == 1 else "RGB"), dtype=np.float64)
            sq_err += float(np.square(back.reshape(img.shape) - img).sum())
            pixels += img.size
        mse = sq_err / max(pixels, 1)
        record = {"version": FORMAT_VERSION, "quality": quality, "subsampling": "4:2:0", "images": len(ds),
                  "classes": list(ds.classes), "mean_bytes": nbytes / max(len(ds), 1),
                  "psnr_db": float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse)),
                  "from": ds.source, "pillow": PIL.__version__}
        (tmp / ENCODING_FILE).write_text(json.dumps(record, indent=1))
        if folder.exists():
            shutil.rmtree(folder)  # an unfinished copy of an earlier run
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return record


def read_encoding(folder: str | Path) -> dict | None:
    """The record of a finished re-encoded copy, None when there is none (or an unfinished one)."""
    path = Path(folder) / ENCODING_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("version") == FORMAT_VERSION else None


def reencoded_copy(ds, quality: int, cache_root: str | Path) -> tuple[Path, dict]:
    """(folder, encoding record) of `ds` re-encoded at `quality` under
    `cache_root/jpeg-quality/<name>-<fingerprint of the source>/q<quality>/`, made once and reused."""
    source = Path(ds.source) if ds.source else None
    tag = fingerprint(source) if source is not None and source.exists() else _safe(ds.source or ds.name)
    name = _safe(_stem(source) if source is not None else ds.name)
    folder = Path(cache_root) / JPEG_FOLDER / f"{name}-{tag}" / f"q{quality}"
    record = read_encoding(folder)
    if record is None or record.get("quality") != quality or record.get("images") != len(ds):
        record = write_reencoded(ds, quality, folder)
    return folder, record
