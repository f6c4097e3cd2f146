"""The JPEG share of the gap to the papers, measured as a slope: the training images re-encoded at lower
JPEG qualities (PIL, 4:2:0 chroma like the shared files), the same short recipe trained on each, several
seeds, and a line through error against the quantiser scale, extrapolated to no quantisation."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import PIL
import torch

from ..errors import ConfigError, DataError
from ..config import TrainConfig, make_config
from ..data import load_dataset
from ..data.cifar import default_cache_dir
from ..data.jpeg import ijg_scale, reencoded_copy, source_encoding
from ..data.split import holdout_count, stratified_split
from ..files import atomic_write_text
from ..models import get_entry
from .figures import plot_quality_slope
from .runner import Experiment, RunSpec, count, format_mean_std, markdown_table, mean_std
from .stats import line_se, linear_fit

DEFAULT_QUALITIES = (75, 50, 35, 25)


def _config(data: str, epochs: int | None, recipe: str | None, overrides: list[str] | None) -> TrainConfig:
    return make_config(recipe or "cifar10_fast", [f"data.path={data}", *([f"epochs={epochs}"] if epochs else []),
                                                  *(overrides or [])])


def quality_data(data: str, source, encoding: dict, quality: int, cache_root: Path) -> tuple[str, dict]:
    """(path to train on, its encoding record) at `quality`: the data itself when its files already
    are JPEGs of that quality ("as shared"), else a re-encoded copy in the cache folder."""
    if encoding["quality"] == quality:
        return data, {"quality": quality, "subsampling": encoding["subsampling"], "as_shared": True}
    folder, record = reencoded_copy(source, quality, cache_root)
    return str(folder), {**record, "as_shared": False}


def _same_images(exp: Experiment, source, cfg: TrainConfig, quality: int) -> None:
    """A copy must load in the source's order with its labels, so that the hold-out is the same images."""
    train, val = exp.data()
    train_idx, val_idx = stratified_split(source.labels, holdout_count(cfg.data.val_size, len(source)), cfg.holdout_seed)
    if not (torch.equal(train.labels, source.labels[train_idx]) and val is not None
            and torch.equal(val.labels, source.labels[val_idx]) and list(train.classes) == list(source.classes)):
        raise DataError(f"the quality-{quality} copy does not load in the order of {cfg.data.path}'s images; "
                           "delete it from the cache folder and run again")


def jpeg_quality(data: str, qualities: list[int] | tuple[int, ...] = DEFAULT_QUALITIES, epochs: int | None = None,
                 seeds: int = 3, out: str = "experiments/jpeg-quality", model: str = "resnet20",
                 recipe: str | None = None, overrides: list[str] | None = None, stream=None, jobs: int = 1) -> dict:
    """Train `model` (default recipe cifar10_fast) at each JPEG quality, `seeds` runs each; out/q<Q>/ per
    quality, out/report.md with the table, the fit and jpeg-quality.png; out/jpeg-quality.json the numbers."""
    qualities = list(dict.fromkeys(qualities))
    if len(qualities) < 2:
        raise ConfigError(f"--qualities: give at least two JPEG qualities for a slope, got {qualities}")
    bad = [q for q in qualities if not 1 <= q <= 100]
    if bad:
        raise ConfigError(f"--qualities: JPEG qualities are 1-100, got {', '.join(map(str, bad))}")
    get_entry(model)
    cfg = _config(data, epochs, recipe, overrides)
    if cfg.data.val_size == 0:
        raise ConfigError("the JPEG slope is measured on a hold-out: data.val_size=0 leaves none")
    source = load_dataset(data, "train", cache_dir=cfg.data.cache_dir or None, skip_bad=cfg.data.skip_bad)
    encoding = source_encoding(data)
    cache_root = Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else default_cache_dir()
    points = []
    for q in qualities:
        path, record = quality_data(data, source, encoding, q, cache_root)
        qcfg = dataclasses.replace(cfg, model=model, data=dataclasses.replace(cfg.data, path=path))
        exp = Experiment("jpeg-quality", Path(out) / f"q{q}", qcfg, [RunSpec(model, s, label=f"q{q}") for s in range(seeds)],
                         stream, jobs)
        _same_images(exp, source, qcfg, q)
        exp.describe(quality=q, encoding=record, source=data)
        results = exp.run_all()
        errors = [[r["val_err"] for r in records if r.get("val_err") is not None][-1] for _, records in results]
        points.append({"quality": q, "scale": ijg_scale(q), "errors": errors, "seeds": [s.seed for s, _ in results],
                       "path": path, "encoding": record, "iterations": results[0][1][-1]["step"]})
    del source
    fit = linear_fit([p["scale"] for p in points for _ in p["errors"]], [e for p in points for e in p["errors"]])
    summary = {"source": data, "source_encoding": encoding, "points": points, "fit": fit, "model": model}
    atomic_write_text(Path(out, "jpeg-quality.json"), json.dumps(summary, indent=1))
    plot_quality_slope(points, fit, Path(out) / "jpeg-quality.png", line_se)
    _report(Path(out), data, cfg, model, encoding, points, fit)
    return {"points": points, "fit": fit, "source_encoding": encoding, "out": str(out)}


def quality_table(points: list[dict]) -> str:
    rows = []
    for p in points:
        enc, (mean, std) = p["encoding"], mean_std(p["errors"])
        rows.append([f"{p['quality']}", f"{p['scale']:.0f}", "as shared" if enc.get("as_shared") else "re-encoded",
                     f"{enc['mean_bytes']:.0f}" if "mean_bytes" in enc else "–",
                     f"{enc['psnr_db']:.2f}" if "psnr_db" in enc else "–", len(p["errors"]),
                     format_mean_std(mean, std, len(p["errors"])), ", ".join(f"s{s}: {e:.2f}" for s, e in zip(p["seeds"], p["errors"]))])
    return markdown_table(["JPEG quality", "IJG scale", "images", "bytes / image", "PSNR vs as shared (dB)", "seeds",
                           "val err (%), mean ± std", "each seed (%)"], rows)


def fit_summary(fit: dict, encoding: dict, points: list[dict]) -> list[str]:
    """The fit in words: slope, the error it implies without quantisation, the share at the source's quality."""
    lo, hi = min(p["scale"] for p in points), max(p["scale"] for p in points)
    if fit["se_slope"] is None:
        return [f"Line through {fit['n']} points (no residual degrees of freedom, so no uncertainty: use more seeds "
                f"or qualities): slope {fit['slope']:+.4f} points per unit of scale, {fit['intercept']:.2f}% at scale 0."]
    t = fit["t975"]
    a, sa = fit["intercept"], fit["se_intercept"]
    sign = "+" if fit["slope"] >= 0 else "−"
    lines = [f"Least-squares line through all {fit['n']} runs (every seed a point): validation error = "
             f"{a:.2f} {sign} {abs(fit['slope']):.4f} × scale (slope ± {fit['se_slope']:.4f} standard error, i.e. "
             f"{10 * fit['slope']:+.3f} ± {10 * fit['se_slope']:.3f} points per 10 units of scale; residual sd "
             f"{fit['residual_sd']:.2f} points; r² {fit['r2']:.2f}).",
             "",
             f"**Extrapolated** to scale 0 (no JPEG quantisation; what the line implies for lossless images): "
             f"{a:.2f}% ± {sa:.2f} (standard error; 95% interval {a - t * sa:.2f} to {a + t * sa:.2f}%, t = {t:.3f} "
             f"with {fit['df']} degrees of freedom)."]
    if encoding.get("quality"):
        s0 = ijg_scale(encoding["quality"])
        share, se = fit["slope"] * s0, fit["se_slope"] * s0
        lines += ["", f"The shared images (quality {encoding['quality']}, scale {s0:.0f}, {encoding['subsampling']} "
                      f"chroma): the line puts the JPEG share of their error at {share:.2f} ± {se:.2f} points "
                      f"(95% interval {share - t * se:.2f} to {share + t * se:.2f})."]
    twice = ("; and every re-encoded point has been through two JPEG encodings (the shared quality, then its own), "
             "so its loss is not that of one encoding at its quality" if encoding["format"] == "JPEG" else "")
    lines += ["", f"This is an extrapolation, not a measurement of lossless images: scale 0 lies outside the measured "
                  f"range ({lo:.0f}-{hi:.0f}); it assumes the error grows linearly with the quantiser step{twice}. "
                  "Training on the official lossless images (CIFAR-10's pickles) measures the same number directly."]
    return lines


def _report(out: Path, data: str, cfg: TrainConfig, model: str, encoding: dict, points: list[dict], fit: dict) -> None:
    found = (f"IJG quality {encoding['quality']}, {encoding['subsampling']} chroma" if encoding.get("quality")
             else f"{encoding['format']} (no IJG quality: every quality is re-encoded from the decoded images)")
    above = [p["quality"] for p in points if encoding.get("quality") and p["quality"] > encoding["quality"]]
    body = [f"# Validation error against JPEG quality: the JPEG share of the gap", "",
            f"Data: `{data}` ({found}, judged by the first file's quantisation tables). Each quality: the same images "
            f"re-encoded with PIL {PIL.__version__} at that quality with 4:2:0 chroma "
            "(`subsampling=2`), the same recipe and hold-out (the same images in every copy), "
            f"{model}, {count(cfg.epochs, 'epoch')} of `{cfg.schedule.name}` ({count(points[0]['iterations'], 'iteration')}), "
            f"seeds {points[0]['seeds']}. Errors are the last epoch's, on the held-out images of the same quality. "
            "IJG scale: libjpeg's quantiser scaling in % of the base tables (5000/q below 50, else 200 - 2q); the "
            "quantiser step is proportional to it. Per-run metrics: `q*/runs/*/metrics.jsonl`; numbers: "
            "`jpeg-quality.json`.", "", quality_table(points), "", *fit_summary(fit, encoding, points), ""]
    if above:
        body += [f"Qualities {above} lie above the shared files' own: re-encoding cannot restore what the first "
                 "encoding removed, so those points sit at a lower scale than their loss.", ""]
    body.append("![error against JPEG quality](jpeg-quality.png)")
    atomic_write_text(out / "report.md", "\n".join(body) + "\n")
