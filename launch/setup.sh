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
echo "flextok_jax installed in $(pwd)/.venv"
