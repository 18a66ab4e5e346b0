"""The mix: levels and weights per attribute, turned into one coefficient per anchor adapter.

Pure Python, no torch. For attribute i with level l_i and normalised weight w_i the negative
(first) endpoint gets w_i * (1 - l_i) and the positive (second) endpoint w_i * l_i, so that
ΔW = Σ_i w_i (l_i ΔW_i+ + (1 - l_i) ΔW_i-). The paper's code calls levels "alpha" and weights
"lambda"; both spellings are accepted on input.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import LerpError

EXTRAPOLATE_RANGE = (-1.0, 2.0)  # the paper found levels in about this range still stable
LEVEL_KEYS = ("levels", "level", "alphas", "alpha")
WEIGHT_KEYS = ("weights", "weight", "lambdas", "lambda")


def parse_assignments(text: str, what: str = "mix") -> dict[str, float]:
    """Parse ``"a=0.9,b=0.3"`` into ``{"a": 0.9, "b": 0.3}``."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise LerpError(f"bad {what} entry {part!r}: write NAME=NUMBER, e.g. sentiment=0.8")
        if name in out:
            raise LerpError(f"{what} names {name!r} twice")
        try:
            out[name] = float(value)
        except ValueError:
            raise LerpError(f"bad {what} value for {name!r}: {value.strip()!r} is not a number") from None
    if not out:
        raise LerpError(f"empty {what}: write NAME=NUMBER[,NAME=NUMBER...], e.g. sentiment=0.8")
    return out


@dataclass(frozen=True)
class Mix:
    """Levels for some attributes; weights default to equal over the attributes that have a level."""

    levels: Mapping[str, float]
    weights: Mapping[str, float] | None = None

    @classmethod
    def from_spec(cls, levels: str, weights: str | None = None) -> Mix:
        """From the CLI syntax: ``--mix "sentiment=0.9,formality=0.3" --weights "sentiment=2"``."""
        return cls(parse_assignments(levels, "mix"), parse_assignments(weights, "weights") if weights else None)

    @classmethod
    def from_dict(cls, d: Mapping) -> Mix:
        """From ``{"levels": {...}, "weights": {...}}`` (or alpha/lambda), or a flat ``{name: level}``."""
        if isinstance(d, Mix):
            return d
        if not isinstance(d, Mapping):
            raise LerpError(f"a mix must be a mapping of attribute levels, got {type(d).__name__}")
        level_key = next((k for k in LEVEL_KEYS if k in d), None)
        weight_key = next((k for k in WEIGHT_KEYS if k in d), None)
        if level_key is None:
            if weight_key is not None:
                raise LerpError("a mix with weights also needs 'levels'")
            return cls(_numbers(d, "level"))
        extra = set(d) - {level_key, weight_key}
        if extra:
            raise LerpError(f"unknown mix field(s) {sorted(extra)}; use 'levels' and 'weights'")
        weights = d.get(weight_key) if weight_key else None
        return cls(_numbers(d[level_key], "level"), _numbers(weights, "weight") if weights is not None else None)

    def resolve(self, attributes: Sequence[str], extrapolate: bool = False) -> tuple[dict, dict]:
        """Validate against the anchor set's attributes; return full (levels, normalised weights)."""
        choices = ", ".join(attributes)
        for name in list(self.levels) + list(self.weights or {}):
            if name not in attributes:
                raise LerpError(f"unknown attribute {name!r}; choose from: {choices}")
        if not self.levels:
            raise LerpError(f"the mix names no attribute; choose from: {choices}")
        lo, hi = EXTRAPOLATE_RANGE if extrapolate else (0.0, 1.0)
        for name, level in self.levels.items():
            if not math.isfinite(level):
                raise LerpError(f"level of {name!r} is {level}; it must be a finite number")
            if not lo <= level <= hi:
                hint = "" if extrapolate else " (pass --extrapolate to allow [-1, 2])"
                raise LerpError(f"level of {name!r} is {level}; it must lie in [{lo:g}, {hi:g}]{hint}")
        raw = dict(self.weights) if self.weights is not None else {n: 1.0 for n in self.levels}
        for name, w in raw.items():
            if not math.isfinite(w) or w < 0:
                raise LerpError(f"weight of {name!r} is {w}; weights must be finite and >= 0")
            if name not in self.levels:
                raise LerpError(f"attribute {name!r} has a weight but no level; give it a level too")
        for name in self.levels:
            if name not in raw:
                raise LerpError(f"attribute {name!r} has a level but no weight; give it a weight or drop it")
        total = sum(raw.values())
        if total <= 0:
            raise LerpError("all weights are zero; at least one attribute needs a positive weight")
        levels = {n: float(self.levels.get(n, 0.5)) for n in attributes}
        weights = {n: raw.get(n, 0.0) / total for n in attributes}
        return levels, weights

    def coefficients(self, attributes: Sequence[str], extrapolate: bool = False) -> list[float]:
        """One coefficient per anchor, ordered (attr0 negative, attr0 positive, attr1 negative, ...)."""
        return anchor_coefficients(attributes, *self.resolve(attributes, extrapolate))

    def to_json(self, attributes: Sequence[str], extrapolate: bool = False) -> dict:
        """The named attributes' levels and normalised weights."""
        levels, weights = self.resolve(attributes, extrapolate)
        return {"levels": {k: levels[k] for k in self.levels}, "weights": {k: weights[k] for k in self.levels}}

    def slug(self) -> str:
        """A file-name-safe name, e.g. ``sentiment-0.9_formality-0.3``."""
        parts = [f"{k}-{v:g}" for k, v in self.levels.items()]
        if self.weights is not None:
            parts += [f"w{k}-{v:g}" for k, v in self.weights.items()]
        return "_".join(parts)

    def describe(self) -> str:
        levels = ",".join(f"{k}={v:g}" for k, v in self.levels.items())
        return (
            levels
            if self.weights is None
            else f"{levels} weights " + ",".join(f"{k}={v:g}" for k, v in self.weights.items())
        )


def anchor_coefficients(
    attributes: Sequence[str], levels: Mapping[str, float], weights: Mapping[str, float]
) -> list[float]:
    """w_i (1 - l_i) and w_i l_i per attribute (negative anchor first) of resolved levels and weights; an
    attribute without weight contributes zeros."""
    coeffs: list[float] = []
    for name in attributes:
        w, level = weights.get(name, 0.0), levels.get(name, 0.5)
        coeffs += [w * (1.0 - level), w * level]
    return coeffs


def _numbers(d, what: str) -> dict[str, float]:
    if not isinstance(d, Mapping):
        raise LerpError(f"{what}s must be a mapping of attribute name to number")
    out = {}
    for k, v in d.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise LerpError(f"{what} of {k!r} must be a number, got {v!r}")
        out[str(k)] = float(v)
    return out


INTERPOLATIONS = ("linear", "step")


@dataclass(frozen=True)
class Schedule:
    """A mix that varies over the generated tokens: (token index, mix) points, with linear or step
    interpolation between them (the first mix holds before the first point, the last after it).

    Linear interpolation is of the adapter coefficients, so every token's model lies on the segment
    between two points' models. Under ``step`` the model changes at each point, and the engine
    re-encodes the text so far under the new mix: each segment is what its mix's model would write
    given the previous segments as the prompt."""

    points: tuple[tuple[int, Mix], ...]
    interpolate: str = "linear"

    def __post_init__(self) -> None:
        if not self.points:
            raise LerpError("a schedule needs at least one point")
        if self.interpolate not in INTERPOLATIONS:
            raise LerpError(f"unknown interpolation {self.interpolate!r}; choose from: {', '.join(INTERPOLATIONS)}")
        at = [i for i, _ in self.points]
        if any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in at):
            raise LerpError(f"schedule token indices must be integers >= 0, got {at}")
        if any(b <= a for a, b in zip(at, at[1:])):
            raise LerpError(f"schedule token indices must increase, got {at}")

    @classmethod
    def from_spec(cls, text: str, interpolate: str = "linear") -> Schedule:
        """From ``"0:sentiment=0; 64:sentiment=1"`` (TOKEN:LEVELS points separated by ';')."""
        points = []
        for part in filter(None, (p.strip() for p in text.split(";"))):
            index, sep, levels = part.partition(":")
            if not sep or not index.strip().isdigit():
                raise LerpError(f"bad schedule point {part!r}: write TOKEN:LEVELS, e.g. 0:sentiment=0; 64:sentiment=1")
            points.append((int(index), Mix.from_spec(levels)))
        return cls(tuple(points), interpolate)

    @classmethod
    def from_dict(cls, d: Mapping) -> Schedule:
        """From ``{"schedule": [{"at": 0, "levels": {...}}, ...], "interpolate": "linear"}``."""
        extra = set(d) - {"schedule", "interpolate"}
        if extra:
            raise LerpError(f"unknown schedule field(s) {sorted(extra)}; use 'schedule' and 'interpolate'")
        points = d["schedule"]
        if not isinstance(points, Sequence) or isinstance(points, str):
            raise LerpError('\'schedule\' must be a list of points like {"at": 0, "levels": {...}}')
        parsed = []
        for p in points:
            if not isinstance(p, Mapping) or "at" not in p:
                raise LerpError("each schedule point needs 'at' (a token index) and 'levels'")
            parsed.append((p["at"], Mix.from_dict({k: v for k, v in p.items() if k != "at"})))
        return cls(tuple(parsed), d.get("interpolate", "linear"))

    def coefficient_fn(self, attributes: Sequence[str], extrapolate: bool = False):
        """index -> coefficients (validated once, here)."""
        at = [i for i, _ in self.points]
        vecs = [m.coefficients(attributes, extrapolate) for _, m in self.points]

        def at_index(i: int) -> list[float]:
            k = sum(1 for a in at if a <= i) - 1  # the last point at or before i
            if k < 0:
                return vecs[0]
            if self.interpolate == "step" or k == len(at) - 1:
                return vecs[k]
            t = (i - at[k]) / (at[k + 1] - at[k])
            return [(1 - t) * a + t * b for a, b in zip(vecs[k], vecs[k + 1])]

        return at_index

    def describe(self) -> str:
        return f"{self.interpolate}: " + "; ".join(f"{i}:{m.describe()}" for i, m in self.points)

    def to_json(self, attributes: Sequence[str], extrapolate: bool = False) -> dict:
        return {
            "interpolate": self.interpolate,
            "schedule": [{"at": i, **m.to_json(attributes, extrapolate)} for i, m in self.points],
        }
