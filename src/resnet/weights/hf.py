"""The Hugging Face hub: `hf://OWNER/NAME[@REVISION]` as a weights source, and pushing a folder.

`huggingface_hub` is optional (the `hub` extra). Without it, files already in the hub cache are
still found: the cache is read as huggingface_hub lays it out
(`$HF_HUB_CACHE/models--OWNER--NAME/refs/REVISION` holding a commit, `snapshots/COMMIT/FILE`), so
the weights timm downloaded are reused, offline too. Downloading and pushing need the package.
`HF_HUB_OFFLINE=1` keeps every lookup in the cache, as huggingface_hub does.
"""
from __future__ import annotations

import importlib
import os
import re
from pathlib import Path

from ..errors import ConfigError, WeightsUnavailableError
from ..version import install_hint

PREFIX = "hf://"
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
INSTALL = install_hint("hub")


def is_hf(spec) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def parse(spec: str) -> tuple[str, str]:
    """`hf://OWNER/NAME[@REVISION]` -> (OWNER/NAME, REVISION or "main")."""
    repo, _, revision = spec[len(PREFIX):].partition("@")
    if not _REPO.match(repo) or "@" in revision or (spec.endswith("@") and not revision):
        raise ConfigError(f"--weights {spec}: expected hf://OWNER/NAME or hf://OWNER/NAME@REVISION")
    return repo, revision or "main"


def check_repo(repo: str) -> str:
    if not _REPO.match(repo or ""):
        raise ConfigError(f"--repo {repo!r}: expected OWNER/NAME (a Hugging Face model repository)")
    return repo


def hub_cache_dir() -> Path:
    """huggingface_hub's cache folder, from the same variables it reads (each time: tests change them)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface"
    return Path(home).expanduser() / "hub"


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def cached_file(repo: str, filename: str, revision: str = "main") -> Path | None:
    """`filename` of `repo` at `revision` in the hub cache, or None (huggingface_hub not needed)."""
    root = hub_cache_dir() / f"models--{repo.replace('/', '--')}"
    ref = root / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    path = root / "snapshots" / commit / filename
    return path if path.is_file() else None


def _hub():
    try:
        return importlib.import_module("huggingface_hub")
    except ImportError:
        return None


def download_files(repo: str, revision: str, files: tuple[str, ...], optional: tuple[str, ...] = ()) -> Path:
    """The snapshot folder holding `files` (and whichever of `optional` exist) of `repo` at `revision`:
    from the cache, else downloaded by huggingface_hub into it."""
    found = [cached_file(repo, f, revision) for f in files]
    if all(found):
        return found[0].parent
    spec = f"{PREFIX}{repo}@{revision}"
    hub = _hub()
    if hub is None or is_offline():
        why = "HF_HUB_OFFLINE is set" if hub is not None else f"huggingface_hub is not installed ({INSTALL})"
        missing = next(f for f, p in zip(files, found) if p is None)
        raise WeightsUnavailableError(f"{spec}: {missing} is not in the hub cache "
                                      f"{hub_cache_dir()} and {why}; fetch it once with network access, or copy "
                                      "the model's folder here and pass --weights DIR")
    paths = [_hub_download(hub, repo, revision, f, spec) for f in files]
    for f in optional:
        try:
            _hub_download(hub, repo, revision, f, spec)
        except WeightsUnavailableError:
            pass  # a model card is welcome, not required
    return Path(paths[0]).parent


def _hub_download(hub, repo: str, revision: str, filename: str, spec: str) -> str:
    try:
        return hub.hf_hub_download(repo, filename, revision=revision, cache_dir=str(hub_cache_dir()),
                                   library_name="resnet")
    except Exception as e:  # noqa: BLE001 - the hub raises many types (HTTP, repo, revision, entry, offline)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsUnavailableError(f"{spec}: cannot fetch {filename} ({type(e).__name__}: {first})") from None


def push_folder(folder: Path, repo: str, revision: str | None = None, private: bool = False,
                message: str = "Upload with resnet push", api=None) -> str:
    """Upload a hub-style folder to `repo` (created when missing); returns the commit's address.

    `api` stands in for `huggingface_hub.HfApi()` (tests); the token is huggingface_hub's own
    (`hf auth login` or $HF_TOKEN)."""
    check_repo(repo)
    if api is None:
        hub = _hub()
        if hub is None:
            raise WeightsUnavailableError(f"resnet push needs huggingface_hub: {INSTALL}")
        api = hub.HfApi()
    try:
        api.create_repo(repo_id=repo, repo_type="model", private=private, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id=repo, branch=revision, exist_ok=True)
        info = api.upload_folder(repo_id=repo, folder_path=str(folder), revision=revision, commit_message=message)
    except Exception as e:  # noqa: BLE001 - HTTP, auth and validation errors all end the push
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsUnavailableError(f"cannot push to {repo} ({type(e).__name__}: {first})") from None
    return str(getattr(info, "commit_url", None) or info)
