"""Where the toolkit keeps what it fetches or builds once (downloads, extracted CIFAR, decoded
datasets, compiled kernels), and the one downloader that fetches files: streamed to a temporary
file beside the destination, hash-checked, then renamed, with progress, a timeout on every network
operation and one process at a time per folder; and the one atomic writer every module uses."""
from __future__ import annotations

import contextlib
import hashlib
import json
import http.client
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, the atomic rename still keeps files whole
    fcntl = None

DOWNLOAD_TIMEOUT = 30.0  # seconds any one network operation (connect, each read) may wait


def cache_root() -> Path:
    """``$RESNET_CACHE`` if set, else ``$XDG_CACHE_HOME/resnet``, else ``~/.cache/resnet``."""
    env = os.environ.get("RESNET_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "resnet"


def read_json_cache(path: Path) -> dict:
    """A cache file's {key: entry} table; empty when there is none yet or it is damaged (measure again)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json_cache(path: Path, data: dict) -> None:
    """Write a cache table atomically (a crash leaves the old file or the new one, never half of one).
    An unwritable cache folder only costs a measurement next time: no error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))
    except OSError:
        pass


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call write(tmp_path), fsync, then rename over `path`: readers see the old file or the new one, and
    a failure (a full disk) leaves no temporary file behind."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        shareable(tmp)  # mkstemp makes it private; weights, exports and hub files are as readable as any file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


# `.NAME.XXXXXXXX.tmp`: mkstemp's names for atomic_write (8 of [a-z0-9_]), not any hidden .tmp of the user's
_OUR_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")
STALE_TEMPORARY_SECONDS = 3600.0  # far longer than any write takes: older ones are a killed process's


def sweep_temporaries(folder: str | os.PathLike, older_than: float = STALE_TEMPORARY_SECONDS,
                      names: str = "*") -> list[Path]:
    """Remove what `atomic_write` left in `folder` when its process was killed mid-write (SIGKILL, a power
    cut: no `except` ran), hidden `.NAME.XXXX.tmp` files as large as a checkpoint. Only those `older_than`
    seconds, so that a write in progress elsewhere is never cut; `names`: a glob of the files written there
    (default any). Returns what it removed."""
    removed, now = [], time.time()
    for tmp in Path(folder).glob(f".{names}.*.tmp"):
        if not _OUR_TEMPORARY.fullmatch(tmp.name):
            continue
        try:
            if tmp.is_file() and now - tmp.stat().st_mtime > older_than:
                tmp.unlink()
                removed.append(tmp)
        except OSError:  # gone meanwhile, or not ours to remove: leave it
            pass
    return removed


def _fresh(folder: Path, since: float) -> bool:
    """Whether anything in `folder` (itself included) was changed after `since` (a time.time())."""
    for current, dirs, names in os.walk(folder):
        for name in (".", *dirs, *names):
            try:
                if os.lstat(os.path.join(current, name)).st_mtime > since:
                    return True
            except OSError:
                pass
    return False


def sweep_stale_folders(parent: str | os.PathLike, prefix: str,
                        older_than: float = STALE_TEMPORARY_SECONDS) -> list[Path]:
    """Remove the folders `tempfile.mkdtemp(prefix=prefix, dir=parent)` made for a process killed before it
    renamed them (a SIGKILL mid-extraction or mid-copy): only those where nothing inside changed for
    `older_than` seconds, so that a live writer's folder is never removed. Returns what it removed."""
    ours, removed, since = re.compile(re.escape(prefix) + r"[a-z0-9_]{8}"), [], time.time() - older_than
    try:
        entries = list(Path(parent).iterdir())
    except OSError:
        return removed
    for path in entries:
        if ours.fullmatch(path.name) and path.is_dir() and not path.is_symlink() and not _fresh(path, since):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def atomic_write_bytes(path: str | os.PathLike, data) -> None:
    """Bytes serialised beforehand (weights, a training state), written aside and renamed. Python's write
    raises OSError (ENOSPC: "No space left on device") where safetensors' and torch's own writers raise their
    own kinds (SafetensorError; torch's RuntimeError "unexpected pos 576 vs 534"), which callers could not
    tell from a bug."""
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """A text file (a run's config.yaml and metrics.jsonl, a hub folder's config.json, a cache table)
    written aside and renamed: a crash while writing leaves the old file, never an empty or cut one."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _umask() -> int:
    """The process's umask, read without setting it where Linux says it (setting it, even back at once,
    would let another thread create a file under umask 0 meanwhile)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def shareable(path: str | os.PathLike) -> None:
    """Give a file written through mkstemp (which makes it private, 0600) the mode any new file gets
    under the user's umask: a download, an export or a hub folder is meant to be read by others too."""
    os.chmod(path, 0o666 & ~_umask())


def file_hash(path: Path, algorithm: str, chunk: int = 1 << 20) -> str:
    """Hex digest of a file (`algorithm`: md5, sha256, ...)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


class DownloadProgress:
    """`downloading NAME [####    ] 45.2/170.5 MB 3.1 MB/s ETA 40s`: redrawn in place on a terminal,
    else a line every 10% (logs stay short)."""

    def __init__(self, name: str, total: int, stream):
        self.name, self.total, self.stream = name, total, stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.start, self.last, self.shown_tenth, self.shown_done = time.perf_counter(), 0.0, -1, -1

    def update(self, done: int, final: bool = False) -> None:
        now = time.perf_counter()
        tenth = 10 * done // self.total if self.total else -1
        if final and not self.tty and done == self.shown_done:
            return  # the last line already shows it
        if not final and (now - self.last < 0.25 if self.tty else tenth <= self.shown_tenth):
            return
        self.last, self.shown_tenth, self.shown_done = now, tenth, done
        rate = done / max(now - self.start, 1e-9)
        if self.total:
            bar = "#" * (24 * done // self.total)
            eta = (self.total - done) / rate if rate > 0 else 0
            line = (f"downloading {self.name} [{bar:<24}] {done / 1e6:.1f}/{self.total / 1e6:.1f} MB "
                    f"{rate / 1e6:.1f} MB/s ETA {eta:.0f}s")
        else:  # no Content-Length
            line = f"downloading {self.name}: {done / 1e6:.1f} MB {rate / 1e6:.1f} MB/s"
        self.stream.write(("\r" + line + ("\n" if final else "")) if self.tty else line + "\n")
        self.stream.flush()


@contextlib.contextmanager
def folder_lock(folder: Path):
    """One download into `folder` at a time (torchrun starts one process per GPU, each may download):
    the others wait, then find the file in place. An flock on the folder itself leaves no file behind."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def download(url: str, dest: Path, algorithm: str, expected: str | None, offline: Callable[[str], Exception],
             corrupt: Callable[[str], Exception], opener: Callable = urllib.request.urlopen, stream=None,
             timeout: float = DOWNLOAD_TIMEOUT, stated: Callable | None = None) -> Path:
    """`dest`, fetched from `url` unless it is there already with a digest starting with `expected`.

    `opener(url, timeout=...)` returns the response (urllib's `urlopen`; tests pass their own):
    every network operation waits at most `timeout` seconds. A failed or stalled transfer raises
    `offline(reason)`, a digest that does not start with `expected` raises `corrupt(digest)`; either
    way nothing is left in the folder. Where the file's hash is not known beforehand (`expected`
    None: hub files), `stated(response)` may read the one the server states for it; when neither
    is known the file cannot be checked and is not kept (`offline`: a proxy or mirror that drops the
    hub's hash header must not put unchecked bytes in the cache). Progress goes to `stream` (default stderr)."""
    dest = Path(dest)
    stream = stream if stream is not None else sys.stderr
    dest.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(dest.parent):
        if dest.is_file() and (expected is None or file_hash(dest, algorithm).startswith(expected)):
            return dest  # another process fetched it
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                got, said = _copy(url, dest.name, out, algorithm, offline, opener, stream, timeout, stated)
            if expected is None and said is None:
                raise offline(f"the server stated no {algorithm} for the file, so the download could not be checked")
            if not got.startswith(expected or said):
                raise corrupt(got)
            shareable(tmp)  # torch.hub's folder is shared: its own downloads keep the umask's mode too
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    return dest


class _LocalWriteError(OSError):
    """A failed write of a download into its folder: one line naming the file, never "offline"."""


def _copy(url: str, name: str, out, algorithm: str, offline, opener, stream, timeout: float,
          stated=None) -> tuple[str, str | None]:
    """Copy the response of `url` into `out`, showing progress; returns its digest and the digest
    the server states for it (`stated(response)`, or None)."""
    h, done, said = hashlib.new(algorithm), 0, None
    try:
        with opener(url, timeout=timeout) as resp:
            said = stated(resp) if stated else None
            total = int(getattr(resp, "headers", {}).get("Content-Length", 0) or 0)
            progress = DownloadProgress(name, total, stream)
            for block in iter(lambda: resp.read(1 << 20), b""):
                h.update(block)
                try:
                    out.write(block)
                except OSError as e:  # this machine's disk (full, read-only), not the network: say so
                    raise _LocalWriteError(f"cannot write the download to {out.name} ({e.strerror or e})") from e
                done += len(block)
                progress.update(done)
            progress.update(done, final=True)
    except _LocalWriteError:
        raise
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
        # ValueError: a malformed URL; TimeoutError (an OSError): a read waited `timeout` seconds
        reason = getattr(e, "reason", None) or e or type(e).__name__
        raise offline(f"{reason}; {done / 1e6:.1f} MB received" if done else str(reason)) from e
    return h.hexdigest(), said
