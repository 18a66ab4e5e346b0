"""Target control: fit a response model from sweep results (mix -> expected attribute scores) and
solve for the mix whose predicted scores hit the targets.

The model is linear in the adapter coefficients inside a logistic link, one per scored attribute j:

    E[score_j | mix] = σ(b_j + Σ_k β_jk c_k(mix))

ΔW is linear in the coefficients c, so this is the natural first-order model: along one attribute's
level it is a logistic (monotone) control curve, and the β of other attributes' adapters are the
cross-attribute (entanglement) effects. It is fitted to grid-point mean scores by weighted least
squares with a small ridge, and its held-out error is measured by k-fold cross-validation over points.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .errors import LerpError
from .mix import EXTRAPOLATE_RANGE, Mix, anchor_coefficients

FORMAT = "lerplm.calibration/1"
CALIBRATION = "calibration.json"  # default place: inside the anchor set


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def mix_features(attributes: Sequence[str], levels: Mapping[str, float], weights: Mapping[str, float]) -> np.ndarray:
    """The 2K adapter coefficients of a (levels, weights) pair whose weights already sum to 1."""
    return np.array(anchor_coefficients(attributes, levels, weights))


def point_table(df, attributes: Sequence[str]):
    """Grid-point means from sweep rows: features X (P, 2K), mean scores Y (P, J), counts n (P,). Rows of the
    base model alone are left out: the response model describes mixes, whose weights sum to 1."""
    import pandas as pd

    if "meta_grid" in df:
        df = df[df["meta_grid"] != "base"]

    level_cols = [f"level_{a}" for a in attributes if f"level_{a}" in df]
    weight_cols = [f"weight_{a}" for a in attributes if f"weight_{a}" in df]
    scores = [c for c in df.columns if c.startswith("score_")]
    g = df.groupby("point")
    first = g[level_cols + weight_cols].first()
    means = g[scores].mean()
    counts = g.size()
    X = []
    for _pid, row in first.iterrows():
        lv = {a: row[f"level_{a}"] for a in attributes if f"level_{a}" in row and not pd.isna(row[f"level_{a}"])}
        wt = {a: row[f"weight_{a}"] for a in attributes if f"weight_{a}" in row and not pd.isna(row[f"weight_{a}"])}
        total = sum(wt.values())
        X.append(mix_features(attributes, lv, {a: w / total for a, w in wt.items()}))
    return (
        np.array(X),
        means.loc[first.index].to_numpy(float),
        counts.loc[first.index].to_numpy(float),
        [s[len("score_") :] for s in scores],
    )


def _fit_one(X: np.ndarray, y: np.ndarray, n: np.ndarray, ridge: float) -> np.ndarray:
    from scipy.optimize import minimize

    Z = np.hstack([np.ones((len(X), 1)), X])
    wts = n / n.sum()

    def loss(theta):
        p = _sigmoid(Z @ theta)
        r = p - y
        reg = ridge * np.sum(theta[1:] ** 2)
        grad = Z.T @ (2 * wts * r * p * (1 - p)) + np.r_[0.0, 2 * ridge * theta[1:]]
        return float(np.sum(wts * r**2) + reg), grad

    y0 = np.clip(np.average(y, weights=wts), 1e-3, 1 - 1e-3)
    theta0 = np.r_[math.log(y0 / (1 - y0)), np.zeros(X.shape[1])]
    return minimize(loss, theta0, jac=True, method="L-BFGS-B").x


@dataclass
class ResponseModel:
    """Predicted mean score of every scored attribute for any mix of the anchor set's attributes."""

    attributes: list[str]  # the anchor set's attributes (feature order)
    scored: list[str]  # attributes with a scorer
    theta: np.ndarray  # (J, 1 + 2K)
    cv_mae: dict[str, float]
    n_points: int

    @classmethod
    def fit(cls, df, attributes: Sequence[str], ridge: float = 1e-6, folds: int = 5, seed: int = 0) -> ResponseModel:
        X, Y, n, scored = point_table(df, attributes)
        if len(X) < 4:
            raise LerpError(f"calibration needs at least 4 grid points, the sweep has {len(X)}")
        theta = np.stack([_fit_one(X, Y[:, j], n, ridge) for j in range(len(scored))])
        rng = np.random.default_rng(seed)
        fold = rng.permutation(len(X)) % min(folds, len(X))
        errs = np.zeros_like(Y)
        for f in range(fold.max() + 1):
            tr, te = fold != f, fold == f
            for j in range(len(scored)):
                th = _fit_one(X[tr], Y[tr, j], n[tr], ridge)
                errs[te, j] = np.abs(_sigmoid(np.hstack([np.ones((te.sum(), 1)), X[te]]) @ th) - Y[te, j])
        cv = {s: float(errs[:, j].mean()) for j, s in enumerate(scored)}
        return cls(list(attributes), scored, theta, cv, len(X))

    def check_scored(self, names) -> None:
        """A clear error for an attribute this calibration has no scores for."""
        for a in names:
            if a not in self.scored:
                raise LerpError(f"no calibrated scorer for {a!r}; calibrated: {', '.join(self.scored)}")

    def predict(self, levels: Mapping[str, float], weights: Mapping[str, float]) -> dict[str, float]:
        x = np.r_[1.0, mix_features(self.attributes, levels, weights)]
        return {s: float(_sigmoid(self.theta[j] @ x)) for j, s in enumerate(self.scored)}

    def predict_mix(self, mix: Mix, extrapolate: bool = False) -> dict[str, float]:
        return self.predict(*mix.resolve(self.attributes, extrapolate))

    def shifted(self, offsets: Mapping[str, float]) -> ResponseModel:
        """The same model with each named attribute's logit moved by its offset."""
        self.check_scored(offsets)
        theta = self.theta.copy()
        for a, d in offsets.items():
            theta[self.scored.index(a), 0] += d
        return replace(self, theta=theta)

    def save(self, path: str | Path, meta: dict | None = None) -> None:
        Path(path).write_text(
            json.dumps(
                {
                    "format": FORMAT,
                    "attributes": self.attributes,
                    "scored": self.scored,
                    "theta": self.theta.tolist(),
                    "cv_mae": self.cv_mae,
                    "n_points": self.n_points,
                    **(meta or {}),
                },
                indent=2,
            )
        )

    @classmethod
    def load_for(cls, anchors, path: str | Path | None = None) -> ResponseModel:
        """An anchor set's calibration (default: its calibration.json), checked to be fitted for its attributes."""
        model = cls.load(path or Path(anchors.root) / CALIBRATION)
        if list(model.attributes) != list(anchors.names):
            raise LerpError(
                f"the calibration was fitted for attributes {model.attributes}, the anchors have {list(anchors.names)}"
            )
        return model

    @classmethod
    def load(cls, path: str | Path) -> ResponseModel:
        path = Path(path)
        if not path.is_file():
            raise LerpError(f"no calibration at {path} (make one with 'lerplm calibrate RUN_DIR')")
        d = json.loads(path.read_text())
        if d.get("format") != FORMAT:
            raise LerpError(f"{path} is not a lerplm calibration file")
        return cls(d["attributes"], d["scored"], np.array(d["theta"]), d["cv_mae"], d["n_points"])


@dataclass
class Solution:
    mix: Mix
    predicted: dict[str, float]
    targets: dict[str, float]
    warnings: list[str]

    @property
    def max_error(self) -> float:
        return max(abs(self.predicted[a] - t) for a, t in self.targets.items())


def solve(
    model: ResponseModel,
    targets: Mapping[str, float],
    free_weights: bool = False,
    fixed: Mapping[str, float] | None = None,
    extrapolate: bool = False,
    tolerance: float = 0.02,
) -> Solution:
    """Levels (and weights, if ``free_weights``) for the target attributes that minimise the squared
    error between predicted and target scores. ``fixed`` attributes join the mix at fixed levels.
    A target the model cannot reach within ``tolerance`` gives a warning naming the reachable range."""
    from scipy.optimize import minimize

    model.check_scored(targets)
    for a, t in targets.items():
        if not (math.isfinite(t) and 0 <= t <= 1):
            raise LerpError(f"target score of {a!r} is {t}; scores lie in [0, 1]")
    fixed = dict(fixed or {})
    overlap = set(fixed) & set(targets)
    if overlap:
        raise LerpError(f"{sorted(overlap)} cannot be both a target and fixed")
    names = list(targets) + [a for a in fixed]
    lo, hi = EXTRAPOLATE_RANGE if extrapolate else (0.0, 1.0)
    nt = len(targets)

    def unpack(p):
        levels = dict(zip(targets, p[:nt])) | fixed
        raw = np.exp(p[nt:]) if free_weights else np.ones(len(names))
        weights = dict(zip(names, raw / raw.sum()))
        return levels, weights

    def loss(p):
        pred = model.predict(*unpack(p))
        return sum((pred[a] - t) ** 2 for a, t in targets.items())

    bounds = [(lo, hi)] * nt + ([(-3.0, 3.0)] * len(names) if free_weights else [])
    best = None
    for start in (0.5, 0.1, 0.9):
        p0 = np.r_[np.full(nt, start), np.zeros(len(names) if free_weights else 0)]
        res = minimize(loss, p0, method="L-BFGS-B", bounds=bounds)
        if best is None or res.fun < best.fun:
            best = res
    levels, weights = unpack(best.x)
    mix = Mix({a: round(float(v), 4) for a, v in levels.items()}, {a: round(float(v), 4) for a, v in weights.items()})
    predicted = model.predict(*mix.resolve(model.attributes, extrapolate))
    warnings = []
    for a, t in targets.items():
        if abs(predicted[a] - t) > tolerance:
            reach = [model.predict(dict(levels) | {a: x}, weights)[a] for x in np.linspace(lo, hi, 41)]
            warnings.append(
                f"target {a}={t:g} is out of reach (predicted {predicted[a]:.2f}); with this mix {a} can reach "
                f"[{min(reach):.2f}, {max(reach):.2f}]" + ("" if free_weights else "; letting weights move may help")
            )
    return Solution(mix, predicted, dict(targets), warnings)


def _logit(p: float) -> float:
    p = min(max(p, 0.01), 0.99)
    return math.log(p / (1 - p))


def refine(
    model: ResponseModel, solution: Solution, achieved: Mapping[str, float], **solve_kwargs
) -> tuple[Solution, ResponseModel]:
    """Closed loop: after generating at ``solution.mix`` (solved with ``model``) and measuring the targeted
    attributes' mean scores, shift each one's curve by the logit gap between measured and predicted, so
    that the model passes through the measurement, and solve again. This removes an offset of the response
    at the operating point (other prompts, sampling); slopes stay the calibration's. Returns the new
    solution and the shifted model (the one to refine with next)."""
    missing = [a for a in solution.targets if a not in achieved]
    if missing:
        raise LerpError(f"no measured score for targeted {missing}")
    shifted = model.shifted({a: _logit(achieved[a]) - _logit(solution.predicted[a]) for a in solution.targets})
    return solve(shifted, solution.targets, **solve_kwargs), shifted


def solve_target(
    anchors: str | Path,
    target: str,
    calibration: str | Path | None = None,
    free_weights: bool = False,
    extrapolate: bool = False,
) -> tuple[Solution, ResponseModel]:
    """The mix an anchor set's calibration predicts for target scores written as "formality=0.8,sentiment=0.3"."""
    from .anchors import AnchorSet
    from .mix import parse_assignments

    model = ResponseModel.load_for(AnchorSet.load(anchors), calibration)
    targets = parse_assignments(target, "target")
    model.check_scored(targets)
    return solve(model, targets, free_weights=free_weights, extrapolate=extrapolate), model
