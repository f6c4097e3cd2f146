"""The toolkit's cache folder: what is in it (`resnet cache list`) and removing it (`resnet cache clear`).

Everything the toolkit caches goes to one folder, ``default_cache_dir()`` (``$RESNET_CACHE``, else
``$XDG_CACHE_HOME/resnet``, else ``~/.cache/resnet``), unless the user names another (``data.cache_dir``):
decoded images of image folders and archives, downloaded CIFAR archives, their extracted batches
and torch.compile's kernels. Each is rebuilt when missing, so any of them may be removed; entries
the toolkit did not make are listed as ``other`` and never removed.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from ..errors import ConfigError
from .cifar import SPECS, default_cache_dir

KINDS = {
    "decoded": "decoded images of an image folder or archive (decoded again on the next run)",
    "download": "a downloaded data set archive (downloaded again when needed)",
    "cifar": "CIFAR batches extracted from their archive (extracted again)",
    "compiled": "torch.compile kernels of `resnet eval/predict/benchmark` (compiled again)",
}
DECODED_SUFFIX = ".resnet-u8.safetensors"


@dataclass(frozen=True)
class CacheEntry:
    kind: str  # a key of KINDS, or "other"
    path: Path
    size: int  # bytes
    source: str = ""  # decoded images: the data they were decoded from

    def to_dict(self) -> dict:
        return {"kind": self.kind, "path": str(self.path), "bytes": self.size, "source": self.source}


def entry_kind(path: Path) -> str:
    """Which of KINDS a top-level entry of the cache folder is (temporary files of an interrupted
    write, extraction or download included); "other" for anything else."""
    name = path.name
    if name.endswith(DECODED_SUFFIX) or name.startswith(".") and DECODED_SUFFIX + "." in name and name.endswith(".tmp"):
        return "decoded"
    for spec in SPECS.values():
        if name == spec.archive_name or name.startswith(f".{spec.archive_name}.") and name.endswith(".part"):
            return "download"
        if path.is_dir() and (name == spec.folder or name.startswith(f".{spec.folder}-")):
            return "cifar"
    if name == "inductor" and path.is_dir():
        return "compiled"
    return "other"


def _size(path: Path) -> int:
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size
    return sum(os.lstat(os.path.join(cur, f)).st_size for cur, _, files in os.walk(path) for f in files)


def _decoded_source(path: Path) -> str:
    try:
        with safe_open(str(path), framework="pt") as f:  # reads the header only
            return (f.metadata() or {}).get("source", "")
    except Exception:  # noqa: BLE001 - a damaged or partial file: listed without its source
        return ""


def list_cache(root: str | Path | None = None) -> list[CacheEntry]:
    """The entries of the cache folder (default: the toolkit's), largest first."""
    root = Path(root).expanduser() if root is not None else default_cache_dir()
    if not root.is_dir():
        return []
    entries = []
    for path in root.iterdir():
        kind = entry_kind(path)
        source = _decoded_source(path) if kind == "decoded" and path.name.endswith(DECODED_SUFFIX) else ""
        entries.append(CacheEntry(kind, path, _size(path), source))
    return sorted(entries, key=lambda e: (-e.size, e.path.name))


def clear_cache(root: str | Path | None = None, kinds=("decoded",)) -> list[CacheEntry]:
    """Remove the entries of these kinds (default: decoded images) from the cache folder; returns them."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ConfigError(f"unknown cache kind(s) {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    removed = []
    for entry in list_cache(root):
        if entry.kind not in kinds:
            continue
        if entry.path.is_dir() and not entry.path.is_symlink():
            shutil.rmtree(entry.path)
        else:
            entry.path.unlink()
        removed.append(entry)
    return removed


def human(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"  # pragma: no cover


def format_listing(entries: list[CacheEntry], root: str | Path | None = None, as_json: bool = False) -> str:
    root = Path(root).expanduser() if root is not None else default_cache_dir()
    if as_json:
        return json.dumps({"folder": str(root), "entries": [e.to_dict() for e in entries]})
    if not entries:
        return f"{root}: empty"
    lines = [f"{root}: {human(sum(e.size for e in entries))} in {len(entries)} entries"]
    lines += [f"  {e.kind:<9}{human(e.size):>10}  {e.path.name}" + (f"  (from {e.source})" if e.source else "")
              for e in entries]
    lines.append("remove decoded images with `resnet cache clear`, everything the toolkit made with `--all`")
    return "\n".join(lines)
