"""Checkpoints: atomic writes, weights in safetensors, the rest through torch.load(weights_only=True).

Layout of a run folder:
  ckpt/step_00001234.safetensors   weights (+ a JSON description in the metadata)
  ckpt/step_00001234.state.pt      optimizer, schedule, EMA, RNG, epoch, step, history
  last.state.pt                    the commit point: the newest state, naming its weights file
  last.safetensors, best.safetensors   the newest and the best weights, for eval/predict/export
A crash at any moment leaves last.state.pt naming a complete pair, so --resume always works.
A folder copied without last.state.pt (last.* are hard links of ckpt/ files, and tools that drop or
dedupe links lose them) resumes from the newest complete pair in ckpt/.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from ..models import ResNet, ResNetConfig
from ..errors import CheckpointError
from ..files import atomic_write, atomic_write_bytes
from ..weights.state_dict import load_plain, read_state_dict, unpickling_reason

META_KEY = "resnet"
KEEP = 2  # versioned checkpoints kept in ckpt/


def _publish(src: Path, dst: Path) -> None:
    """Atomically make `dst` a copy of `src` (a hard link when the file system allows)."""
    def write(tmp):
        os.unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    atomic_write(dst, write)


def save_weights(path: Path, model: torch.nn.Module, meta: dict) -> None:
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, safetensors_bytes(state, metadata={META_KEY: json.dumps(meta)}))


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, unwritable folder); the previous one is intact."""


def save_checkpoint(run_dir: Path, model: torch.nn.Module, state: dict, meta: dict, best: bool = False) -> Path:
    """Write weights + training state for `state['step']`, then move the commit point to them.

    Any failure leaves the previous checkpoint untouched (every file is written aside, then renamed)."""
    try:
        return _save_checkpoint(Path(run_dir), model, state, meta, best)
    except OSError as e:
        raise CheckpointWriteError(
            f"could not write a checkpoint in {run_dir} ({e.strerror or e}); the previous checkpoint there is "
            "intact. Free some space or fix the folder's permissions, then continue with --resume.") from e


def _save_checkpoint(run_dir: Path, model: torch.nn.Module, state: dict, meta: dict, best: bool) -> Path:
    folder = run_dir / "ckpt"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"step_{state['step']:08d}"
    weights = folder / f"{stem}.safetensors"
    save_weights(weights, model, meta)
    state = dict(state, weights_file=f"ckpt/{weights.name}")
    state_file = folder / f"{stem}.state.pt"
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(state_file, buffer.getbuffer())
    if best:  # before the commit point: a crash between the two would leave a state whose best_val_err
        # counts this epoch, and best.safetensors would never get its weights
        _publish(weights, run_dir / "best.safetensors")
    _publish(weights, run_dir / "last.safetensors")
    _publish(state_file, run_dir / "last.state.pt")  # the commit point
    _prune(folder, state["step"])
    return weights


def _step_of(path: Path) -> int:
    return int(path.name.split(".", 1)[0][len("step_"):])


def _prune(folder: Path, current: int) -> None:
    """Keep the pair of step `current` (just committed) and the KEEP - 1 newest complete pairs before it.
    Files of later steps were written but never committed (a crash in between, then a resume from before
    them): sorted by name they would push out the pair just committed, which last.state.pt names. A
    weights file without its state (a write that failed between the two) goes too."""
    files = [p for p in folder.glob("step_*") if p.name.endswith((".state.pt", ".safetensors"))
             and p.name.split(".", 1)[0][len("step_"):].isdigit()]
    earlier = sorted({_step_of(p) for p in files if p.name.endswith(".state.pt") and _step_of(p) < current
                      and p.with_name(p.name.replace(".state.pt", ".safetensors")).is_file()})
    kept = {current, *earlier[max(len(earlier) - (KEEP - 1), 0):]}
    for p in files:
        if _step_of(p) not in kept:
            p.unlink(missing_ok=True)


def latest_state_file(run_dir: Path) -> Path | None:
    """The commit point, or else the newest ckpt/ state whose weights file is there too; None if neither."""
    run_dir = Path(run_dir)
    if (run_dir / "last.state.pt").is_file():
        return run_dir / "last.state.pt"
    pairs = [s for s in sorted((run_dir / "ckpt").glob("step_*.state.pt"))
             if s.with_name(s.name.replace(".state.pt", ".safetensors")).is_file()]
    return pairs[-1] if pairs else None


def copy_resumable(src: str | os.PathLike, dst: str | os.PathLike) -> list[Path]:
    """Copy a run folder, or a folder of them (an experiment), to `dst` in the smallest form that still
    resumes exactly: each run's newest complete ckpt/ pair, best.safetensors, its config and metrics;
    no last.* hard links (the pair stands in for them), no older pairs, no tensorboard/. For moving a
    run to another machine or committing an unfinished one. Returns the run folders written."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such folder; give a run folder (with ckpt/) or an experiment folder")
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise CheckpointError(f"{dst}: inside {src}; copy to a folder outside it")
    if dst.exists() and any(dst.iterdir()):
        raise FileExistsError(f"{dst} is not empty; give a new folder (or remove it first)")
    if not any(latest_state_file(Path(d)) is not None for d, _, _ in os.walk(src)):  # before anything is copied
        raise CheckpointError(f"{src} holds no run with a checkpoint (ckpt/ or last.state.pt): nothing to resume, "
                              "so nothing to park")
    runs = []
    for current, dirs, files in os.walk(src):
        here = Path(current)
        dirs[:] = sorted(d for d in dirs if d not in ("tensorboard", "ckpt"))
        target = dst / here.relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            if name in ("last.state.pt", "last.safetensors") or name.endswith(".tmp"):
                continue
            shutil.copy2(here / name, target / name)
        state = latest_state_file(here)
        if state is not None:
            if state.name == "last.state.pt":  # the pair it names, not the link
                named = load_plain(state)["weights_file"]
                state = here / named.replace(".safetensors", ".state.pt")
            (target / "ckpt").mkdir(exist_ok=True)
            weights = state.with_name(state.name.replace(".state.pt", ".safetensors"))
            shutil.copy2(weights, target / "ckpt" / weights.name)
            # the state last, written aside: a park killed midway leaves no pair that looks complete (a cut
            # state beside its weights would be the copy's newest "complete" checkpoint)
            atomic_write(target / "ckpt" / state.name, lambda tmp: shutil.copy2(state, tmp))
            runs.append(target)
    return runs


def resumable_state_file(run_dir: Path) -> Path:
    """The state file --resume continues from (`latest_state_file`), or an error that says what to do."""
    state_file = latest_state_file(run_dir)
    if state_file is not None and state_file.name == "last.state.pt" \
            and not any((run_dir / "ckpt").glob("step_*.safetensors")):  # it always names a ckpt/ file
        raise _missing_weights(run_dir, run_dir / "ckpt")
    if state_file is not None:
        return state_file
    orphans = sorted((run_dir / "ckpt").glob("step_*.safetensors"))
    if orphans:  # weights whose state never came: "no checkpoint" would hide where the cut copy came from
        state_name = orphans[-1].name.replace(".safetensors", ".state.pt")
        raise CheckpointError(f"--resume {run_dir}: {orphans[-1]} has no {state_name} beside it, so its writing was "
                              "cut short (a `resnet park` stopped midway, or a run killed while saving its first "
                              "checkpoint): park the original run again into a new folder, or start a new run with "
                              "--out")
    raise FileNotFoundError(f"--resume {run_dir}: no checkpoint there (expected {run_dir / 'last.state.pt'} "
                            "or ckpt/step_*.state.pt); start a new run with --out instead")


def _missing_weights(run_dir: Path, missing: Path) -> CheckpointError:
    # last.safetensors is not taken instead: after a crash between publishing it and last.state.pt it is a
    # step ahead of the state, and nothing in the two proves them a pair
    return CheckpointError(f"--resume {run_dir}: {missing} is missing (last.state.pt resumes from the weights in "
                           "ckpt/: was the folder deleted?); put it back, or start a new run with --out "
                           f"({run_dir / 'last.safetensors'} still serves eval, predict and export)")


def load_training_state(run_dir: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(state, weights) of the newest complete checkpoint in a run folder, for --resume."""
    run_dir = Path(run_dir)
    state_file = resumable_state_file(run_dir)
    try:
        state = load_plain(state_file)
    except pickle.UnpicklingError as e:  # torch's text would advise weights_only=False: never for a file like this
        raise CheckpointError(f"refusing to read {state_file}: it holds more than tensors and plain values (a file "
                              f"not written by this toolkit, or objects whose unpickling could run code): "
                              f"{unpickling_reason(e)}") from None
    except Exception as e:
        raise CheckpointError(f"cannot read {state_file} ({type(e).__name__}: {str(e)[:200]}); "
                           "it may not come from this toolkit") from None
    weights = run_dir / state["weights_file"]
    if not weights.is_file():
        raise _missing_weights(run_dir, weights)
    return state, read_state_dict(weights)


def resolve_weights_path(path: str | os.PathLike) -> Path:
    """A weights file, or a run folder (its best, else last, weights); `~` is the home folder (the API's and
    config files' paths, which no shell expands)."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path} holds no best.safetensors or last.safetensors: is it a run folder?")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def read_meta(path: Path) -> dict:
    """The JSON description stored with a toolkit checkpoint."""
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: a toolkit checkpoint is a .safetensors file (or its run folder)")
    try:
        with safe_open(str(path), "pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except Exception as e:
        raise CheckpointError(f"{path} is not a valid safetensors file ({e})") from None
    if raw is None:
        raise CheckpointError(f"{path} has no model description: build the model yourself and use resnet.load_weights")
    meta = json.loads(raw)
    if not isinstance(meta, dict) or "model_config" not in meta:  # (a hub folder's model.safetensors names its model
        # under the same key, but its description is config.json beside it)
        raise CheckpointError(f"{path} is not a toolkit checkpoint (its description has no model_config); "
                              "pass a hub-style folder with --weights FOLDER, or a weights file with --weights FILE --model NAME")
    return meta


def describes_itself(path: str | os.PathLike) -> bool:
    """Whether `path` is a toolkit checkpoint file (a .safetensors holding the model's description)."""
    path = Path(path).expanduser()
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    try:
        with safe_open(str(path), "pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
        return raw is not None and "model_config" in json.loads(raw)  # not a hub folder's {"model": ...}
    except Exception:  # not safetensors at all: the weights loader says so in its own words
        return False


def load_model(path: str | os.PathLike) -> tuple[ResNet, dict]:
    """Rebuild a model from a checkpoint alone: (model in eval mode, its metadata)."""
    path = resolve_weights_path(path)
    meta = read_meta(path)
    model = ResNet(ResNetConfig(**meta["model_config"]))
    model.model_name = meta.get("model", "resnet")
    model.load_state_dict(read_state_dict(path), strict=True)
    model.pretrained_meta = meta  # what save_pretrained writes beside the weights: preprocessing, classes, recipe
    return model.eval(), meta
