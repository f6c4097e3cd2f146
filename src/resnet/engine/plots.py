"""Figures: training curves (as in ResNet Fig. 6) and confusion matrices. Agg backend, PNG files."""
from __future__ import annotations

from pathlib import Path

import numpy as np

# Figure objects rather than pyplot: no global backend to switch and no figure registry to leak
# into a user's notebook; PNGs are written through Agg all the same.
from matplotlib.figure import Figure

from ..files import atomic_write


def save_png(fig: Figure, path: Path) -> Path:
    """A PNG written aside and renamed: a run killed while drawing leaves the old curves, not a cut file."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    return Path(path)


def plot_training_curves(records: list[dict], path: Path, title: str = "") -> Path:
    """Training error (dashed) and validation error (bold) against iterations, and the losses."""
    steps = [r["step"] for r in records]
    fig = Figure(figsize=(10, 4))
    ax_err, ax_loss = fig.subplots(1, 2)
    ax_err.plot(steps, [r["train_err"] for r in records], "--", label="train error")
    val = [(r["step"], r["val_err"]) for r in records if r.get("val_err") is not None]
    if val:
        ax_err.plot(*zip(*val), "-", linewidth=2, label="validation error")
    ax_err.set(xlabel="iterations", ylabel="error (%)", title=title or "error")
    ax_err.legend()
    ax_loss.plot(steps, [r["train_loss"] for r in records], "--", label="train loss")
    val_loss = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    if val_loss:
        ax_loss.plot(*zip(*val_loss), "-", linewidth=2, label="validation loss")
    ax_loss.set(xlabel="iterations", ylabel="loss", title="loss")
    ax_loss.legend()
    fig.tight_layout()
    return save_png(fig, path)


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path) -> Path:
    """Row-normalised confusion matrix (true class down, predicted across)."""
    m = np.asarray(confusion, dtype=float)
    m = m / np.maximum(m.sum(1, keepdims=True), 1)
    size = max(4.0, 0.45 * len(classes))
    fig = Figure(figsize=(size + 1, size))
    ax = fig.subplots()
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    if len(classes) <= 30:
        ax.set_xticks(range(len(classes)), classes, rotation=90)
        ax.set_yticks(range(len(classes)), classes)
        for i in range(len(classes)):
            for j in range(len(classes)):
                if m[i, j] >= 0.01:
                    ax.text(j, i, f"{100 * m[i, j]:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if m[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return save_png(fig, path)
