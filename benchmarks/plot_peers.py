"""Throughput and latency of lerplm serve against llama-server, from a peers result file.

python benchmarks/plot_peers.py benchmarks/results/peers-*.json --out docs/performance_peers.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"lerplm": "tab:blue", "llama.cpp": "tab:orange"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("result", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    result = json.loads(args.result.read_text())
    runs = [r for r in result.get("summary", result["runs"]) if r["adapters"] == "mixed"]  # medians over rounds

    def scenario(r: dict) -> tuple:
        return r["clients"], r["max_tokens"], r.get("length", "natural")

    scenarios = sorted({scenario(r) for r in runs})
    labels = [f"{c} client{'s' if c > 1 else ''}\n{t} tok, {n}" for c, t, n in scenarios]
    fig, axes = plt.subplots(3, 1, figsize=(10, 8.5))
    width = 0.38
    for i, server in enumerate(("llama.cpp", "lerplm")):
        by = {scenario(r): r for r in runs if r["server"] == server}
        xs = [j + (i - 0.5) * width for j in range(len(scenarios))]
        for ax, key in zip(axes, ("tok_s", "p50_s", "p95_s")):
            ax.bar(xs, [by[s][key] if s in by else 0 for s in scenarios], width, label=server, color=COLORS[server])
    for ax, title in zip(axes, ("throughput (tok/s, higher is better)", "p50 latency (s)", "p95 latency (s)")):
        ax.set_xticks(range(len(scenarios)), labels, fontsize=8)
        ax.set_title(title, fontsize=10)
    axes[0].legend()
    fig.suptitle("Same GGUF, same anchors, a mix per request (2 CPU cores)", fontsize=11)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)


if __name__ == "__main__":
    main()
