"""Grids of mixes for sweeps. Each point has a stable id (for resuming) and the facts that
metrics group by (which attribute is varied, at which level, with which side weight)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import LerpError
from ..mix import Mix


@dataclass(frozen=True)
class GridPoint:
    id: str
    levels: dict
    weights: dict
    meta: dict = field(default_factory=dict)

    @property
    def mix(self) -> Mix | None:
        """The point's mix; None for the base model alone (no levels)."""
        return Mix(self.levels, self.weights) if self.levels else None


BASE = GridPoint("base", {}, {}, {"grid": "base"})  # the base model alone: the reference row of a report


def levels_between(n: int) -> list[float]:
    return [round(i / (n - 1), 6) for i in range(n)]


def single(attribute: str, n_levels: int = 11) -> list[GridPoint]:
    """The varied attribute alone (weight 1), its level over 0..1."""
    return [
        GridPoint(
            f"single-{attribute}-{lvl:g}",
            {attribute: lvl},
            {attribute: 1.0},
            {"grid": "single", "varied": attribute, "level": lvl},
        )
        for lvl in levels_between(n_levels)
    ]


def focus(
    attributes: Sequence[str],
    b_values: Sequence[float] = (0.05, 0.15, 0.2),
    n_levels: int = 11,
    others_level: float = 0.5,
) -> list[GridPoint]:
    """The paper's multi-attribute design (its "five-attribute" grid, for any number of attributes): each
    attribute in turn has the focus, its level varied with weight 1 - (n-1) b, while every other attribute
    keeps weight b at a fixed level (``others_level``)."""
    n = len(attributes)
    points = []
    for b in b_values:
        main = 1 - (n - 1) * b
        if main < 0:
            raise LerpError(f"b={b} is too large for {n} attributes (the varied weight 1-(n-1)b would be negative)")
        for varied in attributes:
            for lvl in levels_between(n_levels):
                levels = {a: (lvl if a == varied else others_level) for a in attributes}
                weights = {a: (main if a == varied else b) for a in attributes}
                points.append(
                    GridPoint(
                        f"focus-b{b:g}-{varied}-{lvl:g}",
                        levels,
                        weights,
                        {"grid": "focus", "varied": varied, "level": lvl, "b": b},
                    )
                )
    return points


def simplex(attributes: Sequence[str], steps: int = 5, level: float = 1.0) -> list[GridPoint]:
    """All weight triples on a simplex grid (multiples of 1/steps) with every level fixed."""
    if len(attributes) != 3:
        raise LerpError(f"a simplex grid takes exactly three attributes, got {len(attributes)}")
    points = []
    for i, j in itertools.product(range(steps + 1), repeat=2):
        k = steps - i - j
        if k < 0:
            continue
        w = dict(zip(attributes, (i / steps, j / steps, k / steps)))
        used = {a: x for a, x in w.items() if x > 0}
        points.append(
            GridPoint(
                "simplex-" + "-".join(f"{a}{x:g}" for a, x in w.items()),
                {a: level for a in used},
                used,
                {"grid": "simplex", **{f"w_{a}": x for a, x in w.items()}},
            )
        )
    return points


def _names(text: str, attributes: Sequence[str]) -> list[str]:
    got = list(attributes) if text in ("", "all") else [x.strip() for x in text.split(",") if x.strip()]
    for a in got:
        if a not in attributes:
            raise LerpError(f"unknown attribute {a!r} in grid; choose from: {', '.join(attributes)}")
    return got


def _single(rest: str, attributes: Sequence[str], n_levels: int) -> list[GridPoint]:
    return [p for a in _names(rest, attributes) for p in single(a, n_levels)]


def _focus(rest: str, attributes: Sequence[str], n_levels: int) -> list[GridPoint]:
    b = [0.05, 0.15, 0.2]
    if rest:
        if not rest.startswith("b="):
            raise LerpError("write the focus grid as focus or focus:b=0.05,0.15,0.2")
        try:
            b = [float(x) for x in rest[2:].split(",")]
        except ValueError:
            raise LerpError(f"bad b values in {rest!r}") from None
    return focus(list(attributes), b, n_levels)


def _simplex(rest: str, attributes: Sequence[str], n_levels: int) -> list[GridPoint]:
    attrs_text, _, steps = rest.partition(":")
    return simplex(_names(attrs_text, attributes), int(steps) if steps.isdigit() else 5)


def _base(rest: str, attributes: Sequence[str], n_levels: int) -> list[GridPoint]:
    return [BASE]


GRIDS = {"single": _single, "focus": _focus, "simplex": _simplex, "base": _base}
ALIASES = {"five": "focus"}  # the paper's name for the focus grid


def parse_grid(spec: str, attributes: Sequence[str], n_levels: int = 11) -> list[GridPoint]:
    """CLI grids: ``single:ATTR[,ATTR..]`` or ``single:all``, ``focus[:b=0.05,0.15]``, ``simplex:A,B,C[:steps]``,
    ``base`` (the base model alone)."""
    kind, _, rest = spec.partition(":")
    kind = ALIASES.get(kind, kind)
    if kind not in GRIDS:
        raise LerpError(f"unknown grid {spec!r}; use single:ATTR|all, focus[:b=...], simplex:A,B,C[:steps] or base")
    return GRIDS[kind](rest, attributes, n_levels)
