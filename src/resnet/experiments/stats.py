"""Small statistics for the experiments' reports: a least-squares line with its uncertainty."""
from __future__ import annotations

import math

# Two-sided 95% quantiles of Student's t (t_{0.975}) for 1-30 degrees of freedom, from the standard
# tables; above 30, 1.96 + 2.4/df is within 0.003 of the exact value (40: 2.021, 60: 2.000, 120: 1.980).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom (a 95% interval is ± t975 · SE)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96 + 2.4 / df


def linear_fit(xs: list[float], ys: list[float]) -> dict:
    """Ordinary least squares y = intercept + slope·x over all points (each seed its own point, so the
    residuals hold the seed-to-seed spread and any curvature). Returns slope, intercept, their standard
    errors (None with fewer than 3 points: no residual degrees of freedom), the residual standard
    deviation, r2, n, the x mean and Sxx (for the error of the line at any x, see `line_se`)."""
    n = len(xs)
    if n != len(ys) or n < 2:
        raise ValueError(f"a line needs at least 2 points with x and y each, got {n} x and {len(ys)} y")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("a line needs at least two different x values (e.g. two JPEG qualities)")
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    intercept = my - slope * mx
    sse = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys))
    syy = sum((y - my) ** 2 for y in ys)
    df = n - 2
    s = math.sqrt(sse / df) if df > 0 else None
    fit = {"n": n, "df": df, "slope": slope, "intercept": intercept, "residual_sd": s, "x_mean": mx, "sxx": sxx,
           "r2": 1 - sse / syy if syy > 0 else 1.0,
           "se_slope": s / math.sqrt(sxx) if s is not None else None,
           "se_intercept": s * math.sqrt(1 / n + mx ** 2 / sxx) if s is not None else None}
    fit["t975"] = t975(df) if df > 0 else None
    return fit


def line_se(fit: dict, x: float) -> float | None:
    """Standard error of the fitted line's value at `x` (the mean response there, not a new point)."""
    if fit["residual_sd"] is None:
        return None
    return fit["residual_sd"] * math.sqrt(1 / fit["n"] + (x - fit["x_mean"]) ** 2 / fit["sxx"])
