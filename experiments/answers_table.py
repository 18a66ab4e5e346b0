"""Compare anchors by how they answer: one row per sweep run (made with `--grid base` and single grids) and
attribute, words and prompt fit at levels 0 / 0.5 / 1 and over all levels against the base model's, the control range
and fluency. Prints a Markdown table.

python experiments/answers_table.py sentiment runs/answers_base runs/answers_join
python experiments/answers_table.py all runs/answers     # a row per attribute the run varies
python experiments/answers_table.py --repetition all RUNS  # and distinct-2 and fluency at levels 0 / 0.5 / 1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SHOWN = (0.0, 0.5, 1.0)  # the levels whose words and fit are shown one by one


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("attribute", help="an attribute, or all")
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--repetition", action="store_true", help="add distinct-2 and fluency at levels 0 / 0.5 / 1")
    args = ap.parse_args()
    head = (
        "| run | words at levels 0 / 0.5 / 1 (base) | words / base, all levels | prompt fit at 0 / 0.5 / 1 (base) "
        "| fit / base, lowest | range ± 95% | ρ, levels | fitted range ± 95% | held-out ppl over levels (base) |"
    )
    if args.repetition:
        head += " distinct-2 at 0 / 0.5 / 1 (base) | median ppl under the base model at 0 / 0.5 / 1 (base) |"
    print(head)
    print("|---" * head.count(" | ") + "|---|")
    for run in args.runs:
        s = json.loads((run / "summary.json").read_text())
        for attribute in s["single"]["control"] if args.attribute == "all" else [args.attribute]:
            print(row(run, attribute, s, args.attribute == "all", args.repetition))


def row(run: Path, attribute: str, s: dict, named: bool, repetition: bool = False) -> str:
    """One table row: the run's anchors of one attribute against the base model."""
    curves = [c for c in s["single"]["curves"] if c["attribute"] == attribute]
    shown = [c for c in curves if c["level"] in SHOWN]
    e, base = s["single"]["control"][attribute], s["base"]
    words = " / ".join(f"{c['words']:.1f}" for c in shown)
    ratios = [c["words"] / base["words"] for c in curves]
    fit = " / ".join(f"{c['prompt_fit']:.2f}" for c in shown)
    held = [c["heldout_ppl"] for c in curves]
    cells = [
        f"`{run}` {attribute}" if named else f"`{run}`",
        f"{words} ({base['words']:.1f})",
        f"{min(ratios):.2f}-{max(ratios):.2f}",
        f"{fit} ({base['prompt_fit']:.2f})",
        f"{min(c['prompt_fit'] for c in curves) / base['prompt_fit']:.2f}",
        f"{e['score_range']:.3f} ± {e['range_ci95']:.3f}",
        f"{e['spearman_rho']:.2f}, {len(curves)}",
        f"{e['fitted_range']:.3f} ± {e['fitted_range_ci95']:.3f}",
        f"{min(held):.0f}-{max(held):.0f} ({base['heldout_ppl']:.0f})",
    ]
    if repetition:
        for key, form in (("distinct2", ".2f"), ("base_ppl_median", ".1f")):
            cells.append(" / ".join(f"{c[key]:{form}}" for c in shown) + f" ({base[key]:{form}})")
    return "| " + " | ".join(cells) + " |"


if __name__ == "__main__":
    main()
