#!/usr/bin/env bash
# The paper's experiments on the example anchor set, from a clean checkout (after `bash scripts/install.sh`):
# trains what is missing, sweeps, and writes exactly what docs/results/README.md and docs/anchors.md show.
#   anchors/styles    examples/styles.toml (politeness 720 steps, simplicity 360, the others 60; ~5 h on 2 cores)
#   scorers/styles    TF-IDF scorers on the same files (~2 min)
#   docs/results/{single,single_b,focus,simplex}/  report.md, summary.json, plots, generations.csv.gz
# Every step resumes: run it again after an interruption. Run nothing else CPU-heavy beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
P=../shared/data/styles/prompts/writing_prompts.txt
SET=anchors/styles
SCORERS=scorers/styles
SWEEP=(--anchors "$SET" --scorers "$SCORERS" --prompts "$P" --max-new-tokens 32 --config examples/styles.toml)

publish() {  # publish RUN TITLE: the report and its generations into docs/results/RUN
  lerplm report "runs/$1" --title "$2"
  mkdir -p "docs/results/$1"
  cp runs/"$1"/{report.md,summary.json,generations.csv.gz,*.png} "docs/results/$1/"
}

lerplm train --config examples/styles.toml --out "$SET"
[ -d "$SCORERS" ] || lerplm scorers train --config examples/styles.toml --out "$SCORERS"

# single-attribute sweeps: 11 levels x 64 prompts (80-143); politeness and simplicity, the two narrowest, again on
# 64 other prompts (160-223, 6 levels) and pooled
lerplm sweep "${SWEEP[@]}" --grid single:all --levels 11 --skip-prompts 80 --max-prompts 64 --out runs/single
publish single "Single-attribute sweeps (64 prompts x 11 levels)"
lerplm sweep "${SWEEP[@]}" --grid single:politeness,simplicity --levels 6 --skip-prompts 160 --max-prompts 64 \
  --out runs/single_b
publish single_b "Politeness and simplicity on 64 other prompts (6 levels)"
python experiments/pool_ranges.py runs/single runs/single_b > docs/results/pooled_ranges.md

# the paper's multi-attribute design (focus grid), b = 0.05, 0.15, 0.2: 16 prompts (144-159) x 6 levels
lerplm sweep "${SWEEP[@]}" --grid focus:b=0.05,0.15,0.2 --levels 6 --skip-prompts 144 --max-prompts 16 --out runs/focus
publish focus "Focus grid (the paper's five-attribute design), 16 prompts x 6 levels x 3 b"
python experiments/focus_vs_single.py runs/single runs/focus > docs/results/focus_vs_single.md

# the three-attribute simplex of weights (levels 1): 21 points x 32 prompts (224-255)
lerplm sweep "${SWEEP[@]}" --grid simplex:sentiment,formality,humor:5 --skip-prompts 224 --max-prompts 32 \
  --out runs/simplex
publish simplex "Simplex of sentiment, formality and humor weights (32 prompts)"

# a schedule over the text: sentiment 0 -> 1 over 64 tokens, per 16-token quarter (64 prompts from line 336)
python experiments/schedule_quarters.py --anchors "$SET" --scorers "$SCORERS" --prompts 64 --skip 336

# entanglement in the corpora themselves, beside the generations' (single sweeps)
python experiments/corpus_entanglement.py --config examples/styles.toml --scorers "$SCORERS" \
  --compare runs/single/summary.json --out docs/results/corpus_entanglement.json
# docs/anchors.md: training losses and sample generations at levels 0, 0.5 and 1
python experiments/anchor_report.py --anchors "$SET" --out docs/anchors.md \
  --trained-with "lerplm train --config examples/styles.toml --out $SET"
