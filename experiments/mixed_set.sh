#!/usr/bin/env bash
# Session 6, issue 3: one anchor set with per-attribute training (examples/styles.toml: politeness and simplicity
# 180 steps, the others 60) and its single-attribute sweeps, without training or generating anything again.
# The adapters are the ones already measured (anchors/styles_chat: 60 steps; anchors/chat180: 180 steps), so the
# set is assembled from them and `lerplm train` checks each against the config's settings for its attribute and
# writes the manifest. The sweep points are copied from runs/cal64 and runs/ps180_v2 (same prompts, seed and
# settings), after checking that generating on the assembled set gives byte-identical texts (runs/mixed_check*).
# Needs experiments/seeding_cpu.sh's runs. ~45 min on 2 CPU cores (the two checks ~10 min, the scorer ~30 min).
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/sweep_settings.sh   # P (the prompts file), SWEEP (the shared sweep settings)

mkdir -p anchors/chat_mixed
for a in sentiment.negative sentiment.positive formality.informal formality.formal humor.not_humorous humor.humorous; do
  [ -d anchors/chat_mixed/$a ] || cp -r anchors/styles_chat/$a anchors/chat_mixed/
done
for a in politeness.impolite politeness.polite simplicity.complex simplicity.simple; do
  [ -d anchors/chat_mixed/$a ] || cp -r anchors/chat180/$a anchors/chat_mixed/
done
# examples/styles.toml as it was then (politeness and simplicity 180 steps; session 8 raised both to 360)
git show 8eeaa2c:examples/styles.toml > /tmp/styles180.toml
lerplm train --config /tmp/styles180.toml --data-dir ../shared/data/styles --out anchors/chat_mixed   # trains nothing: every anchor is there

# the check: levels 0 and 1 of one attribute from each source set, generated on the assembled set
CHECK=(--levels 2 --skip-prompts 80 --max-prompts 64 --scorers artifacts/scorers --prompts "$P" --max-new-tokens 32 --n 1)
lerplm sweep --anchors anchors/chat_mixed --grid single:sentiment "${CHECK[@]}" --out runs/mixed_check
lerplm sweep --anchors anchors/chat_mixed --grid single:politeness "${CHECK[@]}" --out runs/mixed_check_pol
python experiments/reuse_points.py check runs/mixed_check runs/cal64 single-sentiment-0 single-sentiment-1
python experiments/reuse_points.py check runs/mixed_check_pol runs/ps180_v2 single-politeness-0 single-politeness-1

# the assembled set's single sweeps: cal64's sentiment/formality/humor points, ps180_v2's politeness/simplicity
# points; `lerplm sweep` resumes (nothing left to generate) and writes results.csv
python experiments/reuse_points.py compose runs/mixed64 anchors/chat_mixed 'runs/cal64:single-sentiment-*' \
  'runs/cal64:single-formality-*' 'runs/cal64:single-humor-*' 'runs/ps180_v2:single-politeness-*' 'runs/ps180_v2:single-simplicity-*'
lerplm sweep --anchors anchors/chat_mixed --grid single:all --skip-prompts 80 --max-prompts 64 --levels 6 "${SWEEP[@]}" --out runs/mixed64
lerplm report runs/mixed64 --title "One anchor set, per-attribute steps (politeness, simplicity 180; others 60): single-attribute sweeps (64 prompts x 6 levels)"
mkdir -p docs/results/mixed64 && cp runs/mixed64/{report.md,summary.json,*.png} docs/results/mixed64/

# politeness, the one attribute still short of a 0.3 range: is the scorer what limits it? A fine-tuned classifier
# (kind finetune: the embedded model, LoRA on its top 8 layers + a linear head, temperature-scaled; ~30 min on
# 2 CPU cores when nothing else runs) scores the same generations again; the other attributes keep their scores.
lerplm scorers train --config examples/styles.toml --only politeness --kind finetune --out artifacts/scorers_ft_pol
lerplm rescore runs/mixed64 --scorers artifacts/scorers_ft_pol --out runs/mixed64_ftpol
lerplm report runs/mixed64_ftpol --title "runs/mixed64 with politeness scored by a fine-tuned classifier"
mkdir -p docs/results/mixed64_ftpol && cp runs/mixed64_ftpol/{report.md,summary.json,*.png} docs/results/mixed64_ftpol/
cp artifacts/scorers_ft_pol/scorers.json docs/results/scorers_ft_pol.json

# docs/anchors.md: the set's training losses and sample generations at levels 0, 0.5, 1 (~2 min)
python experiments/anchor_report.py --anchors anchors/chat_mixed --out docs/anchors.md \
  --trained-with "lerplm train --config examples/styles.toml --text-format chat --max-steps 60 --out anchors/styles_chat" \
  --trained-with "lerplm train --config examples/styles.toml --text-format chat --only politeness --only simplicity --max-steps 180 --out anchors/chat180" \
  --trained-with "bash experiments/mixed_set.sh   # assembles anchors/chat_mixed from the two (lerplm train trains nothing)"
