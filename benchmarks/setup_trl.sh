#!/usr/bin/env bash
# The TRL side of the side-by-side benchmark (benchmarks/side_by_side.py) runs in its own virtual environment,
# .venv-trl, so that TRL's pinned versions never touch .venv. Idempotent: an existing .venv-trl that already has
# the pinned versions is left alone. torch is pinned to 2.13.0 because that resolves to the local CPU wheel;
# unpinned, pip would pull gigabytes of CUDA packages. gguf is listed because transformers needs it to read a GGUF,
# although the benchmark itself loads the dequantised safetensors from harness's model cache.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=.venv-trl
PINS=(torch==2.13.0 trl==1.12.0 transformers==5.24.0 peft==0.21.2 accelerate==1.15.0 gguf)

if [ ! -x "$VENV/bin/python" ]; then
    python3.11 -m venv "$VENV"
fi

if "$VENV/bin/python" - <<'EOF' 2>/dev/null
import importlib.metadata as md
want = {"torch": "2.13.0", "trl": "1.12.0", "transformers": "5.24.0", "peft": "0.21.2", "accelerate": "1.15.0"}
for name, version in want.items():
    if md.version(name).split("+")[0] != version:
        raise SystemExit(1)
md.version("gguf")
EOF
then
    echo "$VENV: already set up"
else
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install "${PINS[@]}"
fi

"$VENV/bin/python" -c "import torch, trl, transformers, peft, accelerate; print('$VENV:', 'torch', torch.__version__, 'trl', trl.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)"
