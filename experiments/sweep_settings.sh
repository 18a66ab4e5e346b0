# Sourced by the sweep scripts of sessions 5-8: the prompts file and the sweep settings that every run they
# resume or reuse points from was generated with (a resumed sweep refuses other settings).
P=../shared/data/styles/prompts/writing_prompts.txt
SWEEP=(--scorers artifacts/scorers --prompts "$P" --max-new-tokens 32 --n 1 --config examples/styles.toml --heldout-per-endpoint 10)
