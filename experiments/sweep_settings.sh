# Sourced by the sweep scripts of sessions 5-9: the prompts file and the sweep settings that every run they
# resume or reuse points from was generated with (a resumed sweep refuses other settings).
P=../shared/data/styles/prompts/writing_prompts.txt
SWEEP=(--scorers artifacts/scorers --prompts "$P" --max-new-tokens 32 --n 1 --config examples/styles.toml --heldout-per-endpoint 10)

# check_reuse SET ATTRIBUTE SOURCE_RUN OUT: generate levels 0 and 1 of ATTRIBUTE on the anchor set SET (prompts
# 80-143) into OUT and require texts byte-identical to SOURCE_RUN's, before reusing SOURCE_RUN's points on SET.
check_reuse() {
  lerplm sweep --anchors "$1" --grid "single:$2" --levels 2 --skip-prompts 80 --max-prompts 64 "${SWEEP[@]}" --out "$4"
  python experiments/reuse_points.py check "$4" "$3" "single-$2-0" "single-$2-1"
}
