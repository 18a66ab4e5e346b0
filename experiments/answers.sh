#!/usr/bin/env bash
# Which training recipe keeps the base model's answers while the anchors move the style? The sentiment anchors of
# examples/styles.toml trained five ways (60 steps each, ~9 min per pair on 2 CPU cores), each swept on 64 held-out
# prompts (from line 336) at levels 0 / 0.5 / 1 beside the base model alone, 128 new tokens; the comparison table goes
# to docs/results/answers_table.md (discussed in docs/results/README.md), reports and generations to answers_*/.
set -euo pipefail
cd "$(dirname "$0")/.."
P=../shared/data/styles/prompts/writing_prompts.txt
mkdir -p runs/answers
[ -d scorers/sentiment ] || lerplm scorers train --config examples/styles.toml --only sentiment --out scorers/sentiment

variant() {  # variant NAME SETTINGS...: examples/styles.toml's sentiment with these [training] lines
  python - "$1" "${@:2}" <<'PY'
import sys
from pathlib import Path
src = Path("examples/styles.toml").read_text()
head, rest = src.split("[[attributes]]", 1)
sentiment = "[[attributes]]" + rest.split("[[attributes]]", 1)[0]
head = head.replace('data_dir = "../../shared/data/styles"', f'data_dir = "{Path("../shared/data/styles").resolve()}"')
for line in sys.argv[2:]:  # a setting the config has is replaced, a new one added
    key = line.split("=", 1)[0].strip()
    old = next((x for x in head.splitlines() if x.split("=", 1)[0].strip() == key), None)
    head = head.replace(old, line) if old else head.replace("[training]\n", f"[training]\n{line}\n", 1)
Path(f"runs/answers/{sys.argv[1]}.toml").write_text(head + sentiment)
PY
  lerplm train --config "runs/answers/$1.toml" --out "anchors/answers_$1"
  lerplm sweep --anchors "anchors/answers_$1" --scorers scorers/sentiment --grid single:sentiment --grid base \
    --levels 3 --prompts "$P" --skip-prompts 336 --max-prompts 64 --max-new-tokens 128 --config examples/styles.toml \
    --heldout-per-endpoint 5 --out "runs/answers_$1"
  lerplm report "runs/answers_$1" --title "Sentiment anchors, recipe: $1"
  mkdir -p "docs/results/answers_$1"
  cp runs/answers_"$1"/{report.md,summary.json,generations.csv.gz,*.png} "docs/results/answers_$1/"
}

variant one_line                                   # as examples/styles.toml: one corpus line per answer
variant plain 'text_format = "plain"'              # texts end to end, no chat template
variant joined 'answer_words = 80'                 # consecutive lines joined into answers of >= 80 words
variant replay 'answer_words = 80' \
  'replay = { prompts = "prompts/writing_prompts.txt", first = 80, share = 0.5, tokens = 128 }'
variant replay_quarter 'answer_words = 80' \
  'replay = { prompts = "prompts/writing_prompts.txt", first = 80, share = 0.25, tokens = 128 }'
python experiments/answers_table.py sentiment runs/answers_{one_line,plain,joined,replay,replay_quarter} \
  > docs/results/answers_table.md
