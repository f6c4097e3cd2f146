"""Sharing: any model source (a run folder, a checkpoint, named or hub weights) as a hub-style
folder (`resnet export --format hub`), and that folder pushed to the Hugging Face hub (`resnet push`).

The model card is generated from what the source knows: a run gives its recipe (config), data and
per-epoch metrics (metrics.jsonl beside its checkpoints); named weights give their publisher's figures.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ..engine.checkpoint import describes_itself, resolve_weights_path
from ..config import read_yaml_mapping
from ..errors import ConfigError
from ..models.hub import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME
from ..weights import hf, is_folder
from .load import load_spec


def is_checkpoint(spec: str) -> bool:
    """A run folder (best/last.safetensors) or a toolkit checkpoint (.safetensors with its description)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return (path / "best.safetensors").is_file() or (path / "last.safetensors").is_file()
    return describes_itself(path)


def _run_folder(spec: str) -> Path:
    path = Path(spec).expanduser()
    return path if path.is_dir() else (path.parent.parent if path.parent.name == "ckpt" else path.parent)


def run_config(spec: str) -> dict | None:
    """The run's config.yaml as it stands (a resume with more epochs updates it; the config stored with
    best.safetensors is the one of the epoch it was saved in); None when there is none."""
    saved = _run_folder(spec) / "config.yaml"
    if not saved.is_file():
        return None
    return read_yaml_mapping(saved.read_text(), f"{saved}")


def run_history(spec: str) -> list[dict]:
    """The run's metrics.jsonl records (one per epoch), found beside its checkpoint; [] when none."""
    log = _run_folder(spec) / "metrics.jsonl"
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def load_source(spec: str):
    """(model, description, history) of a run folder, a checkpoint, or any weights spec (`load_spec`)."""
    model, meta = load_spec(spec)
    if meta.get("random_init"):
        raise ConfigError(f"{spec} is a model name (random weights): share a run folder, a checkpoint or weights")
    history = []
    if is_checkpoint(spec):
        meta, history = dict(meta, weights=str(resolve_weights_path(spec))), run_history(spec)
        meta["config"] = run_config(spec) or meta.get("config")  # the card describes the whole run
    model.pretrained_meta = meta
    return model, meta, history


def export_hub(spec: str, out: str | os.PathLike, license: str | None = None) -> dict:
    """Write `out`/{model.safetensors, config.json, README.md} for `spec`; a report of what was written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out}: a file is there; a hub-style export is a folder")
    model, meta, history = load_source(spec)
    model.save_pretrained(out, history=history, license=license or meta.get("license"))
    files = {name: (out / name).stat().st_size for name in (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)}
    return {"format": "hub", "out": str(out), "source": spec, "model": meta.get("model"), "files": files,
            "epochs": len(history)}


def push(spec: str, repo: str, revision: str | None = None, private: bool = False, license: str | None = None,
         api=None) -> dict:
    """Export `spec` (or take a hub-style folder as it is) and upload it to `repo`; the commit's address."""
    hf.check_repo(repo)
    if is_folder(spec):
        url = hf.push_folder(Path(spec), repo, revision, private, api=api)
        return {"repo": repo, "url": url, "folder": str(spec)}
    with tempfile.TemporaryDirectory(prefix="resnet-push-") as tmp:
        report = export_hub(spec, Path(tmp) / "model", license=license)
        url = hf.push_folder(Path(report["out"]), repo, revision, private,
                             message=f"Upload {report['model']} from {Path(spec).name} with resnet push", api=api)
    return {"repo": repo, "url": url, "files": report["files"]}


def format_report(report: dict) -> str:
    sizes = ", ".join(f"{k} {v / 1e6:.2f} MB" if v > 1e5 else f"{k} {v:,} B" for k, v in report["files"].items())
    return f"wrote {report['out']}/ ({sizes}) from {report['source']}"
