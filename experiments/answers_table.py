"""Compare anchors by how they answer: one row per sweep run (made with `--grid base` and single grids) and
attribute, words and prompt fit at every level against the base model's, the control range and fluency. Prints a
Markdown table.

python experiments/answers_table.py sentiment runs/answers_base runs/answers_join
python experiments/answers_table.py all runs/answers     # a row per attribute the run varies
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("attribute", help="an attribute, or all")
    ap.add_argument("runs", type=Path, nargs="+")
    args = ap.parse_args()
    print(
        "| run | words at levels 0 / 0.5 / 1 (base) | words / base | prompt fit at 0 / 0.5 / 1 (base) "
        "| fit / base, lowest | range ± 95% | held-out ppl over levels (base) |"
    )
    print("|---|---|---|---|---|---|---|")
    for run in args.runs:
        s = json.loads((run / "summary.json").read_text())
        for attribute in s["single"]["control"] if args.attribute == "all" else [args.attribute]:
            print(row(run, attribute, s, args.attribute == "all"))


def row(run: Path, attribute: str, s: dict, named: bool) -> str:
    """One table row: the run's anchors of one attribute against the base model."""
    curves = [c for c in s["single"]["curves"] if c["attribute"] == attribute]
    e, base = s["single"]["control"][attribute], s["base"]
    words = " / ".join(f"{c['words']:.1f}" for c in curves)
    ratio = " / ".join(f"{c['words'] / base['words']:.2f}" for c in curves)
    fit = " / ".join(f"{c['prompt_fit']:.2f}" for c in curves)
    held = [c["heldout_ppl"] for c in curves]
    cells = [
        f"`{run}` {attribute}" if named else f"`{run}`",
        f"{words} ({base['words']:.1f})",
        ratio,
        f"{fit} ({base['prompt_fit']:.2f})",
        f"{min(c['prompt_fit'] for c in curves) / base['prompt_fit']:.2f}",
        f"{e['score_range']:.3f} ± {e['range_ci95']:.3f}",
        f"{min(held):.0f}-{max(held):.0f} ({base['heldout_ppl']:.0f})",
    ]
    return "| " + " | ".join(cells) + " |"


if __name__ == "__main__":
    main()
