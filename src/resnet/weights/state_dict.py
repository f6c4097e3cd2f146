"""Load torchvision / timm / our own state dicts into a model, safely and with clear errors."""
from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import load_file
from torch import nn

from ..errors import WeightsError, WeightsUnavailableError  # noqa: F401 - re-exported for old imports

PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP and torch.compile wrappers
HEAD_PREFIX = "fc."


def unpickling_reason(e: Exception) -> str:
    """torch.load(weights_only=True)'s one-line reason for refusing a file, without its advice to load it with
    weights_only=False (which would run whatever code the file holds)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    reason = next((line for line in lines if line.startswith(("Unsupported", "WeightsUnpickler", "Trying to load"))
                   and line != "WeightsUnpickler error:"), None)
    return reason or next((line for line in lines if "weights_only" not in line), "not a file of tensors")[:120]


def load_plain(path: str | os.PathLike):
    """torch.load(weights_only=True): tensors and plain values only, never objects whose unpickling runs code.
    Without torch's warning about a pickle protocol other than 2 (a file written by plain `pickle`): it names
    weights_only, and the caller's one-line error about such a file is all a user needs to read."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(path, map_location="cpu", weights_only=True)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from `.safetensors`, or from `.pt/.pth/.bin` through `torch.load(weights_only=True)`.

    Never unpickles arbitrary objects: a file that needs that is refused with a clear error.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            detail = (str(e).strip().splitlines() or [""])[0][:200]
            raise WeightsError(f"{path} is not a valid safetensors file ({detail})") from None
    try:
        obj = load_plain(path)
    except pickle.UnpicklingError as e:
        # torch says the same for code-running pickles and for files that are no pickle at all (an
        # HTML error page, a partial download): name both, with torch's one-line reason.
        reason = unpickling_reason(e)
        raise WeightsError(
            f"refusing to load {path}: it is not a file of tensors alone (a corrupt or partial file, another format, "
            f"or Python objects whose unpickling could run arbitrary code); re-download it, or re-save it as "
            f"tensors only (or .safetensors). Detail: {reason}") from None
    except Exception as e:
        detail = (str(e).strip().splitlines() or [""])[0][:200]
        raise WeightsError(f"cannot read {path} as a PyTorch weights file ({type(e).__name__}: {detail})") from None
    return _unwrap(obj, path)


def _unwrap(obj, origin) -> dict[str, torch.Tensor]:
    """Accept a bare state dict or the common wrappers {'state_dict': ...}, {'model': ...}."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise WeightsError(f"{origin} holds no state dict of tensors")


def clean_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the `module.` and `_orig_mod.` prefixes that DDP and torch.compile add."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def compare_state_dicts(model_sd: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]):
    """(missing, unexpected, shape mismatches as (key, expected, given))."""
    missing = [k for k in model_sd if k not in given and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in given if k not in model_sd]
    mismatched = [(k, tuple(model_sd[k].shape), tuple(v.shape)) for k, v in given.items()
                  if k in model_sd and model_sd[k].shape != v.shape]
    return missing, unexpected, mismatched


def format_problems(missing, unexpected, mismatched, origin: str) -> str:
    def show(items, limit=12):
        items = [str(i) for i in items]
        more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
        return ", ".join(items[:limit]) + more

    lines = [f"weights from {origin} do not fit the model:"]
    if missing:
        lines.append(f"missing keys ({len(missing)}): {show(missing)}")
    if unexpected:
        lines.append(f"unexpected keys ({len(unexpected)}): {show(unexpected)}")
    if mismatched:
        lines.append(f"shape mismatches ({len(mismatched)}): "
                     + show(f"{k} model {m} vs file {g}" for k, m, g in mismatched))
    lines.append("check the model name and its arguments (block, shortcut, num_classes) against those the weights were trained with")
    return "; ".join(lines).replace(":; ", ": ")  # one line, as every expected error


def load_weights(model: nn.Module, source, strict: bool = True) -> nn.Module:
    """Load a state dict, or a `.safetensors` / `.pt` / `.pth` file, into `model` (in place).

    Prefixes from DDP/compile are stripped. On any mismatch one error lists missing keys,
    unexpected keys and shape mismatches. When only the classifier differs in size
    (fine-tuning to a new `num_classes`), the rest loads and the head keeps its fresh
    initialisation, with a warning; a headless model (`num_classes=0`) leaves the file's head out,
    also with a warning. `strict=False` loads what fits and warns about the rest.
    """
    origin = str(source) if isinstance(source, (str, os.PathLike)) else "the given state dict"
    given = read_state_dict(source) if isinstance(source, (str, os.PathLike)) else _unwrap(source, origin)
    given = clean_keys(given)
    model_sd = model.state_dict()
    missing, unexpected, mismatched = compare_state_dicts(model_sd, given)
    head_only = (not missing and not unexpected and mismatched
                 and all(k.startswith(HEAD_PREFIX) for k, _, _ in mismatched))
    headless = (not missing and not mismatched and unexpected and all(k.startswith(HEAD_PREFIX) for k in unexpected)
                and not any(k.startswith(HEAD_PREFIX) for k in model_sd))
    if headless:
        warnings.warn(f"{origin}: the model has no classifier; loaded everything but the file's", stacklevel=2)
    elif head_only:
        warnings.warn(f"{origin}: classifier shape differs ({mismatched[0][2]} in the file, {mismatched[0][1]} in the model); "
                      "loaded everything else and kept a freshly initialised head", stacklevel=2)
        if hasattr(model, "reset_classifier"):
            model.reset_classifier(model.fc.out_features)
    elif (missing or unexpected or mismatched) and strict:
        raise WeightsError(format_problems(missing, unexpected, mismatched, origin))
    elif missing or unexpected or mismatched:
        warnings.warn(format_problems(missing, unexpected, mismatched, origin), stacklevel=2)
    bad = {k for k, _, _ in mismatched}
    loadable = {k: v for k, v in given.items() if k in model_sd and k not in bad}
    model.load_state_dict(loadable, strict=False)
    return model


def load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], origin: str) -> nn.Module:
    """Load every tensor of the model from `state_dict` and nothing else (the BN counters
    `num_batches_tracked`, which many published files lack, may be absent); one error lists the rest."""
    given = clean_keys(state_dict)
    missing, unexpected, mismatched = compare_state_dicts(model.state_dict(), given)
    if missing or unexpected or mismatched:
        raise WeightsError(format_problems(missing, unexpected, mismatched, origin))
    model.load_state_dict(given, strict=False)
    return model
