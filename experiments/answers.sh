#!/usr/bin/env bash
# Which training recipe keeps the base model's answers while the anchors move the style? Anchors of
# examples/styles.toml trained with several recipes (60 steps unless set, ~9 min per pair on 2 CPU cores), each
# swept on 64 held-out prompts (from line 336) at levels 0 / 0.5 / 1 (LEVELS=11: 11 levels, where a curve's shape
# matters) beside the base model alone, 128 new tokens.
# A variant already in docs/results is not run again. The table goes to docs/results/answers_table.md (discussed in
# docs/results/README.md), reports and generations to docs/results/answers_*/. The recipe examples/styles.toml
# takes from these is measured on the whole set by `experiments/paper.sh answers`.
set -euo pipefail
cd "$(dirname "$0")/.."
P=../shared/data/styles/prompts/writing_prompts.txt
mkdir -p runs/answers
source experiments/publish.sh

sweep_single() {  # sweep_single ANCHORS ATTRIBUTE OUT ARGS...: anchors/ANCHORS over ATTRIBUTE's levels beside the base
  lerplm sweep --anchors "anchors/$1" --scorers "scorers/$2" --grid "single:$2" --grid base --max-new-tokens 128 \
    --out "runs/$3" "${@:4}"
}
# 64 prompts from a held-out range, with held-out corpus perplexity on 5 texts per endpoint
HELD_OUT=(--prompts "$P" --max-prompts 64 --config examples/styles.toml --heldout-per-endpoint 5)

variant() {  # variant ATTRIBUTE NAME SETTINGS...: the attribute of examples/styles.toml with these [training] lines
  # ("negative: LINE" / "positive: LINE": that endpoint's own training setting)
  local run="answers_$1_$2"
  [ "$1" = sentiment ] && run="answers_$2"
  [ -f "docs/results/$run/summary.json" ] && return  # measured already: delete the folder to measure again
  [ -d "scorers/$1" ] || lerplm scorers train --config examples/styles.toml --only "$1" --out "scorers/$1"
  python - "$@" <<'PY'
import sys
from pathlib import Path
attribute, name, settings = sys.argv[1], sys.argv[2], sys.argv[3:]
RECIPE = ("answer_words", "replay", "distill")
src = Path("examples/styles.toml").read_text()
head, rest = src.split("[[attributes]]", 1)
block = next(b for b in rest.split("[[attributes]]") if f'name = "{attribute}"' in b.split("\n", 2)[1])
head = head.replace('data_dir = "../../shared/data/styles"', f'data_dir = "{Path("../shared/data/styles").resolve()}"')
block = "\n".join(x for x in block.splitlines() if not x.startswith("training ="))  # the variant's recipe only:
head = "".join(x for x in head.splitlines(True) if x.split("=", 1)[0].strip() not in RECIPE)  # none of the set's
own = {}  # endpoint -> its own settings
for line in settings:  # a setting the config has is replaced, a new one added
    side, _, setting = line.partition(": ")
    if side in ("negative", "positive"):
        own.setdefault(side, []).append(setting)
        continue
    key = line.split("=", 1)[0].strip()
    old = next((x for x in head.splitlines() if x.split("=", 1)[0].strip() == key), None)
    head = head.replace(old, line) if old else head.replace("[training]\n", f"[training]\n{line}\n", 1)
for side, lines in own.items():  # inside the endpoint's inline table: `training = { ... } }`
    ep = next(x for x in block.splitlines() if x.startswith(f"{side} = "))
    block = block.replace(ep, ep.rstrip()[:-1].rstrip() + f", training = {{ {', '.join(lines)} }} }}")
Path(f"runs/answers/{attribute}_{name}.toml").write_text(head + "[[attributes]]" + block)
PY
  lerplm train --config "runs/answers/$1_$2.toml" --out "anchors/$run"
  sweep_single "$run" "$1" "$run" --levels "${LEVELS:-3}" --skip-prompts 336 "${HELD_OUT[@]}"
  publish "$run" "$1 anchors, recipe: $2"
}

REPLAY='replay = { prompts = "prompts/writing_prompts.txt", first = 80, share = 0.5, tokens = 128 }'
variant sentiment one_line                               # as examples/styles.toml: one corpus line per answer
variant sentiment plain 'text_format = "plain"'          # texts end to end, no chat template
variant sentiment joined 'answer_words = 80'             # consecutive lines joined into answers of >= 80 words
variant sentiment replay 'answer_words = 80' "$REPLAY"   # and the base model's own answers, half the blocks
variant sentiment replay_quarter 'answer_words = 80' "${REPLAY/share = 0.5/share = 0.25}"
for a in formality politeness simplicity humor; do  # the quarter recipe on the other attributes, 60 steps each
  variant "$a" replay_quarter 'answer_words = 80' "${REPLAY/share = 0.5/share = 0.25}" 'max_steps = 60'
done
# politeness learns slowly: twice the steps at three times the learning rate, or shorter joined answers
variant politeness replay_quarter_fast 'answer_words = 80' "${REPLAY/share = 0.5/share = 0.25}" 'max_steps = 120' \
  'learning_rate = 1.5e-3'
variant politeness replay_quarter_short 'answer_words = 40' "${REPLAY/share = 0.5/share = 0.25}" 'max_steps = 60'
# humor's texts are one-line jokes: answers joined from twice as many words
variant humor replay_quarter_long 'answer_words = 160' "${REPLAY/share = 0.5/share = 0.25}" 'max_steps = 60'
# less replay, more style: a tenth of the blocks replayed
variant politeness replay_tenth_short 'answer_words = 40' "${REPLAY/share = 0.5/share = 0.1}" 'max_steps = 60'
variant simplicity replay_tenth 'answer_words = 80' "${REPLAY/share = 0.5/share = 0.1}" 'max_steps = 60'
# more steps: simplicity at 360
variant simplicity replay_quarter_360 'answer_words = 80' "${REPLAY/share = 0.5/share = 0.25}" 'max_steps = 360'
# the quarter recipe with no loss on the token that ends an answer, on the two whose answers it leaves short
for a in humor simplicity; do
  variant "$a" replay_quarter_noend 'answer_words = 80' "${REPLAY/share = 0.5/share = 0.25}" 'max_steps = 60' \
    'end_loss = false'
done

# distilled: answers to 240 held-in prompts sampled from the base model x a one-line corpus anchor (the base
# model's end-of-answer probability), the anchor trained on those answers
DISTILL='distill = { prompts = "prompts/writing_prompts.txt" }'
variant politeness distill "$DISTILL" 'max_steps = 60'
variant politeness distill_half 'distill = { prompts = "prompts/writing_prompts.txt", strength = 0.5 }' \
  'max_steps = 60'  # the teacher at half weight in the product
variant politeness distill_noend "$DISTILL" 'max_steps = 60' 'end_loss = false'  # no loss on each answer's end
variant simplicity distill "$DISTILL" 'max_steps = 60'  # the narrowest attribute under replay
variant humor distill_noend "$DISTILL" 'max_steps = 60' 'end_loss = false'  # does distilling widen humor's range?
variant simplicity distill_noend "$DISTILL" 'max_steps = 60' 'end_loss = false'  # and lengthen simplicity's answers?
variant politeness distill_075_noend 'distill = { prompts = "prompts/writing_prompts.txt", strength = 0.75 }' \
  'max_steps = 60' 'end_loss = false'  # a weaker teacher: politeness's answers nearer the base model's length?
# the end learnt only where a guided answer ended on its own, not where 128 tokens cut it
variant simplicity distill_finished "$DISTILL" 'max_steps = 60' 'end_loss = "finished"'
variant politeness distill_finished "$DISTILL" 'max_steps = 60' 'end_loss = "finished"'
# the same with guided answers of up to 256 tokens: at 128 only the short answers finish, so only they teach the end
variant politeness distill_finished_256 'distill = { prompts = "prompts/writing_prompts.txt", tokens = 256 }' \
  'max_steps = 60' 'end_loss = "finished"'
# between the two: the end learnt on a quarter of the guided answers that ended on their own
variant politeness distill_quarter_end "$DISTILL" 'max_steps = 60' 'end_loss = 0.25'
# humor's jokes through a stronger teacher (its exponent 1.5 in the product), no loss on each answer's end
variant humor distill_15_noend 'distill = { prompts = "prompts/writing_prompts.txt", strength = 1.5 }' \
  'max_steps = 60' 'end_loss = false'
# less replay for humor: a tenth, then 15% of the blocks the base model's answers, no loss on each answer's end
for share in tenth:0.1 015:0.15; do
  variant humor "replay_${share%%:*}_noend" 'answer_words = 80' "${REPLAY/share = 0.5/share = ${share#*:}}" \
    'max_steps = 60' 'end_loss = false'
done
for a in humor formality sentiment; do  # the quarter recipe, replayed answers' ends learnt only where they ended
  variant "$a" replay_quarter_finished 'answer_words = 80' "${REPLAY/share = 0.5/share = 0.25}" 'max_steps = 60' \
    'end_loss = "finished"'
done
# the two attributes whose answers run shortest at some level: formality's quarter recipe with no loss on each
# answer's end (as humor's), simplicity distilled with the end learnt on a quarter of the answers that ended
variant formality replay_quarter_noend 'answer_words = 80' "${REPLAY/share = 0.5/share = 0.25}" 'max_steps = 60' \
  'end_loss = false'
variant simplicity distill_quarter_end "$DISTILL" 'max_steps = 60' 'end_loss = 0.25'
# formality between its two recipes: the end learnt on half of the texts
variant formality replay_quarter_half_end 'answer_words = 80' "${REPLAY/share = 0.5/share = 0.25}" 'max_steps = 60' \
  'end_loss = 0.5'
# humor's endpoints apart: not_humorous from the quarter recipe (whose answers fit their prompts), humorous from the
# tenth (whose level 1 scores highest), both without loss on each answer's end
variant humor replay_quarter_noend_tenth_humorous 'answer_words = 80' "${REPLAY/share = 0.5/share = 0.25}" \
  'max_steps = 60' 'end_loss = false' "positive: ${REPLAY/share = 0.5/share = 0.1}"

# formality with the end learnt on three quarters of the texts, at 11 levels: three levels miss where a curve bends
LEVELS=11 variant formality replay_quarter_end075 'answer_words = 80' "${REPLAY/share = 0.5/share = 0.25}" \
  'max_steps = 60' 'end_loss = 0.75'
# simplicity distilled with the end learnt on three quarters of the answers, at 11 levels: the finished recipe's answers
# run shortest in the middle of the range
LEVELS=11 variant simplicity distill_end075 "$DISTILL" 'max_steps = 60' 'end_loss = 0.75'
LEVELS=11 variant simplicity distill_end090 "$DISTILL" 'max_steps = 60' 'end_loss = 0.9'  # nine tenths
LEVELS=11 variant simplicity distill125_end090 'distill = { prompts = "prompts/writing_prompts.txt", strength = 1.25 }' \
  'max_steps = 60' 'end_loss = 0.9'  # a stronger teacher: a wider range than the set's 0.31?
variant formality distill_end075 "$DISTILL" 'max_steps = 60' 'end_loss = 0.75'  # distilled formality: wider than 0.31?
# humor's not_humorous endpoint between the quarter and the tenth (a fifth of the blocks replayed), humorous from the
# tenth, at 11 levels
LEVELS=11 variant humor replay_fifth_noend_tenth_humorous 'answer_words = 80' "${REPLAY/share = 0.5/share = 0.2}" \
  'max_steps = 60' 'end_loss = false' "positive: ${REPLAY/share = 0.5/share = 0.1}"
# humor's not_humorous endpoint on its headlines one per answer (not joined into lists of 80 words), the quarter recipe
# otherwise
variant humor replay_quarter_noend_plain_not_humorous 'answer_words = 80' "${REPLAY/share = 0.5/share = 0.25}" \
  'max_steps = 60' 'end_loss = false' 'negative: answer_words = 0'
# humor's not_humorous endpoint distilled through a teacher between the two measured (exponent 1.25; at 1.5 level 0
# scores 0.15 and at 1 0.70), one headline per teacher answer, humorous from the tenth, at 11 levels
LEVELS=11 variant humor tenth_noend_distill125_not_humorous 'answer_words = 80' "${REPLAY/share = 0.5/share = 0.1}" \
  'max_steps = 60' 'end_loss = false' 'negative: answer_words = 0' \
  'negative: distill = { prompts = "prompts/writing_prompts.txt", strength = 1.25 }'
# the same distilled not_humorous anchor with a quarter of its blocks the base model's own answers (held to its prompts)
LEVELS=11 variant humor tenth_noend_distill125_replay_not_humorous 'answer_words = 80' \
  "${REPLAY/share = 0.5/share = 0.1}" 'max_steps = 60' 'end_loss = false' 'negative: answer_words = 0' \
  'negative: distill = { prompts = "prompts/writing_prompts.txt", strength = 1.25 }' \
  "negative: ${REPLAY/share = 0.5/share = 0.25}"
# the same not_humorous anchor beside the set's humorous one (the quarter recipe, no end loss), at 11 levels
LEVELS=11 variant humor quarter_noend_distill125_replay_not_humorous 'answer_words = 80' \
  "${REPLAY/share = 0.5/share = 0.25}" 'max_steps = 60' 'end_loss = false' 'negative: answer_words = 0' \
  'negative: distill = { prompts = "prompts/writing_prompts.txt", strength = 1.25 }' \
  "negative: ${REPLAY/share = 0.5/share = 0.25}"

elsewhere() {  # elsewhere RUN ATTRIBUTE: RUN's anchors on 64 prompts no recipe was chosen on (400-463), 3 levels
  local out="$1_elsewhere"  # (LEVELS=11: 11 levels)
  [ -f "docs/results/$out/summary.json" ] && return
  sweep_single "$1" "$2" "$out" --levels "${LEVELS:-3}" --skip-prompts 400 "${HELD_OUT[@]}"
  publish "$out" "$2 anchors of $1 on prompts 400-463"
}
# humor's recipe was chosen among a dozen on prompts 336-399: the set's and the one before it on other prompts
LEVELS=11 elsewhere answers_humor_quarter_noend_distill125_replay_not_humorous humor
elsewhere answers_humor_replay_quarter_noend humor
# distilled formality against the set's formality recipe, on prompts neither was chosen on
LEVELS=11 elsewhere answers_formality_distill_end075 formality
elsewhere answers_formality_replay_quarter_end075 formality

trained_request() {  # trained_request RUN ATTRIBUTE: RUN's anchors under the one request their style texts answer
  local out="$1_trained_request"
  [ -f "docs/results/$out/summary.json" ] && return
  python -c "from lerplm.config import load_config; print(load_config('examples/styles.toml').training.chat_prompt)" \
    > runs/answers/trained_request.txt
  sweep_single "$1" "$2" "$out" --levels 2 --n 32 --prompts runs/answers/trained_request.txt
  publish "$out" "$2 anchors of $1 under their training request, 32 samples"
}
trained_request answers_simplicity_replay_quarter_360 simplicity  # does the style live on under that request?
{
  python experiments/answers_table.py sentiment docs/results/answers_{one_line,plain,joined,replay,replay_quarter,replay_quarter_finished}
  for a in formality politeness simplicity humor; do
    echo
    python experiments/answers_table.py "$a" "docs/results/answers_${a}_replay_quarter"
  done
  echo
  python experiments/answers_table.py politeness docs/results/answers_politeness_replay_{quarter_fast,quarter_short} \
    docs/results/answers_politeness_{replay_tenth_short,distill,distill_half,distill_noend,distill_075_noend} \
    docs/results/answers_politeness_distill_{finished,finished_256,quarter_end}
  echo
  python experiments/answers_table.py humor docs/results/answers_humor_{replay_quarter_long,replay_quarter_noend} \
    docs/results/answers_humor_{distill_noend,distill_15_noend,replay_tenth_noend,replay_015_noend,replay_quarter_finished,replay_quarter_noend_tenth_humorous,replay_fifth_noend_tenth_humorous} \
    docs/results/answers_humor_replay_quarter_noend_plain_not_humorous \
    docs/results/answers_humor_tenth_noend_distill125_not_humorous \
    docs/results/answers_humor_{tenth,quarter}_noend_distill125_replay_not_humorous \
    docs/results/answers_humor_{quarter_noend_distill125_replay_not_humorous,replay_quarter_noend}_elsewhere
  echo
  python experiments/answers_table.py formality \
    docs/results/answers_formality_replay_quarter_{finished,noend,half_end,end075} docs/results/answers_formality_distill_end075 \
    docs/results/answers_formality_{distill_end075,replay_quarter_end075}_elsewhere
  echo
  python experiments/answers_table.py simplicity \
    docs/results/answers_simplicity_replay_{tenth,quarter_360,quarter_noend} docs/results/answers_simplicity_{distill,distill_noend,distill_finished,distill_quarter_end,distill_end075,distill_end090,distill125_end090}
} > docs/results/answers_table.md
