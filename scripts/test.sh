#!/usr/bin/env bash
# Install, then run the test suite (CPU, tiny models; a few minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
python -m pytest "$@"
