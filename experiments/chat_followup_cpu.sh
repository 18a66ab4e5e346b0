#!/usr/bin/env bash
# Issues 3 and 6 on the chat-format anchors (after experiments/chat_anchors_cpu.sh): docs/results/README.md,
# sections "Why politeness and simplicity fall short" and "Target control on the chat anchors". ~2.5 h on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
P=../shared/data/styles/prompts/writing_prompts.txt
SWEEP=(--scorers artifacts/scorers --prompts "$P" --skip-prompts 80 --max-prompts 64 --levels 6 --n 1 --max-new-tokens 32)

# Issue 3, lever 1 (anchor training): the two weakest attributes with 3x the steps, chat format
lerplm train --config examples/styles.toml --text-format chat --only politeness --only simplicity --max-steps 180 --out anchors/chat180
lerplm sweep --anchors anchors/chat180 --grid single:politeness,simplicity "${SWEEP[@]}" --config examples/styles.toml \
  --heldout-per-endpoint 10 --out runs/ps_chat180
lerplm report runs/ps_chat180 --title "Chat anchors, 180 steps: politeness and simplicity (64 prompts x 6 levels)"
# Issue 3, lever 2 (the scorer): what each TF-IDF scorer separates on real held-out texts, per attribute pair
python experiments/corpus_entanglement.py --config examples/styles.toml --scorers artifacts/scorers \
  --compare runs/chat64/summary.json --out docs/results/corpus_entanglement.json
# ... and a hidden-state scorer for politeness (the scorer with the lowest AUC), the same generations scored again
lerplm scorers train --config examples/styles.toml --out artifacts/scorers_hidden_pol --kind hidden --max-train 1000 --only politeness
for r in chat64 ps_chat180; do
  lerplm rescore runs/$r --scorers artifacts/scorers_hidden_pol --out runs/${r}_hidden
  lerplm report runs/${r}_hidden --title "runs/$r rescored by a hidden-state politeness scorer"
done
mkdir -p docs/results && for r in ps_chat180 chat64_hidden ps_chat180_hidden; do
  mkdir -p docs/results/$r && cp runs/$r/{report.md,summary.json,*.png} docs/results/$r/
done

# Issue 6: calibrate on the chat anchors' sweep (prompts 80-143), evaluate on prompts 16-79.
# Targets: the calibration's predicted scores at levels 0.15/0.5/0.85 of each attribute (weight 1), and at the
# level corners 0.15/0.85 of two entangled pairs (equal weights), as printed by target_sets.
lerplm calibrate runs/chat64 --out runs/calibration_chat64.json
mapfile -t TARGETS < <(python experiments/target_args.py runs/calibration_chat64.json --levels 0.15 0.5 0.85 \
  --pair sentiment,formality --pair formality,humor)
lerplm eval-targets --anchors anchors/styles_chat --scorers artifacts/scorers --calibration runs/calibration_chat64.json \
  --prompts "$P" --skip-prompts 16 --max-prompts 64 "${TARGETS[@]}" --out runs/targets_chat
mkdir -p docs/results/targets_chat && cp runs/targets_chat/targets.{md,json,csv,png} docs/results/targets_chat/
cp runs/calibration_chat64.json docs/results/

# Issue 3: the 11-level single sweeps on the chat anchors. The 6 levels of chat64 are the same grid points with
# identical settings, so they are copied in and only the 5 new levels are generated (resumable).
mkdir -p runs/chat_single11/points && cp runs/chat64/sweep.json runs/chat_single11/ && cp runs/chat64/points/*.csv runs/chat_single11/points/
lerplm sweep --anchors anchors/styles_chat --grid single:all --scorers artifacts/scorers --prompts "$P" --skip-prompts 80 \
  --max-prompts 64 --levels 11 --n 1 --max-new-tokens 32 --config examples/styles.toml --heldout-per-endpoint 10 --out runs/chat_single11
lerplm report runs/chat_single11 --title "Chat-format anchors: single-attribute sweeps (64 prompts x 11 levels)"
