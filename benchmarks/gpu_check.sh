#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): our PPO step's speed, memory and MFU on one GPU in under 8 minutes.
#   bash benchmarks/gpu_check.sh [--out DIR]   # on the GPU machine, from anywhere in the repository
#   bash benchmarks/gpu_check.sh --dry-run     # the same stages on this CPU at tiny sizes
#   bash benchmarks/gpu_check.sh --stages env,largest   # the largest LLaMA whose one-base LoRA-PPO fits the GPU
#   bash benchmarks/gpu_check.sh --pack        # where SmolLM2 is installed: build/gpu_check/ for a machine without it
# Python: $GPU_CHECK_PYTHON if set; else the first of .venv/bin/python and python3 whose torch sees a CUDA device
# (on a dry run: .venv/bin/python, else python3). The repository runs from its source tree (PYTHONPATH), so a
# machine whose own python3 has a CUDA torch, transformers and peft needs no installation; wheels in
# build/gpu_check/wheels (from --pack: our transformers and peft) go into a temporary folder first on the path.
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
for arg in "$@"; do
  case "$arg" in --dry-run|--pack) dry=1 ;; esac
done
candidates=()
[ -x .venv/bin/python ] && candidates+=(.venv/bin/python)
command -v python3 >/dev/null && candidates+=(python3)
if [ -n "${GPU_CHECK_PYTHON:-}" ]; then
  PY=$GPU_CHECK_PYTHON
  why="GPU_CHECK_PYTHON"
elif [ "$dry" = 1 ]; then
  PY=${candidates[0]:-python3}
  why="dry run"
else
  PY=""
  for c in "${candidates[@]}"; do
    if "$c" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
      PY=$c
      why="its torch sees a CUDA device"
      break
    fi
    echo "gpu_check: $c: torch missing or sees no CUDA device ($("$c" -c 'import torch; print(torch.__version__)' 2>&1 | tail -1))"
  done
  if [ -z "$PY" ]; then
    PY=${candidates[0]:-python3}
    why="no candidate's torch sees a CUDA device; the env stage says why"
  fi
fi
echo "gpu_check: python $PY ($why)"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ "$dry" = 0 ] && compgen -G "build/gpu_check/wheels/*.whl" >/dev/null; then
  site=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_site.XXXXXX")
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$site" build/gpu_check/wheels/*.whl; then
    export PYTHONPATH="$PWD:$site${PYTHONPATH#"$PWD"}"
    echo "gpu_check: first on the path: $(cd build/gpu_check/wheels && ls *.whl | tr '\n' ' ')"
  else
    echo "gpu_check: the wheels in build/gpu_check/wheels did not install; going on with $PY's own packages"
  fi
fi
exec "$PY" -m benchmarks.gpu_check "$@"
