"""`resnet demo`: the papers' central finding, offline, in about five minutes on two CPU cores.

Plain and residual networks of 20 and 56 layers train with the same recipe on scikit-learn's
handwritten digits (shipped inside the package, no download), as in ResNet Fig. 6; then
`resnet eval` measures each ResNet on the digits' own test split.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ..serve.evaluate import run_eval
from .papers import degradation


def run_demo(out: str | None = None, depths: tuple[int, ...] = (20, 56), epochs: int = 20) -> dict:
    out_dir = Path(out) if out else Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    start = time.perf_counter()
    result = degradation("digits", list(depths), epochs=epochs, out=str(out_dir), recipe="digits", stream=sys.stderr)
    seconds = time.perf_counter() - start
    print(f"\nplain vs residual on handwritten digits (scikit-learn, 8x8 scaled to 32x32), {epochs} epochs each, "
          f"{seconds:.0f}s in all")
    print(f"{'network':<10}{'train err':>10}{'mean over run':>15}{'val err':>9}{'test err':>10}")
    tests = {}
    for row in result["rows"]:
        run = out_dir / "runs" / f"{row['label']}-s0"
        test = run_eval(str(run / "last.safetensors"), "digits", split="test")
        tests[row["label"]] = test["top1_err"]
        print(f"{row['label']:<10}{row['train_err'][0]:>9.2f}%{row['mean_train_err'][0]:>14.2f}%"
              f"{row['val_err'][0] if row['val_err'] else float('nan'):>8.2f}%{test['top1_err']:>9.2f}%")
    gaps, lo, hi = result["mean_gaps"], min(depths), max(depths)
    print(f"\ntraining error averaged over the run, {hi} minus {lo} layers: plain {gaps['plain']:+.2f} points, "
          f"ResNet {gaps['resnet']:+.2f} points")
    print(f"the degradation finding is {result['verdict']}: {result['verdict_reason']} (final training errors)")
    print(f"report: {out_dir / 'report.md'}  figure: {out_dir / 'degradation.png'}")
    return {**result, "test_err": tests}
