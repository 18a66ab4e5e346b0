"""Does control inside a multi-attribute mix shrink in proportion to the varied attribute's weight?

Prints, per attribute and b, the measured range of the focus grid (weight 1 - (n-1) b on the varied
attribute, b on each other at level 0.5) beside (1 - (n-1) b) x the single-attribute range, and the share of
generations that finish their sentence (the humor scorer reads final punctuation as humor).

python experiments/focus_vs_single.py runs/single runs/focus
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lerplm.evaluate.sweep import read_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("single", type=Path)
    ap.add_argument("focus", type=Path)
    args = ap.parse_args()
    single = json.loads((args.single / "summary.json").read_text())["single"]["control"]
    focus = json.loads((args.focus / "summary.json").read_text())
    bs = sorted(float(k[len("focus_b") :]) for k in focus if k.startswith("focus_b"))
    others = len(single) - 1  # the varied attribute's weight is 1 - others x b
    print(
        "| attribute | single: range | "
        + " | ".join(f"b={b:g} (weight {1 - others * b:.1f}): range ± 95% / predicted" for b in bs)
        + " |"
    )
    print("|---|---|" + "---|" * len(bs))
    for a, s in single.items():
        cells = []
        for b in bs:
            e = focus[f"focus_b{b:g}"]["control"][a]
            cells.append(f"{e['score_range']:.3f} ± {e['range_ci95']:.3f} / {(1 - others * b) * s['score_range']:.3f}")
        print(f"| {a} | {s['score_range']:.3f} | " + " | ".join(cells) + " |")
    df, _ = read_run(args.focus)
    df["finished"] = df["text"].astype(str).str.strip().str.contains(r'[.!?"]$')
    humor = (
        df[df["meta_varied"] == "humor"]
        .groupby(["meta_b", "meta_level"])[["finished", "score_humor"]]
        .mean()
        .unstack(0)
    )
    print("\nhumor varied: share of finished generations and mean humor score, by level (columns: b)\n")
    print(humor.round(2).to_string())


if __name__ == "__main__":
    main()
