#!/usr/bin/env bash
# The paper's experiments on the example anchor set, from a clean checkout (after `bash scripts/install.sh`):
# trains what is missing, sweeps, and writes exactly what docs/results/README.md and docs/anchors.md show.
#   bash experiments/paper.sh [SECTION...]   sections: answers single focus simplex schedule corpus anchors
#                                            (default: all)
#   anchors/styles    examples/styles.toml (60 steps per anchor; ~100 min on 2 cores for all ten; a section trains only
#                     the attributes it needs)
#   scorers/styles    TF-IDF scorers on the same files (~2 min)
#   docs/results/{answers,single,single_b,focus,simplex}/  report.md, summary.json, plots, generations.csv.gz;
#   docs/results/answer_examples.md, docs/anchors.md
# The anchors train on answers to prompts 0-239 (replay: 0-79, distilled: 0-239); every sweep prompts
# them with later lines of the same file.
# Every step resumes: run it again after an interruption. Run nothing else CPU-heavy beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
P=../shared/data/styles/prompts/writing_prompts.txt
SET=anchors/styles
SCORERS=scorers/styles
SWEEP=(--anchors "$SET" --scorers "$SCORERS" --prompts "$P" --max-new-tokens 32 --config examples/styles.toml)

needs() {  # needs [ATTRIBUTE...]: the set's anchors of these attributes (all when none) and the scorers
  local only=()
  for a in "$@"; do only+=(--only "$a"); done
  lerplm train --config examples/styles.toml --out "$SET" "${only[@]}"
  [ -d "$SCORERS" ] || lerplm scorers train --config examples/styles.toml --out "$SCORERS"
}

source experiments/publish.sh

answers() {  # how the anchors answer: 11 levels of each attribute beside the base model, 64 prompts (336-399), 128 new
  needs      # tokens: words, prompt fit, fluency and control; three prompts' answers at 0 / 0.5 / 1 side by side (~75 min)
  lerplm sweep "${SWEEP[@]}" --max-new-tokens 128 --grid single:all --grid base --levels 11 --skip-prompts 336 \
    --max-prompts 64 --heldout-per-endpoint 5 --out runs/answers  # the last --max-new-tokens wins
  publish answers "How the anchors answer (64 prompts x 11 levels, 128 new tokens)"
  python experiments/answers_table.py all docs/results/answers > docs/results/answers/table.md
  {
    echo "# Answers at each level beside the base model's"
    echo
    echo "Three held-out writing prompts (line 337 on of the bundled prompts), 128 new tokens, seed 0 for every answer,"
    echo "the anchors of \`examples/styles.toml\`. Made by \`experiments/paper.sh answers\`."
    echo
    python experiments/answer_examples.py --prompts 3 docs/results/answers
  } > docs/results/answer_examples.md
}

single() {  # 11 levels x 64 prompts (400-463); politeness and simplicity, whose scorers separate their corpora least,
  needs     # again on 64 other prompts (464-527, 6 levels) and pooled
  lerplm sweep "${SWEEP[@]}" --grid single:all --levels 11 --skip-prompts 400 --max-prompts 64 --out runs/single
  publish single "Single-attribute sweeps (64 prompts x 11 levels)"
  lerplm sweep "${SWEEP[@]}" --grid single:politeness,simplicity --levels 6 --skip-prompts 464 --max-prompts 64 \
    --out runs/single_b
  publish single_b "Politeness and simplicity on 64 other prompts (6 levels)"
  python experiments/pool_ranges.py runs/single runs/single_b > docs/results/pooled_ranges.md
}

focus() {  # the paper's multi-attribute design (focus grid), b = 0.05, 0.15, 0.2: 16 prompts (240-255) x 6 levels
  needs
  [ -f runs/single/summary.json ] || single
  lerplm sweep "${SWEEP[@]}" --grid focus:b=0.05,0.15,0.2 --levels 6 --skip-prompts 240 --max-prompts 16 \
    --out runs/focus
  publish focus "Focus grid (the paper's five-attribute design), 16 prompts x 6 levels x 3 b"
  python experiments/focus_vs_single.py runs/single runs/focus > docs/results/focus_vs_single.md
}

simplex() {  # the three-attribute simplex of weights (levels 1): 21 points x 32 prompts (256-287)
  needs sentiment formality humor
  lerplm sweep "${SWEEP[@]}" --grid simplex:sentiment,formality,humor:5 --skip-prompts 256 --max-prompts 32 \
    --out runs/simplex
  publish simplex "Simplex of sentiment, formality and humor weights (32 prompts)"
}

schedule() {  # a schedule over the text: sentiment 0 -> 1 over 64 tokens, per 16-token quarter (prompts 336-399)
  needs sentiment
  python experiments/schedule_quarters.py --anchors "$SET" --scorers "$SCORERS" --prompts 64 --skip 336
}

corpus() {  # entanglement in the corpora themselves, beside the generations' (single sweeps)
  needs
  [ -f runs/single/summary.json ] || single
  python experiments/corpus_entanglement.py --config examples/styles.toml --scorers "$SCORERS" \
    --compare runs/single/summary.json --out docs/results/corpus_entanglement.json
}

anchors() {  # docs/anchors.md: training losses and sample generations at levels 0, 0.5 and 1
  needs
  python experiments/anchor_report.py --anchors "$SET" --out docs/anchors.md \
    --trained-with "lerplm train --config examples/styles.toml --out $SET"
}

SECTIONS=(answers single focus simplex schedule corpus anchors)
for s in "${@:-${SECTIONS[@]}}"; do
  [[ " ${SECTIONS[*]} " == *" $s "* ]] || { echo "unknown section $s (${SECTIONS[*]})" >&2; exit 2; }
done
for s in "${@:-${SECTIONS[@]}}"; do "$s"; done
