"""Control under each generation step: one row per sweep run (made by experiments/quantized.sh) and attribute:
the mean score at level 0 and 1, the range ± 95%, the range's difference from the first run's paired by prompt
(the same prompts and random streams) ± 95%, words and fluency at the levels against the base model's. Prints a
Markdown table.

python experiments/quantized_table.py docs/results/quantized_fp32 docs/results/quantized_int8
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from lerplm.evaluate.metrics import ci95


def per_prompt_range(run: Path, attr: str) -> pd.Series:
    """Each prompt's score at the attribute's level 1 minus its score at level 0."""
    g = pd.read_csv(run / "generations.csv.gz")
    g = g[g["point"].str.startswith(f"single-{attr}-")]
    scores = g.pivot_table(index="prompt", columns=f"level_{attr}", values=f"score_{attr}")
    return scores[scores.columns.max()] - scores[scores.columns.min()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+")
    args = ap.parse_args()
    print(
        "| step | attribute | score at level 0 / 1 (base) | range ± 95% | range - first run's, paired ± 95% "
        "| words over levels (base) | fluency ppl over levels (base) |"
    )
    print("|---|---|---|---|---|---|---|")
    for run in args.runs:
        s = json.loads((run / "summary.json").read_text())
        step = s["settings"].get("quantize", "fp32")
        base = s["base"]
        for attr, e in s["single"]["control"].items():
            curves = [c for c in s["single"]["curves"] if c["attribute"] == attr]
            diff = per_prompt_range(run, attr) - per_prompt_range(args.runs[0], attr)
            words = [c["words"] for c in curves]
            ppl = [c["base_ppl_median"] for c in curves]
            cells = [
                step,
                attr,
                f"{e['score_at_0']:.3f} / {e['score_at_1']:.3f} ({base[f'score_{attr}']:.3f})",
                f"{e['score_range']:.3f} ± {e['range_ci95']:.3f}",
                f"{diff.mean():+.3f} ± {ci95(diff):.3f}" if run != args.runs[0] else "-",
                f"{min(words):.1f}-{max(words):.1f} ({base['words']:.1f})",
                f"{min(ppl):.1f}-{max(ppl):.1f} ({base['base_ppl_median']:.1f})",
            ]
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
