#!/usr/bin/env bash
# The whole GPU check in one command, bounded in time (default 450 s): CUDA fp32 against CPU fp32, the torch
# configurations fp32/fp16/bf16 with and without torch.compile at batch 1, 4, 64, 256 (speed, fidelity, and
# predict_each against predict), ONNX Runtime's CUDA and TensorRT fp16 routes (reported as not run where
# onnxruntime-gpu is not installed), and the streaming evaluation on generated pictures. Writes gpu_check.json and
# gpu_check.md into --out.
#     bash test/gpu_check.sh --out ./gpu_check_results [--time-limit-s 450] [--checkpoint PATH] ...
# Run it from the repository root (or with the project installed). It uses the machine's own python3 and
# installs nothing: a Python package the suite needs and that python lacks is named, with exit status 2.
# Without a CUDA GPU it says so and exits 0. All options: --help.
set -euo pipefail

readonly PROG="gpu_check.sh"
readonly REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# import name -> requirements.txt name: what the check imports
readonly -A NEEDED=([torch]=torch [onnx]=onnx [onnxruntime]=onnxruntime [numpy]=numpy [PIL]=Pillow
                    [tqdm]=tqdm [safetensors]=safetensors)
# shellcheck source=test/lib.sh
source "$REPO_DIR/test/lib.sh"

missing=()
for module in "${!NEEDED[@]}"; do
    if ! python3 -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$module') is None)"; then
        missing+=("$(grep -i "^${NEEDED[$module]}==" "$REPO_DIR/requirements.txt" || echo "${NEEDED[$module]}")")
    fi
done
if ((${#missing[@]})); then
    echo "$PROG: error: $(command -v python3) lacks ${missing[*]}; install them (pip install ${missing[*]}, or" \
         "offline: pip install --no-index --find-links WHEEL_DIR ${missing[*]}) and rerun" >&2
    exit 2
fi
require_suite  # from the repository root, or installed (pip install .)

exec python3 -m convmixer_suite.tools.gpu_check "$@"
