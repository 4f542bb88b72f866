#!/usr/bin/env bash
# Quickstart "test": install with test extras (and Debian's Chromium for the browser test, Tesseract for the
# OCR tests) if needed, then run the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; } && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "== installing chromium + chromium-driver for the browser test"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
if [ ! -x /usr/bin/tesseract ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "== installing tesseract-ocr for the OCR tests (the product's optional setting ocr)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tesseract-ocr >/dev/null
fi
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
set +e
python -m pytest "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
  echo "no tests were collected: treating as failure" >&2
  exit 1
fi
exit "$code"
