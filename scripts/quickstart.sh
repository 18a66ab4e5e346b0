#!/usr/bin/env bash
# Quick start: install, train four small anchors (sentiment, simplicity) on the embedded default
# model, then generate at several levels of each attribute.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
lerplm train --config examples/quickstart.toml --out anchors/quickstart
lerplm generate --anchors anchors/quickstart \
  --mix sentiment=0 --mix sentiment=0.5 --mix sentiment=1 \
  --prompt "Write two sentences about the restaurant you went to last night." \
  --max-new-tokens 96 --seed 0
lerplm generate --anchors anchors/quickstart \
  --mix simplicity=0 --mix simplicity=1 \
  --prompt "Explain why the city is building a new bridge." \
  --max-new-tokens 96 --seed 0
