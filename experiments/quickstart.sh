#!/usr/bin/env bash
# How the quick-start anchors answer: examples/quickstart.toml (corpus lines joined into answers of >= 80 words, a
# quarter of the blocks the base model's own answers) beside the same config with one corpus line per answer, both
# attributes at levels 0 / 0.5 / 1 beside the base model alone, 64 held-out prompts (from line 336), 128 new tokens:
# words, prompt fit, control range and held-out perplexity (experiments/answers_table.py). Runs and generations go to
# docs/results/quickstart_{answers,one_line}/, the table to docs/results/quickstart_table.md. ~25 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
P=../shared/data/styles/prompts/writing_prompts.txt
source experiments/publish.sh
trained quickstart
if [ ! -d anchors/quickstart_one_line ]; then  # the same config without the recipe's two lines
  mkdir -p runs
  grep -v '^answer_words\|^replay' examples/quickstart.toml |
    sed "s|^data_dir = .*|data_dir = \"$(cd ../shared/data/styles && pwd)\"|" > runs/quickstart_one_line.toml
  lerplm train --config runs/quickstart_one_line.toml --out anchors/quickstart_one_line
fi
sweep() {  # sweep RUN ANCHORS WHAT: anchors/ANCHORS into docs/results/RUN, unless it is there
  [ -f "docs/results/$1/summary.json" ] && return
  lerplm sweep --anchors "anchors/$2" --scorers scorers/quickstart --grid single:all --grid base --levels 3 \
    --max-new-tokens 128 --prompts "$P" --skip-prompts 336 --max-prompts 64 --config examples/quickstart.toml \
    --heldout-per-endpoint 5 --out "runs/$1"
  publish "$1" "Quick-start anchors, $3: 64 prompts x 3 levels, 128 new tokens"
}
sweep quickstart_answers quickstart examples/quickstart.toml
sweep quickstart_one_line quickstart_one_line "one corpus line per answer"
python experiments/answers_table.py all docs/results/quickstart_{answers,one_line} > docs/results/quickstart_table.md
