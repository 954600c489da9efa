#!/usr/bin/env bash
# One short check of a CUDA machine (see bench/gpu_check.py): the tiny presets train for a few minutes each, the
# paper presets (random weights, bf16) answer at batch 1 and 8; throughput and peak memory as JSON lines.
# Installs nothing: run it in the project's environment (make setup), e.g. `bash bench/gpu_check.sh 2`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this check is for GPU machines (python bench/gpu_check.py --quick runs it at toy sizes anywhere)')"
exec "$PYTHON" bench/gpu_check.py --minutes "${1:-2}"
