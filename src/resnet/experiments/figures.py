"""The experiments' plots (PNG, Agg backend)."""
from __future__ import annotations

from pathlib import Path

# Figure objects rather than pyplot: no global backend to switch and no figure registry to leak
# into a user's notebook; PNGs are written through Agg all the same.
from matplotlib.figure import Figure

from ..engine.plots import save_png


def plot_degradation(curves: dict[str, dict[int, list[dict]]], path: Path) -> Path:
    """ResNet Fig. 6: training error (dashed) and validation error (bold) vs iterations; plain left, residual right.

    `curves[family][depth]` = per-epoch records (seed 0) of that network.
    """
    families = [f for f in ("plain", "resnet") if f in curves]
    fig = Figure(figsize=(6 * len(families), 4.5))
    axes = fig.subplots(1, len(families), sharey=True, squeeze=False)
    for ax, family in zip(axes[0], families):
        for i, (depth, records) in enumerate(sorted(curves[family].items())):
            color = f"C{i}"
            steps = [r["step"] for r in records]
            val = [(r["step"], r["val_err"]) for r in records if r.get("val_err") is not None]
            ax.plot(steps, [r["train_err"] for r in records], "--", color=color, linewidth=1,
                    label=None if val else f"{family}-{depth}")  # no validation: the legend names the training curve
            if val:
                ax.plot(*zip(*val), "-", color=color, linewidth=2.2, label=f"{family}-{depth}")
        ax.set(title=f"{'plain' if family == 'plain' else 'ResNet'}: dashed = training, bold = validation",
               xlabel="iterations", ylabel="error (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return save_png(fig, path)


def plot_layer_values(series: dict[str, list[float]], path: Path, ylabel: str, title: str, sort: bool = True,
                      log: bool = False) -> Path:
    """One value per layer for several networks: by layer index (top) and sorted descending (bottom), as Fig. 7."""
    rows = 2 if sort else 1
    fig = Figure(figsize=(8, 3.2 * rows))
    axes = fig.subplots(rows, 1, squeeze=False)
    for i, (label, values) in enumerate(series.items()):
        axes[0][0].plot(range(1, len(values) + 1), values, "-", color=f"C{i}", label=label)
        if sort:
            axes[1][0].plot(range(1, len(values) + 1), sorted(values, reverse=True), "-", color=f"C{i}", label=label)
    axes[0][0].set(xlabel="layer index (original)", ylabel=ylabel, title=title)
    if sort:
        axes[1][0].set(xlabel="layer index (sorted by magnitude)", ylabel=ylabel)
    for ax in axes[:, 0]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if log:
            ax.set_yscale("log")
    fig.tight_layout()
    return save_png(fig, path)


def plot_bars(labels: list[str], values: list[float], errors: list[float], path: Path, ylabel: str, title: str) -> Path:
    fig = Figure(figsize=(max(5, 0.9 * len(labels) + 2), 4))
    ax = fig.subplots()
    ax.bar(range(len(labels)), values, yerr=errors, color=[f"C{i}" for i in range(len(labels))], capsize=4)
    ax.set_xticks(range(len(labels)), labels, rotation=20)
    ax.set(ylabel=ylabel, title=title)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return save_png(fig, path)


def plot_quality_slope(points: list[dict], fit: dict, path: Path, line_se) -> Path:
    """Validation error against the JPEG quantiser scale: every seed (dots), mean ± std (bars), the fitted
    line (solid over the measured range, dashed where it is extrapolated to scale 0) and its 95% band.

    `points`: {'scale', 'quality', 'errors'} per quality; `line_se(fit, x)`: the line's standard error."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for p in points:
        ax.plot([p["scale"]] * len(p["errors"]), p["errors"], "o", color="C0", alpha=0.35, markersize=4)
        mean = sum(p["errors"]) / len(p["errors"])
        spread = (sum((e - mean) ** 2 for e in p["errors"]) / (len(p["errors"]) - 1)) ** 0.5 if len(p["errors"]) > 1 else 0
        ax.errorbar([p["scale"]], [mean], yerr=[spread], fmt="s", color="C0", capsize=4)
    lo, hi = min(p["scale"] for p in points), max(p["scale"] for p in points)
    grid = [hi * i / 100 for i in range(101)]
    line = [fit["intercept"] + fit["slope"] * x for x in grid]
    inside = [(x, y) for x, y in zip(grid, line) if x >= lo]
    ax.plot(*zip(*inside), "-", color="C1", label=f"fit: {fit['slope']:+.4f} points per unit of scale")
    ax.plot([0, lo], [fit["intercept"], fit["intercept"] + fit["slope"] * lo], "--", color="C1",
            label="extrapolation (not measured)")
    if fit.get("t975") is not None:
        band = [fit["t975"] * line_se(fit, x) for x in grid]
        ax.fill_between(grid, [y - b for y, b in zip(line, band)], [y + b for y, b in zip(line, band)],
                        color="C1", alpha=0.15, label="95% band of the line")
        ax.errorbar([0], [fit["intercept"]], yerr=[band[0]], fmt="D", color="C3", capsize=4,
                    label=f"extrapolated to scale 0 (no quantisation): {fit['intercept']:.2f}%")
    ax.set(xlabel="IJG quantiser scale (% of the base tables; quality 75 = 50, 50 = 100, 25 = 200)",
           ylabel="validation error (%)", title="error against JPEG quality")
    top = ax.secondary_xaxis("top")
    top.set_xticks([p["scale"] for p in points], [f"q{p['quality']}" for p in points])
    ax.set_xlim(left=-5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)
