"""Pool the ranges of single-attribute sweeps run on disjoint prompt sets into one estimate.

Runs on different prompts are independent, so their ranges (two-end and fitted) combine by inverse-variance
weighting (each 95% half-width / 1.96 is a standard error); prints each run's estimate and the pooled one per
attribute.

python experiments/pool_ranges.py runs/mixed360 runs/mixed360_b
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from lerplm.evaluate.metrics import Z95


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+")
    args = ap.parse_args()
    controls = [json.loads((r / "summary.json").read_text())["single"]["control"] for r in args.runs]
    shared = [a for a in controls[0] if all(a in c for c in controls[1:])]
    kinds = (
        ("score_range", "range_ci95", "range (level 1 - level 0)"),
        ("fitted_range", "fitted_range_ci95", "fitted range"),
    )
    for key, ci, label in kinds:
        print("\n| attribute | " + " | ".join(f"{r}: {label} ± 95%" for r in args.runs) + " | pooled ± 95% |")
        print("|---|" + "---|" * (len(args.runs) + 1))
        for a in shared:
            est = [(c[a][key], c[a][ci] / Z95) for c in controls]
            w = [1 / se**2 for _, se in est]
            pooled = sum(wi * x for wi, (x, _) in zip(w, est)) / sum(w)
            cells = [f"{x:.3f} ± {Z95 * se:.3f}" for x, se in est]
            print(f"| {a} | " + " | ".join(cells) + f" | {pooled:.3f} ± {Z95 / math.sqrt(sum(w)):.3f} |")


if __name__ == "__main__":
    main()
