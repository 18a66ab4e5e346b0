#!/usr/bin/env bash
# Does OpenAI's frequency penalty take the repetition out of the set's answers and leave their style? The set's
# (examples/styles.toml) politeness and humor anchors, whose answers repeat themselves (politeness at every level, humor
# toward its unfunny end; distinct-2 0.72-0.85 against the base model's 0.92), at levels 0 / 0.5 / 1
# beside the base model, on 64 held-out prompts (from line 336) at 128 new tokens, without and with
# `--frequency-penalty 0.5` (the same prompts and random streams). The table goes to docs/results/penalties_table.md,
# reports and generations to docs/results/penalties_*/.
set -euo pipefail
cd "$(dirname "$0")/.."
P=../shared/data/styles/prompts/writing_prompts.txt
source experiments/publish.sh
trained styles
for f in 0 0.5; do
  run="penalties_frequency_$f"
  [ -f "docs/results/$run/summary.json" ] && continue
  lerplm sweep --anchors anchors/styles --scorers scorers/styles --grid single:politeness,humor --grid base \
    --levels 3 --prompts "$P" --skip-prompts 336 --max-prompts 64 --max-new-tokens 128 --frequency-penalty "$f" \
    --config examples/styles.toml --heldout-per-endpoint 5 --out "runs/$run"
  publish "$run" "the set's politeness and humor anchors, frequency penalty $f"
done
python experiments/answers_table.py --repetition all docs/results/penalties_frequency_{0,0.5} \
  > docs/results/penalties_table.md
