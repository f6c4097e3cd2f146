"""Class-per-folder image datasets (the ImageNet layout), from a directory or a tar archive.

``root/<class>/**/<image>``: classes are the sub-folders of the root sorted by name, labels their
index. One wrapper folder (``root/train/<class>/...``, as in a ``.tar.gz`` of ``train/``) is
detected and skipped. Decoding keeps PIL's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``)
and refuses, rather than warns about, images above it. Every failure to read or decode a file
is an :class:`ImageDecodeError` naming the file; layout problems are :class:`DatasetLayoutError`.
"""
from __future__ import annotations

import io
import os
import tarfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
SPLIT_NAMES = {"train": ("train",), "test": ("test", "val", "validation")}
# What decode_image opens, whatever the file's extension says (a PNG or GIF named .jpg is common
# in scraped data). PIL's other parsers (TGA, PCX, TIFF, ...) are never exposed to dataset files.
DECODE_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "GIF")


class ImageDecodeError(DataError):
    """An image file could not be decoded; the message names the file."""


class DatasetLayoutError(DataError):
    """The folder or archive is not a class-per-folder image tree."""


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def is_archive(path: Path) -> bool:
    return Path(path).is_file() and str(path).lower().endswith(ARCHIVE_SUFFIXES)


def _hidden(rel: str) -> bool:
    return any(part.startswith((".", "__MACOSX")) for part in rel.split("/"))


# --------------------------------------------------------------------------- decoding
def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB. 16-bit greyscale (``I;16*``, e.g. a 16-bit PNG) is scaled by
    255/65535, whatever its values; 32-bit ``I`` is scaled the same way when it holds values above
    255 (else read as 8-bit); ``F`` in [0, 1] is scaled by 255; nothing is clipped that was in
    range. Alpha is dropped (the colour channels are kept as stored, not composited); CMYK,
    palette, 1-bit and greyscale images are converted by PIL."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or img.mode == "I" and a.size and a.max() > 255:
            a = a / 257.0  # 16-bit range to 8-bit: 65535 -> 255, 257 -> 1
        elif img.mode == "F" and a.size and a.max() <= 1.0:
            a = a * 255.0
        a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("P", "PA") and "transparency" in img.info or img.mode == "PA":
        img = img.convert("RGBA")
    return img.convert("RGB")


def open_image(source, name: str) -> Image.Image:
    """``Image.open`` (the header only; pixels are decoded by :func:`load_rgb`) restricted to
    DECODE_FORMATS, refusing images above ``PIL.Image.MAX_IMAGE_PIXELS`` before their pixels are
    allocated. Raises :class:`ImageDecodeError` naming the file; a missing path, FileNotFoundError."""
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that; refuse those images too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=DECODE_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(
            f"{name}: refused as a possible decompression bomb ({e}). If the image is genuine, "
            "raise PIL.Image.MAX_IMAGE_PIXELS deliberately") from e
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL's parsers raise OSError, SyntaxError, ValueError,
        # EOFError, struct.error, IndexError, ... on corrupt input; all mean "cannot decode".
        raise _decode_error(name, source, e) from e


def load_rgb(img: Image.Image, min_size: tuple[int, int] | None = None, name: str = "") -> Image.Image:
    """Decode an image opened by :func:`open_image` to RGB. With `min_size` (w, h), a JPEG may be
    decoded at a reduced scale that still covers it (``Image.draft``: 1/2, 1/4 or 1/8 in the DCT
    domain); CMYK, greyscale, palette and alpha images become RGB (:func:`to_rgb`)."""
    name = name or getattr(img, "filename", "") or "<image>"
    try:
        if min_size is not None and img.format == "JPEG":
            img.draft("RGB", (max(1, int(min_size[0])), max(1, int(min_size[1]))))
        img.load()
        return to_rgb(img)
    except Exception as e:  # noqa: BLE001 - PIL's decoders raise many types on corrupt data
        raise _decode_error(name, getattr(img, "fp", None), e) from e


def decode_image(source: str | Path | bytes, name: str | None = None) -> Image.Image:
    """Decode a file path or encoded bytes (JPEG, PNG, BMP, WebP or GIF) to an RGB PIL image.

    Raises :class:`ImageDecodeError`, naming the file, for anything that cannot be decoded:
    truncated or empty files, other content, and images above ``PIL.Image.MAX_IMAGE_PIXELS``
    (refused before their pixels are allocated). A missing path raises FileNotFoundError."""
    name = name or str(source if not isinstance(source, bytes) else "<bytes>")
    with open_image(source, name) as img:
        return load_rgb(img, name=name)


def _decode_error(name: str, source, e: BaseException) -> ImageDecodeError:
    if _is_empty(source):
        reason = "empty file"
    elif isinstance(e, UnidentifiedImageError):
        reason = "not a JPEG, PNG, BMP, WebP or GIF image"
    else:
        reason = f"{type(e).__name__}: {e}"
    return ImageDecodeError(f"{name}: cannot decode image ({reason}); delete or replace the file")


def _is_empty(source) -> bool:
    if isinstance(source, bytes):
        return len(source) == 0
    if not isinstance(source, (str, Path)):
        return False
    try:
        return os.path.getsize(source) == 0
    except OSError:
        return False


def _reason(message: str, name: str) -> str:
    """An error message without its leading '<name>: '."""
    return message[len(name) + 2:] if message.startswith(f"{name}: ") else message


# --------------------------------------------------------------------------- layout
@dataclass
class FolderIndex:
    """A scanned class-per-folder tree: ``samples`` are (key, label) where key is a file path
    (directory source) or a member name (archive source)."""
    source: Path
    prefix: str  # posix path of the class root inside the source ('' = the source itself)
    classes: list[str]
    samples: list[tuple[str, int]]
    # (path, reason) for what was left out with skip_bad=True: symlink loops here, undecodable
    # or odd-sized images after decoding (memory.decode_source)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def is_archive(self) -> bool:
        return is_archive(self.source)

    def targets(self) -> list[int]:
        return [label for _, label in self.samples]


def _children(dirs: set[str], files: list[str], prefix: str) -> tuple[list[str], list[str]]:
    """Immediate sub-folders and files of ``prefix`` (posix, '' = root)."""
    def parent(p: str) -> str:
        return p.rsplit("/", 1)[0] if "/" in p else ""
    return sorted(d.rsplit("/", 1)[-1] for d in dirs if d and parent(d) == prefix), \
        [f for f in files if parent(f) == prefix]


def _class_root(dirs: set[str], files: list[str], split: str | None, where: str) -> str:
    """Skip wrapper folders; pick ``split``'s folder if the root holds split folders."""
    prefix = ""
    while True:
        subdirs, here = _children(dirs, files, prefix)
        join = (lambda d: f"{prefix}/{d}" if prefix else d)
        if split is not None:
            def is_split(d: str) -> bool:  # class folders inside and no images: a folder with images is a
                sub, imgs = _children(dirs, files, join(d))  # class of that name (CIFAR-100 has 'train')
                return bool(sub) and not any(is_image_file(f) for f in imgs)
            splits = {d.lower(): d for d in subdirs if d.lower() in sum(SPLIT_NAMES.values(), ()) and is_split(d)}
            if splits:
                pick = next((splits[n] for n in SPLIT_NAMES[split] if n in splits), None)
                if pick is None:
                    raise DatasetLayoutError(
                        f"{where}: no '{split}' folder (found {', '.join(sorted(splits.values()))}). "
                        "Hold out part of the training set instead "
                        "(resnet.data.split.stratified_split) or point at the folder itself.")
                prefix = join(pick)
                split = None  # only the top level chooses a split
                continue
        images_here = [f for f in here if is_image_file(f)]
        if len(subdirs) == 1 and not images_here and _children(dirs, files, join(subdirs[0]))[0]:
            prefix = join(subdirs[0])  # a wrapper folder around the class folders
            continue
        return prefix


def _index(source: Path, dirs: set[str], files: list[str], split: str | None) -> FolderIndex:
    where = str(source)
    dirs = {d for d in dirs if not _hidden(d)}
    files = [f for f in files if not _hidden(f)]
    prefix = _class_root(dirs, files, split, where)
    root_label = f"{where}/{prefix}" if prefix else where
    classes, _ = _children(dirs, files, prefix)
    if not classes:
        raise DatasetLayoutError(
            f"{root_label}: no class folders. Expected <root>/<class>/<image> with images ending "
            f"in {', '.join(IMG_EXTENSIONS)}.")
    base = f"{prefix}/" if prefix else ""
    by_class: dict[str, list[str]] = {c: [] for c in classes}
    for f in files:
        if f.startswith(base) and is_image_file(f):
            rest = f[len(base):]
            if "/" in rest:
                by_class[rest.split("/", 1)[0]].append(f)
    empty = [c for c in classes if not by_class[c]]
    if empty:
        raise DatasetLayoutError(
            f"{root_label}: class folder(s) {', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''} "
            f"hold no images ({', '.join(IMG_EXTENSIONS)}, any case). Add images or remove the "
            "folder(s).")
    samples = [(f, label) for label, c in enumerate(classes) for f in sorted(by_class[c])]
    return FolderIndex(source=source, prefix=prefix, classes=classes, samples=samples)


def _member_name(m: tarfile.TarInfo) -> str | None:
    name = str(PurePosixPath(m.name.lstrip("/")))
    name = name[2:] if name.startswith("./") else name
    return None if name in (".", "") or ".." in name.split("/") else name


def _has_content(m: tarfile.TarInfo) -> bool:
    """A file's member, or a hard link to an earlier one (GNU tar stores a file's second name so; tarfile reads
    the target's bytes for it). Symbolic links are left out: they may point outside the archive."""
    return m.isfile() or m.islnk()


def walk_archive(source: Path, on_image: Callable[[str, bytes], None] | None = None
                 ) -> tuple[set[str], list[str]]:
    """One sequential pass over a tar archive: its folders and files (posix names). With
    ``on_image``, each visible image file's bytes are handed over as they are read."""
    dirs: set[str] = set()
    files: list[str] = []
    try:
        with tarfile.open(source, "r:*") as tar:
            for m in tar:
                name = _member_name(m)
                if name is None:
                    continue
                if m.isdir():
                    dirs.add(name)
                elif _has_content(m):
                    files.append(name)
                    if on_image is not None and is_image_file(name) and not _hidden(name):
                        with tar.extractfile(m) as f:  # type: ignore[union-attr]
                            on_image(name, f.read())
    except (tarfile.TarError, EOFError, OSError) as e:
        # tarfile.open(..., "r:*") lists each compression it tried, a line each: errors print as one line
        reason = "not a tar archive, plain or gzip, bzip2 or xz compressed" if "\n" in str(e) else str(e)
        raise DatasetLayoutError(f"{source}: unreadable archive ({reason})") from e
    # a name appended again (`tar -r`) is one file, the later member's bytes, as extraction leaves it (readers
    # keep the last member of a name): listed twice, it trained twice
    files = list(dict.fromkeys(files))
    for f in list(files) + list(dirs):  # folders implied by member paths
        parts = f.split("/")[:-1]
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return dirs, files


def index_from_names(source: Path, dirs: set[str], files: list[str], split: str | None) -> FolderIndex:
    """The class layout of an archive's member names (see :func:`scan`)."""
    return _index(Path(source), dirs, files, split)


def walk_tree(source: Path, problems: list[tuple[str, str]] | None = None
              ) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk(source, followlinks=True)`` without hidden folders and without following a
    symlink back into a folder above it (a loop would list every image again, 40 levels deep).
    Such links and unreadable folders are appended to ``problems`` as (path, reason)."""
    source_s = str(source)
    st = os.stat(source_s)
    chain: dict[str, tuple[tuple[int, int], ...]] = {source_s: ((st.st_dev, st.st_ino),)}
    for cur, dnames, fnames in os.walk(source_s, followlinks=True):
        above = chain.pop(cur, ())
        keep = []
        for d in sorted(dnames):
            if d.startswith("."):
                continue
            p = os.path.join(cur, d)
            try:
                st = os.stat(p)
            except OSError as e:
                if problems is not None:
                    problems.append((p, f"unreadable folder ({e})"))
                continue
            key = (st.st_dev, st.st_ino)
            if key in above:
                if problems is not None:
                    problems.append((p, f"symlink loop: leads back to {os.path.realpath(p)}, "
                                        "a folder above it"))
                continue
            chain[p] = above + (key,)
            keep.append(d)
        dnames[:] = keep
        yield cur, dnames, fnames


def scan(source: str | Path, split: str | None = None, skip_bad: bool = False) -> FolderIndex:
    """Index a class-per-folder tree in a directory or a ``.tar``/``.tar.gz`` archive.

    ``split`` ('train'/'test') picks the ``train/`` or ``test/``/``val/`` folder when the root
    holds such split folders; without split folders the tree itself is used. Sample keys are
    file paths for a directory, member names for an archive. A symlinked folder that leads back
    to a folder above it raises DatasetLayoutError naming the link; with ``skip_bad`` it is left
    out and listed in ``index.skipped``."""
    source = Path(source).expanduser()
    if not source.exists():
        if source.is_symlink():
            raise FileNotFoundError(f"{source}: a broken symlink or a symlink loop")
        raise FileNotFoundError(f"{source}: no such file or folder")
    if source.is_dir():
        dirs: set[str] = set()
        files: list[str] = []
        problems: list[tuple[str, str]] = []
        for cur, dnames, fnames in walk_tree(source, problems):
            rel = Path(cur).relative_to(source).as_posix()
            rel = "" if rel == "." else rel
            dirs.update(f"{rel}/{d}" if rel else d for d in dnames)
            files.extend(f"{rel}/{f}" if rel else f for f in fnames)
        if problems and not skip_bad:
            path, reason = problems[0]
            raise DatasetLayoutError(
                f"{path}: {reason}. Remove it, or pass skip_bad=True (`resnet train --skip-bad`) to leave it out"
                + (f" ({len(problems) - 1} more such folder(s))" if len(problems) > 1 else ""))
        idx = _index(source, dirs, files, split)
        idx.samples = [(str(source / f), label) for f, label in idx.samples]
        idx.skipped = problems
        return idx
    if not is_archive(source):
        raise DatasetLayoutError(f"{source}: not a folder or a .tar/.tar.gz archive")
    return _index(source, *walk_archive(source), split)


def iter_encoded(index: FolderIndex,
                 on_error: Callable[[str, ImageDecodeError], None] | None = None
                 ) -> Iterator[tuple[str, bytes, int]]:
    """(name, encoded bytes, label) for every sample, in ``index.samples`` order for folders and
    archive order for archives (read sequentially: a .tar.gz cannot be read at random cheaply).

    A file that cannot be read (a dangling symlink, a symlink loop, no permission) raises
    ImageDecodeError naming it; with ``on_error`` it is handed over and left out instead."""
    if not index.is_archive:
        for path, label in index.samples:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as e:
                err = ImageDecodeError(f"{path}: cannot read ({e.strerror or e}); delete or "
                                       "replace the file")
                if on_error is None:
                    raise err from e
                on_error(path, err)
                continue
            yield path, data, label
        return
    labels = dict(index.samples)
    with tarfile.open(index.source, "r:*") as tar:
        for m in tar:
            name = _member_name(m)
            if _has_content(m) and name in labels:
                with tar.extractfile(m) as f:  # type: ignore[union-attr]
                    yield f"{index.source}:{name}", f.read(), labels[name]
