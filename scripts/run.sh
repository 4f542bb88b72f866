#!/usr/bin/env bash
# Quickstart "run": install if needed, build/update the index of corpus/, then answer a sample search.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1
rag index corpus/
rag search "${1:-What does LoRA freeze?}" -k 3
