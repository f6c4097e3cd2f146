"""CIFAR-10 / CIFAR-100 in the official python-pickle layout (Krizhevsky 2009).

Layouts read here::

    cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta
    cifar-100-python/train, test, meta

or the official ``.tar.gz`` archives holding them (extracted once into a cache folder).
Pickles are loaded through a restricted unpickler that rebuilds only builtin containers and
numpy arrays, so a tampered file cannot run code.
"""
from __future__ import annotations

import codecs
import contextlib
import io
import json
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

try:
    from numpy._core import multiarray, numeric  # numpy >= 2
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray, numeric  # type: ignore[no-redef]
import torch

from ..errors import ConfigError, DataError
from .. import files
from ..files import cache_root

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)


@dataclass(frozen=True)
class CifarSpec:
    name: str
    folder: str  # top folder inside the official archive
    url: str
    md5: str
    num_classes: int
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    train_count: int = 50_000
    test_count: int = 10_000

    @property
    def archive_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


CIFAR10 = CifarSpec(
    name="cifar10", folder="cifar-10-batches-py",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a", num_classes=10,
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)), test_files=("test_batch",),
    meta_file="batches.meta", label_key="labels", names_key="label_names",
)
CIFAR100 = CifarSpec(
    name="cifar100", folder="cifar-100-python",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85", num_classes=100,
    train_files=("train",), test_files=("test",),
    meta_file="meta", label_key="fine_labels", names_key="fine_label_names",
)
SPECS = {"cifar10": CIFAR10, "cifar100": CIFAR100}


class CifarFormatError(DataError):
    """A CIFAR file is missing, unsafe or not in the official layout."""


@dataclass
class CifarData:
    images: torch.Tensor  # uint8, N x 3 x 32 x 32
    labels: torch.Tensor  # int64, N
    classes: list[str]
    name: str


default_cache_dir = cache_root  # the toolkit's one cache root (resnet.files)


# --------------------------------------------------------------------------- safe unpickling
def _numpy_globals() -> dict[tuple[str, str], object]:
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = multiarray._reconstruct
        allowed[(mod, "scalar")] = multiarray.scalar
    # numpy's pickle protocol 5 form: a contiguous array rebuilt from its raw bytes.
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(mod, "_frombuffer")] = numeric._frombuffer
    return allowed


_BUILTINS = {name: getattr(__import__("builtins"), name) for name in (
    "dict", "list", "tuple", "set", "frozenset", "bytes", "bytearray", "int", "float",
    "complex", "bool", "str")}


class _SafeUnpickler(pickle.Unpickler):
    """Rebuilds builtin containers and numpy arrays only; any other global is refused."""

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="bytes")
        self._path = path
        self._allowed = _numpy_globals()

    def find_class(self, module: str, name: str):
        if module in ("builtins", "__builtin__") and name in _BUILTINS:
            return _BUILTINS[name]
        if (module, name) == ("_codecs", "encode"):  # how Python 3 writes bytes at protocol 2
            return codecs.encode
        obj = self._allowed.get((module, name))
        if obj is None:
            raise CifarFormatError(
                f"{self._path}: refusing to unpickle '{module}.{name}'; a CIFAR batch holds only "
                "dicts, lists, bytes and numpy arrays. The file is not an official CIFAR batch "
                "(or has been tampered with): re-download it.")
        return obj


def safe_load_pickle(path: Path) -> object:
    """Load a CIFAR pickle through the restricted unpickler; errors name the file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _SafeUnpickler(f, path).load()
    except CifarFormatError:
        raise
    except FileNotFoundError:
        raise
    except Exception as e:  # truncated, not a pickle, ...
        raise CifarFormatError(f"{path}: not a readable CIFAR pickle ({type(e).__name__}: {e})") from e


def _str_keys(d: object, path: Path) -> dict[str, object]:
    if not isinstance(d, dict):
        raise CifarFormatError(f"{path}: expected a dict, found {type(d).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in d.items()}


# --------------------------------------------------------------------------- reading
def _read_batch(path: Path, spec: CifarSpec) -> tuple[np.ndarray, np.ndarray]:
    d = _str_keys(safe_load_pickle(path), path)
    if "data" not in d or spec.label_key not in d:
        raise CifarFormatError(
            f"{path}: missing key 'data' or '{spec.label_key}' (found {sorted(d)}); "
            f"is this a {spec.name} file?")
    data = d["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise CifarFormatError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), found {desc}")
    try:
        labels = np.asarray(d[spec.label_key])
    except (ValueError, TypeError) as e:  # ragged lists
        raise CifarFormatError(f"{path}: '{spec.label_key}' is not a list of integers ({e})") from e
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise CifarFormatError(
            f"{path}: {labels.shape[0] if labels.ndim == 1 else labels.shape} labels for "
            f"{data.shape[0]} images")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        if labels.dtype == object and all(type(x) is int for x in labels.tolist()):
            labels = np.array(labels.tolist(), dtype=object)  # Python ints too big for int64
        else:
            kinds = sorted({type(x).__name__ for x in labels.tolist()})
            raise CifarFormatError(f"{path}: labels must be integers in [0, {spec.num_classes}), "
                                   f"found {labels.dtype} ({', '.join(kinds)})")
    if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise CifarFormatError(
            f"{path}: labels must be integers in [0, {spec.num_classes}), found "
            f"range [{labels.min()}, {labels.max()}] ({labels.dtype})")
    return data, labels.astype(np.int64)


def _read_classes(folder: Path, spec: CifarSpec) -> list[str]:
    meta = folder / spec.meta_file
    fallback = list(CIFAR10_CLASSES) if spec.num_classes == 10 else [str(i) for i in range(100)]
    if not meta.is_file():
        return fallback
    d = _str_keys(safe_load_pickle(meta), meta)
    names = d.get(spec.names_key)
    if not isinstance(names, (list, tuple)) or len(names) != spec.num_classes:
        return fallback
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def detect_cifar_folder(path: Path) -> tuple[CifarSpec, Path] | None:
    """The spec and batch folder if ``path`` is a CIFAR batch folder or its parent, else None."""
    path = Path(path)
    if not path.is_dir():
        return None
    for spec in (CIFAR10, CIFAR100):
        if path.name == spec.folder or (path / spec.test_files[0]).is_file() and \
                (path / spec.train_files[0]).is_file():
            return spec, path
    found = [(s, path / s.folder) for s in (CIFAR10, CIFAR100) if (path / s.folder).is_dir()]
    if len(found) > 1:
        raise CifarFormatError(
            f"{path} holds both {found[0][1].name} and {found[1][1].name}; pass one of them")
    return found[0] if found else None


def read_cifar_folder(folder: Path, spec: CifarSpec, split: str = "train") -> CifarData:
    """Read the official batch files of one split from ``folder``."""
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    files = spec.train_files if split == "train" else spec.test_files
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder}: missing {', '.join(missing)} for the {spec.name} {split} split. Put the "
            f"official files there (extract {spec.archive_name} from {spec.url}).")
    datas, labels = zip(*(_read_batch(folder / f, spec) for f in files))
    data, lab = np.concatenate(datas), np.concatenate(labels)
    images = torch.from_numpy(data).reshape(-1, 3, 32, 32)  # rows are R(1024) G(1024) B(1024)
    return CifarData(images=images, labels=torch.from_numpy(lab), classes=_read_classes(folder, spec),
                     name=spec.name)


# --------------------------------------------------------------------------- archives
def cifar_archive_spec(archive: Path) -> CifarSpec | None:
    """Which CIFAR the ``.tar.gz`` holds, judged by its first member below the archive's root ("./" itself,
    as `tar -C dir .` writes first, names no folder); None if not CIFAR."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            top = ""
            while not top and (member := tar.next()) is not None:
                top = Path(member.name).parts[0] if Path(member.name).parts else ""
    except (tarfile.TarError, OSError):
        return None
    return next((s for s in (CIFAR10, CIFAR100) if s.folder == top), None)


def _member_ok(member: tarfile.TarInfo, spec: CifarSpec) -> bool:
    parts = Path(member.name).parts
    return (member.isfile() or member.isdir()) and len(parts) >= 1 and parts[0] == spec.folder \
        and ".." not in parts and not Path(member.name).is_absolute()


SOURCE_MARK = ".extracted-from.json"  # in an extracted folder: the archive (path, size, time, md5) it came from


def _archive_id(archive: Path) -> dict:
    st = archive.stat()
    return {"archive": str(archive.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _extracted_from(folder: Path) -> dict | None:
    """The archive an extracted folder came from; None for one extracted by hand (or before the mark)."""
    try:
        return json.loads((folder / SOURCE_MARK).read_text())
    except (OSError, ValueError):
        return None


def _named_folder(spec: CifarSpec, cache: Path) -> Path | None:
    """The extracted batches the name 'cifar10'/'cifar100' may use: those of the official archive (by its
    md5, wherever the cache has moved since), or extracted there by hand; not another archive's."""
    folder = cache / spec.folder
    if not (folder / spec.test_files[0]).is_file():
        return None
    mark = _extracted_from(folder)
    return folder if mark is None or mark.get("md5") == spec.md5 else None


class _ExtractWriteError(OSError):
    """This machine's disk (full, read-only) failed the extraction, not the archive: one line saying so."""


def _disk_error(e: OSError, cache_dir: Path) -> _ExtractWriteError:
    return _ExtractWriteError(f"{cache_dir}: cannot write the extracted CIFAR batches ({e.strerror or e}); free "
                              "space there, or set data.cache_dir ($RESNET_CACHE) to another folder")


def _write_out(dest: Path, src, cache_dir: Path) -> None:
    """Copy `src` (read errors are the archive's) into the file `dest` (write errors are the disk's)."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        out = open(dest, "wb")
    except OSError as e:
        raise _disk_error(e, cache_dir) from e
    try:
        while block := src.read(1 << 20):
            try:
                out.write(block)
            except OSError as e:
                raise _disk_error(e, cache_dir) from e
        try:
            out.close()  # flushes the last block
        except OSError as e:
            raise _disk_error(e, cache_dir) from e
    finally:
        if not out.closed:
            with contextlib.suppress(OSError):
                out.close()


def extract_cifar_archive(archive: Path, cache_dir: Path | None = None) -> tuple[CifarSpec, Path]:
    """Extract an official CIFAR archive into ``cache_dir`` once; returns (spec, batch folder).

    Only regular files and folders under the archive's CIFAR folder are extracted. The folder
    is built under a temporary name and renamed, so an interrupted extraction is redone. It is
    marked with the archive's path, size and time: another archive (or this one changed) is
    extracted afresh rather than answered with the batches of the one before."""
    archive = Path(archive)
    spec = cifar_archive_spec(archive)
    if spec is None:
        raise CifarFormatError(f"{archive}: not an official CIFAR archive (no "
                               f"{CIFAR10.folder}/ or {CIFAR100.folder}/ inside)")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache_dir / spec.folder
    source = _archive_id(archive)

    def done() -> bool:
        mark = _extracted_from(target)
        complete = all((target / f).is_file() for f in spec.train_files + spec.test_files)
        # a folder extracted by hand (no mark) into a cache this process cannot write is used as it is
        return complete and ({k: (mark or {}).get(k) for k in source} == source
                             or mark is None and not os.access(cache_dir, os.W_OK))
    if done():
        return spec, target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with files.folder_lock(cache_dir):  # torchrun's processes extract one at a time; the others find it done
        if done():
            return spec, target
        files.sweep_stale_folders(cache_dir, f".{spec.folder}-")  # an extraction killed earlier (SIGKILL) left it
        tmp = Path(tempfile.mkdtemp(prefix=f".{spec.folder}-", dir=cache_dir))
        try:
            with tarfile.open(archive, "r:*") as tar:
                for m in tar:
                    if not _member_ok(m, spec):
                        continue
                    dest = tmp / m.name
                    if m.isdir():
                        dest.mkdir(parents=True, exist_ok=True)
                        continue
                    with tar.extractfile(m) as src:  # type: ignore[union-attr]
                        _write_out(dest, src, cache_dir)
            _write_out(tmp / spec.folder / SOURCE_MARK,
                       io.BytesIO(json.dumps({**source, "md5": md5sum(archive)}).encode()), cache_dir)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp / spec.folder, target)
        except _ExtractWriteError:
            raise
        except (tarfile.TarError, EOFError, OSError) as e:
            raise CifarFormatError(f"{archive}: could not extract ({e}); re-download it") from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return spec, target


# --------------------------------------------------------------------------- download
DOWNLOAD_TIMEOUT = files.DOWNLOAD_TIMEOUT


def md5sum(path: Path) -> str:
    return files.file_hash(path, "md5")


def _offline(url: str, dest: Path, reason) -> ConnectionError:
    return ConnectionError(
        f"could not download {url} ({reason}). Offline? Download that file by hand and put it at {dest} "
        f"(or extract it there, so that its folder sits in {dest.parent}), then run again.")


def download_file(url: str, dest: Path, md5: str, opener: Callable[..., io.BufferedIOBase] = urllib.request.urlopen,
                  stream=None, timeout: float = DOWNLOAD_TIMEOUT) -> Path:
    """Stream ``url`` to a temporary file next to ``dest``, check its md5, then rename (`files.download`).

    A stalled server or no network ends in a ConnectionError that says which file to put where;
    on a checksum mismatch the partial file is deleted."""
    dest = Path(dest)

    def corrupt(got: str) -> CifarFormatError:
        return CifarFormatError(f"checksum mismatch for {url}: md5 {got}, expected {md5}; the partial download "
                                f"was deleted. Try again, or put the official file at {dest} by hand.")
    return files.download(url, dest, "md5", md5, lambda reason: _offline(url, dest, reason), corrupt, opener=opener,
                          stream=stream, timeout=timeout)


def download_cifar(name: str, cache_dir: Path | None = None,
                   opener: Callable[..., io.BufferedIOBase] = urllib.request.urlopen, stream=None,
                   timeout: float = DOWNLOAD_TIMEOUT) -> Path:
    """Download the official archive of ``name`` ('cifar10' or 'cifar100') into the cache."""
    spec = SPECS[name]
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return download_file(spec.url, cache_dir / spec.archive_name, spec.md5, opener=opener, stream=stream,
                         timeout=timeout)


def fetch_named(name: str, cache_dir: str | Path | None = None, stream=None,
                opener: Callable[..., io.BufferedIOBase] = urllib.request.urlopen) -> Path | None:
    """For a data set name ('cifar10', 'cifar100') whose files are not in the cache yet: download the
    official archive there (what `--data cifar10` does); None for anything else (a path, 'digits')."""
    if name not in SPECS or Path(name).expanduser().exists():
        return None
    spec = SPECS[name]
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    if _named_folder(spec, cache) is not None:
        return cache / spec.folder
    return download_cifar(name, cache, opener=opener, stream=stream)


def load_cifar(path: str | Path, split: str = "train", cache_dir: Path | None = None,
               download: bool = False) -> CifarData:
    """CIFAR from a batch folder, its parent, an official archive, or the name 'cifar10'/'cifar100'.

    A name looks in ``cache_dir`` (default :func:`default_cache_dir`) for the extracted folder or
    the archive; ``download=True`` fetches the archive when neither is there."""
    p = Path(path).expanduser()
    if not p.exists() and str(path) in SPECS:
        spec = SPECS[str(path)]
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        if (cache / spec.archive_name).is_file():
            p = cache / spec.archive_name  # extracted once: the folder made from it is reused
        elif _named_folder(spec, cache) is not None:
            p = cache / spec.folder
        elif download:
            p = download_cifar(spec.name, cache)
        else:
            raise FileNotFoundError(
                f"{spec.name} not found in {cache}. Pass download=True (the `resnet` commands download "
                f"it themselves), or download {spec.url} and put it at {cache / spec.archive_name} (or "
                f"extract it so that {cache / spec.folder / spec.test_files[0]} exists).")
    if p.is_file():
        spec, folder = extract_cifar_archive(p, cache_dir)
        return read_cifar_folder(folder, spec, split)
    found = detect_cifar_folder(p)
    if found is None:
        raise FileNotFoundError(
            f"{p}: no CIFAR batches here; expected {CIFAR10.folder}/ or {CIFAR100.folder}/ "
            "(or one of them itself, or the official .tar.gz)")
    return read_cifar_folder(found[1], found[0], split)
