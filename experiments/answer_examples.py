"""Show what the anchors write: for a few held-out prompts, the base model's answer beside each attribute's
answers at its levels, read from the generations that sweeps commit (`generations.csv.gz`, made with
`--grid base` and single grids). Prints Markdown.

python experiments/answer_examples.py --prompts 3 docs/results/answers               # every attribute of one run
python experiments/answer_examples.py sentiment=docs/results/answers_replay_quarter \
    formality=docs/results/answers_formality_replay_quarter                          # an attribute per run
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def cell(text: str) -> str:
    """One answer as a Markdown table cell: its lines kept as line breaks."""
    return str(text).strip().replace("|", "\\|").replace("\n", "<br>")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="RUN_DIR (all its attributes) or ATTRIBUTE=RUN_DIR")
    ap.add_argument("--prompts", type=int, default=3, help="the first N prompts the runs share")
    ap.add_argument("--levels", type=float, nargs="+", default=[0, 0.5, 1], help="the levels shown")
    args = ap.parse_args()
    runs = {}
    for spec in args.runs:
        attribute, _, run = spec.rpartition("=")
        frame = pd.read_csv(Path(run) / "generations.csv.gz")
        frame = frame[frame["sample"] == 0]
        for a in [attribute] if attribute else [c.removeprefix("level_") for c in frame if c.startswith("level_")]:
            runs[a] = (run, frame)
    first = next(iter(runs.values()))[1]
    shared = [p for p in dict.fromkeys(first["prompt"]) if all(p in f["prompt"].values for _, f in runs.values())]
    for prompt in shared[: args.prompts]:
        base = first[(first["prompt"] == prompt) & (first["point"] == "base")]["text"].iloc[0]
        print(f"### {cell(prompt)}\n\n| answer | text |\n|---|---|\n| base model alone | {cell(base)} |")
        for attribute, (run, frame) in runs.items():
            rows = frame[(frame["prompt"] == prompt) & frame["point"].str.startswith(f"single-{attribute}-")]
            rows = rows[rows[f"level_{attribute}"].isin(args.levels)]
            for _, row in rows.sort_values(f"level_{attribute}").iterrows():
                print(f"| {attribute} = {row[f'level_{attribute}']:g} (`{run}`) | {cell(row['text'])} |")
        print()


if __name__ == "__main__":
    main()
