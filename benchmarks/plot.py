"""Bar chart of decode step time relative to the base model, from one or more decode result files.

python benchmarks/plot.py benchmarks/results/decode-default-fp32-cpu-*.json --out docs/performance_decode.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LABELS = {
    "base": "base alone",
    "lerplm_rows": "lerplm, a mix per row",
    "lerplm_rows_one_attribute": "lerplm, one attribute",
    "lerplm_merged": "lerplm, one mix merged",
    "peft_10_active": "PEFT, 10 active",
    "peft_cat": "PEFT, one cat adapter",
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    runs = [json.loads(f.read_text()) for f in args.files]
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 3.4), squeeze=False)
    for ax, run in zip(axes[0], runs):
        ratios = run["ratio_to_base"]
        batches = list(ratios)
        methods = [m for m in LABELS if m in ratios[batches[0]]]
        width = 0.8 / len(methods)
        for i, m in enumerate(methods):
            xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(batches))]
            ax.bar(xs, [ratios[b][m] for b in batches], width, label=LABELS[m])
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
        a = run["args"]
        ax.set_title(f"{a['shape']}, {a['dtype']}, {a['device']}")
        ax.set_ylabel("decode step time / base")
        ax.grid(axis="y", alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
