"""Does a grid point's mean score depend on the sampling seed more than its interval says?

Generates humor 0.6 and formality 0.6 (single-attribute mixes, chat anchors) on 64 prompts under the given
(prompt offset, seed) settings and prints the mean humor and formality scores per point. Run at commit 4216394
(one random stream shared by every prompt) and after dc2946a (a stream per prompt): docs/results/README.md,
"A sampling flaw found and fixed (session 5)".

    python experiments/seed_check.py NAME:SKIP:SEED [...]     # e.g. p80_s1:80:1 -> runs/seedcheck_p80_s1
"""

import sys
from pathlib import Path

import lerplm
from lerplm.data import read_prompts
from lerplm.evaluate.grids import single
from lerplm.evaluate.scorers import ScorerSet
from lerplm.evaluate.sweep import run_sweep
from lerplm.generate import SamplingParams

PROMPTS = Path("../shared/data/styles/prompts/writing_prompts.txt")


def main() -> None:
    lm = lerplm.load("anchors/styles_chat")
    scorers = ScorerSet.load("artifacts/scorers")
    points = [p for p in single("humor", 6) + single("formality", 6) if p.meta["level"] == 0.6]
    for spec in sys.argv[1:]:
        name, skip, seed = spec.split(":")
        df = run_sweep(
            lm,
            scorers,
            points,
            read_prompts(PROMPTS, int(skip), 64),
            f"runs/seedcheck_{name}",
            params=SamplingParams(32, 0.8, 0.95, 0, int(seed)),
            progress=False,
        )
        print(name, df.groupby("point")[["score_humor", "score_formality"]].mean().round(3).to_dict(), flush=True)


if __name__ == "__main__":
    main()
