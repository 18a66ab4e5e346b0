"""Control metrics from sweep rows: control curves with 95% intervals, Spearman ρ, score range,
the entanglement matrix, and fluency by level."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

Z95 = 1.96  # two-sided 95% quantile of the standard normal


def ci95(values) -> float:
    """Half-width of the 95% interval of a mean (normal approximation); NaN for fewer than two values."""
    x = np.asarray(values, dtype=float)
    return Z95 * x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else math.nan


def fit_share(rows: pd.DataFrame) -> float:
    """Share of generations the base model finds more likely under their own prompt than under another one
    (the prompt-swap test; 0.5 for texts that ignore their prompts)."""
    return float((rows["prompt_fit"] > 0).mean()) if "prompt_fit" in rows and len(rows) else math.nan


def _varied_rows(df: pd.DataFrame, grid: str, b: float | None = None) -> pd.DataFrame:
    sel = df[df["meta_grid"] == grid]
    if b is not None and "meta_b" in sel:
        sel = sel[np.isclose(sel["meta_b"], b)]
    return sel


def control_curves(
    df: pd.DataFrame, attributes: Sequence[str], grid: str = "single", b: float | None = None
) -> pd.DataFrame:
    """Per varied attribute and level: mean own score, 95% interval (normal approx.), n, fluency."""
    sel = _varied_rows(df, grid, b)
    recs = []
    for (attr, level), g in sel.groupby(["meta_varied", "meta_level"]):
        if attr not in attributes:
            continue
        s = g[f"score_{attr}"].to_numpy(float)
        half = ci95(s)
        recs.append(
            {
                "attribute": attr,
                "level": float(level),
                "mean": s.mean(),
                "ci95": half,
                "n": len(s),
                "base_ppl_median": g["base_ppl"].median(),
                "distinct2": g["distinct2"].mean(),
                "words": g["words"].mean() if "words" in g else math.nan,
                "prompt_fit": fit_share(g),
                "heldout_ppl": g["heldout_ppl"].mean(),
            }
        )
    return pd.DataFrame(recs).sort_values(["attribute", "level"]).reset_index(drop=True) if recs else pd.DataFrame()


def _range_ci95(rows: pd.DataFrame, attr: str) -> float:
    """95% half-width of the score range, from differences paired by prompt and sample: both ends of a curve
    share each prompt's random stream, so pairing removes the prompt-to-prompt spread from the range's error."""
    levels = rows["meta_level"]
    lo, hi = rows[levels == levels.min()], rows[levels == levels.max()]
    pairs = lo.merge(hi, on=["prompt_id", "sample"], suffixes=("_lo", "_hi"))
    d = (pairs[f"score_{attr}_hi"] - pairs[f"score_{attr}_lo"]).to_numpy(float)
    return ci95(d)


def _fitted_range(rows: pd.DataFrame, attr: str) -> tuple[float, float]:
    """Least-squares slope of score on level over every level (the range a straight line through the whole
    curve gives) and its 95% half-width, with one intercept per prompt and sample so that the prompts' shared
    streams do not count as error. Where every prompt is at every level (a sweep) the slope equals the
    entanglement diagonal's; only its interval is new."""
    key = ["prompt_id", "sample"]
    x = rows["meta_level"] - rows.groupby(key)["meta_level"].transform("mean")
    y = rows[f"score_{attr}"] - rows.groupby(key)[f"score_{attr}"].transform("mean")
    sxx = float((x * x).sum())
    dof = len(rows) - rows.groupby(key).ngroups - 1
    if sxx == 0 or dof < 1:
        return math.nan, math.nan
    slope = float((x * y).sum()) / sxx
    return slope, Z95 * math.sqrt(float(((y - slope * x) ** 2).sum()) / dof / sxx)


def control_summary(
    curves: pd.DataFrame, df: pd.DataFrame | None = None, grid: str = "single", b: float | None = None
) -> dict:
    """Per attribute: Spearman ρ of mean score against level, score range (level 1 minus level 0),
    and, given the rows, ρ over individual generations (noisier), the range's 95% interval and the range
    fitted through every level (tighter where there are more than two levels)."""
    out = {}
    for attr, c in curves.groupby("attribute"):
        rho = spearmanr(c["level"], c["mean"]).statistic if len(c) > 2 else math.nan
        lo, hi = c.loc[c["level"].idxmin(), "mean"], c.loc[c["level"].idxmax(), "mean"]
        entry = {
            "spearman_rho": float(rho),
            "score_range": float(hi - lo),
            "score_at_0": float(lo),
            "score_at_1": float(hi),
        }
        if df is not None:
            rows = _varied_rows(df, grid, b)
            rows = rows[rows["meta_varied"] == attr]
            entry["spearman_rho_rows"] = float(spearmanr(rows["meta_level"], rows[f"score_{attr}"]).statistic)
            entry["range_ci95"] = float(_range_ci95(rows, attr))
            entry["fitted_range"], entry["fitted_range_ci95"] = _fitted_range(rows, attr)
        out[attr] = entry
    return out


def entanglement(
    df: pd.DataFrame, attributes: Sequence[str], grid: str = "single", b: float | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Slopes d(score_j)/d(level_i) by least squares over the rows that vary i, and the same matrix
    with each row divided by its diagonal (1 on the diagonal; |E_ij| = how much j moves per unit of i's control)."""
    sel = _varied_rows(df, grid, b)
    slopes = pd.DataFrame(np.nan, index=list(attributes), columns=list(attributes))
    for i in attributes:
        rows = sel[sel["meta_varied"] == i]
        if rows["meta_level"].nunique() < 2:
            continue
        x = rows["meta_level"].to_numpy(float)
        for j in attributes:
            y = rows[f"score_{j}"].to_numpy(float)
            slopes.loc[i, j] = np.polyfit(x, y, 1)[0]
    normalised = slopes.div(pd.Series(np.diag(slopes.to_numpy()), index=slopes.index), axis=0)
    return slopes, normalised
