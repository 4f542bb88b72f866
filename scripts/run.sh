#!/usr/bin/env bash
# Quickstart "run": install if needed, build/update the index of corpus/, then start the chat app.
# With an argument, answers that search from the command line instead of starting the app.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1
rag index corpus/
if [ $# -gt 0 ]; then
  rag search "$1" -k 3
  exit 0
fi
echo "== chat at http://127.0.0.1:${PORT:-8501} (Ctrl-C stops it)"
exec streamlit run ui/app.py --server.headless true --server.address 127.0.0.1 --server.port "${PORT:-8501}" \
  --browser.gatherUsageStats false --client.toolbarMode minimal
