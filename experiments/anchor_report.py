"""Write docs/anchors.md: each anchor's training loss and sample generations at levels 0, 0.5, 1.

python experiments/anchor_report.py --anchors anchors/chat_mixed --out docs/anchors.md
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import lerplm
from lerplm.train import LOSS_LOG, SUMMARY

PROMPTS = [
    "Write two sentences about the restaurant you went to last night.",
    "Tell me about your new neighbour.",
    "Explain why the city is building a new bridge.",
]


def loss_table(lm) -> list[str]:
    rows = [
        "| attribute | endpoint (level) | texts | steps | first logged loss | last logged loss | mean train loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for attr in lm.anchors.attributes:
        for level, ep in ((0, attr.negative), (1, attr.positive)):
            d = lm.anchors.root / ep.adapter
            summary = json.loads((d / SUMMARY).read_text())
            losses = [r["loss"] for r in map(json.loads, (d / LOSS_LOG).read_text().splitlines()) if "loss" in r]
            rows.append(
                f"| {attr.name} | {ep.name} ({level}) | {summary['texts']} | {summary['steps']} | "
                f"{losses[0]:.3f} | {losses[-1]:.3f} | {summary['train_loss']:.3f} |"
            )
    return rows


def setting(value) -> str:
    """A training setting as the config writes it (tables as `{key=value, ...}`)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={setting(v)}" for k, v in value.items()) + "}"
    return str(value)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--anchors", default="anchors/styles")
    ap.add_argument("--out", default="docs/anchors.md")
    ap.add_argument("--attributes", default="sentiment,politeness,formality,simplicity,humor")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--trained-with", action="append", help="the commands that made the set (default: one lerplm train)"
    )
    args = ap.parse_args()

    lm = lerplm.load(args.anchors, device="cpu")
    attrs = args.attributes.split(",")
    levels = [0.0, 0.5, 1.0]
    jobs = [(a, lvl, p) for a in attrs for p in PROMPTS for lvl in levels]
    t0 = time.time()
    outs = lm.generate(
        [p for _, _, p in jobs],
        [{a: lvl} for a, lvl, _ in jobs],
        max_new_tokens=args.max_new_tokens,
        temperature=0.7,
        top_p=0.95,
        seed=args.seed,
    )
    secs = time.time() - t0

    s = lm.anchors
    t = s.training
    lines = [
        "# The ten bundled anchors on the embedded default model",
        "",
        f"Base model: SmolLM2-135M-Instruct (embedded GGUF, sha256 `{(s.base_sha256 or '')[:16]}…`), "
        "dequantized to fp32.",
        f"Config: `examples/styles.toml` (LoRA r={t['lora']['r']}, alpha={t['lora']['alpha']}, "
        f"dropout={t['lora']['dropout']}, "
        f"targets {', '.join(t['lora']['target_modules'])}; block {t['block_size']}, batch {t['batch_size']}, "
        f"lr {t['learning_rate']}, at most {t['max_examples']} texts and {t['max_steps']} steps per anchor, "
        f"text format {t.get('text_format', 'plain')})"
        + "".join(
            f"; {a}: " + ", ".join(f"{k}={setting(v)}" for k, v in ch.items())
            for a, ch in t.get("attributes", {}).items()
        )
        + ".",
        f"Trained on {platform.machine()} CPU, 2 cores, torch {torch.__version__}, with:",
        "",
        "```bash",
        *(args.trained_with or [f"lerplm train --config examples/styles.toml --out {args.anchors}"]),
        f"python experiments/anchor_report.py --anchors {args.anchors} --out {args.out}",
        "```",
        "",
        "## Training loss",
        "",
        "Loss is the mean next-token cross-entropy on the anchor's own training blocks (logged every 10 steps).",
        "",
        *loss_table(lm),
        "",
        "## Sample generations",
        "",
        f"One sample per cell: temperature 0.7, top-p 0.95, seed {args.seed}, {args.max_new_tokens} new tokens, "
        "prompt as the chat user turn; all levels of a prompt share the seed, so differences come from the mix. "
        f"All {len(jobs)} generations ran in one batch, one mix per row ({secs:.0f} s on CPU). "
        "Level 0 is the attribute's first endpoint, level 1 its second; weight 1 on that attribute.",
        "",
    ]
    for a in attrs:
        attr = s.attribute(a)
        lines += [f"### {a}: 0 = {attr.negative.name}, 1 = {attr.positive.name}", ""]
        for p in PROMPTS:
            lines += [f"**{p}**", "", "| level | generation |", "|---|---|"]
            for (ja, lvl, jp), (text,) in zip(jobs, outs):
                if ja == a and jp == p:
                    lines.append(f"| {lvl:g} | {text.replace('|', '/').replace(chr(10), ' ')} |")
            lines.append("")
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
