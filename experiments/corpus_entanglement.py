"""How entangled are the attributes in the training data itself? Score every attribute's held-out
test texts with every scorer: row i, column j is mean score_j(positive endpoint of i) minus
mean score_j(negative endpoint of i), divided by the diagonal (as the sweep's entanglement matrix
divides slopes by the diagonal). An anchor pair learns whatever separates its two corpora, so a
large off-diagonal here predicts the same entry in the generations' entanglement.

python experiments/corpus_entanglement.py --config examples/styles.toml --scorers artifacts/scorers \
    --compare runs/chat64/summary.json --out docs/results/corpus_entanglement.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from lerplm.config import load_config
from lerplm.data import endpoint_texts
from lerplm.evaluate.scorers import ScorerSet


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="examples/styles.toml")
    ap.add_argument("--scorers", default="artifacts/scorers")
    ap.add_argument("--compare", help="a sweep's summary.json: print its single-attribute entanglement beside")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    cfg = load_config(args.config)
    scorers = ScorerSet.load(args.scorers)
    gaps = {}
    for attr in cfg.attributes:
        means = {}
        for side, ep in (("neg", attr.negative), ("pos", attr.positive)):
            texts, _ = endpoint_texts(cfg, ep, held_out=True)
            means[side] = {k: float(v.mean()) for k, v in scorers.score(texts).items()}
        gaps[attr.name] = {k: means["pos"][k] - means["neg"][k] for k in scorers.names}
    gap = pd.DataFrame(gaps).T[list(gaps)]
    norm = gap.div(pd.Series({a: gap.loc[a, a] for a in gap.index}), axis=0)
    print("score gap (positive minus negative endpoint's test texts), row = corpus, column = scorer:")
    print(gap.round(3).to_string())
    print("\nnormalised by the diagonal (corpus entanglement):")
    print(norm.round(3).to_string())
    result = {"config": args.config, "scorers": args.scorers, "gap": gap.to_dict(), "entanglement": norm.to_dict()}
    if args.compare:
        ent = pd.DataFrame(json.loads(Path(args.compare).read_text())["single"]["entanglement"])
        ent = ent.loc[norm.index, norm.columns]
        print(f"\ngenerations' entanglement ({args.compare}):")
        print(ent.round(3).to_string())
        off = [(i, j) for i in norm.index for j in norm.columns if i != j]
        r = pd.Series([norm.loc[i, j] for i, j in off]).corr(pd.Series([ent.loc[i, j] for i, j in off]))
        print(f"\nPearson r over the 20 off-diagonal entries, corpus vs generations: {r:.3f}")
        result |= {"compare": args.compare, "generations_entanglement": ent.to_dict(), "offdiag_pearson_r": float(r)}
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
