"""Does a schedule steer the text as it is written? Sentiment 0 -> 1 over 64 new tokens (linear, and in four
steps), and 0 then 1 from token 32 (step), against flat sentiment 0.5 (control) and flat 1, on held-out
writing prompts: the sentiment scorer's score of each quarter of the text (16 tokens each), mean and 95%
interval over prompts. Writes docs/results/schedule/README.md, results.json and generations.csv.gz (condition,
prompt, each quarter's text and score).

    lerplm scorers train --config examples/quickstart.toml --out scorers/quickstart --kind tfidf
    python experiments/schedule_quarters.py --anchors anchors/quickstart --scorers scorers/quickstart
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import pandas as pd

import lerplm
from lerplm.engine import SamplingParams
from lerplm.evaluate.metrics import ci95
from lerplm.evaluate.scorers import ScorerSet
from lerplm.generate import row_seed
from lerplm.mix import Mix, Schedule

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT.parent / "shared" / "data" / "styles" / "prompts" / "writing_prompts.txt"
TOKENS, QUARTERS = 64, 4


def interval(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), ci95(xs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--anchors", required=True)
    ap.add_argument("--scorers", required=True)
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--skip", type=int, default=200, help="first prompt used (held out from the other reports)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "schedule")
    args = ap.parse_args()
    lm = lerplm.load(args.anchors)
    scorer = ScorerSet.load(args.scorers)
    prompts = [p.strip() for p in PROMPTS.read_text().splitlines() if p.strip()][args.skip : args.skip + args.prompts]
    conditions = {
        "sentiment 0 -> 1 (linear)": Schedule(
            ((0, Mix({"sentiment": 0.0})), (TOKENS, Mix({"sentiment": 1.0}))), "linear"
        ),
        "sentiment 0 -> 1 in four steps (0, 1/3, 2/3, 1 from tokens 0, 16, 32, 48)": Schedule(
            tuple((16 * k, Mix({"sentiment": k / 3})) for k in range(4)), "step"
        ),
        "sentiment 0, then 1 from token 32 (step)": Schedule(
            ((0, Mix({"sentiment": 0.0})), (32, Mix({"sentiment": 1.0}))), "step"
        ),
        "flat sentiment 0.5 (control)": Mix({"sentiment": 0.5}),
        "flat sentiment 1 (positive end)": Mix({"sentiment": 1.0}),
    }
    params = SamplingParams(TOKENS, 0.8, 0.95, 0, 0, min_new_tokens=TOKENS)  # every text has all four quarters
    ids = lm.prompt_ids(prompts)
    seqs = {
        name: [lm.sequence(ids[i], m, params, row_seed(0, p, 0)) for i, p in enumerate(prompts)]
        for name, m in conditions.items()
    }
    lm.engine(max_batch=64, max_len=max(map(len, ids)) + TOKENS).run([s for ss in seqs.values() for s in ss])
    q = TOKENS // QUARTERS
    results = {
        "anchors": args.anchors,
        "scorers": args.scorers,
        "prompts": len(prompts),
        "tokens": TOKENS,
        "conditions": {},
    }
    rows = []
    for name, ss in seqs.items():
        texts = [
            [lm.tokenizer.decode(s.tokens[k * q : (k + 1) * q], skip_special_tokens=True) for k in range(QUARTERS)]
            for s in ss
        ]
        scores = [scorer.score([t[k] for t in texts])["sentiment"].tolist() for k in range(QUARTERS)]
        rise = [b - a for a, b in zip(scores[0], scores[-1])]
        for i, (prompt, t) in enumerate(zip(prompts, texts)):
            text = {f"text_q{k + 1}": t[k] for k in range(QUARTERS)}
            score = {f"score_q{k + 1}": scores[k][i] for k in range(QUARTERS)}
            rows.append({"condition": name, "prompt_id": i, "prompt": prompt, **text, **score})
        results["conditions"][name] = {
            "quarters": [interval(s) for s in scores],
            "last_minus_first": interval(rise),
            "examples": ["|".join(t) for t in texts[:3]],
        }
    lines = [
        "# A schedule over the text: sentiment per quarter",
        "",
        f"`python experiments/schedule_quarters.py --anchors {args.anchors} --scorers {args.scorers} "
        f"--prompts {args.prompts} --skip {args.skip}` (`experiments/paper.sh schedule`): "
        f"{len(prompts)} held-out writing prompts (from line {args.skip}), {TOKENS} new tokens (end tokens held back "
        "until then), temperature 0.8, top-p 0.95; the TF-IDF sentiment scorer's P(positive) of each 16-token quarter, "
        "mean ± 95% interval over prompts; every text in `generations.csv.gz`.",
        "",
        "| mix | quarter 1 | quarter 2 | quarter 3 | quarter 4 | quarter 4 - quarter 1 (paired) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results["conditions"].items():
        cells = [f"{m:.3f} ± {h:.3f}" for m, h in r["quarters"]]
        m, h = r["last_minus_first"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {m:+.3f} ± {h:.3f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    (args.out / "README.md").write_text("\n".join(lines) + "\n")
    pd.DataFrame(rows).to_csv(args.out / "generations.csv.gz", index=False)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
