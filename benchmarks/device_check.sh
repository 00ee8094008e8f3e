#!/usr/bin/env bash
# The device check of issues 18 and 25, for a machine with a CUDA GPU:
#   benchmarks/device_check.sh             (< 8 min on one H200)
#     benchmarks/device.py --skip-generative  (samples/s, a FedMMKT round, CPU-vs-GPU agreement
#                                              -> benchmarks/results/device.json)
#     the tests marked `cuda` (and the device tests that run everywhere)
#   benchmarks/device_check.sh generative  (not yet timed on a GPU; sized for a few minutes)
#     benchmarks/device.py --generative-only  (hf-vlm rows: real-size Qwen2-VL-2B and SmolVLM-256M shapes,
#                                              tokens/s, MFU, peak memory, fedvl rounds -> the same JSON)
# PYTHON: an interpreter whose torch sees the GPU and that has fedvl's dependencies
# (e.g. `make setup` on a machine whose pip index serves CUDA torch wheels, then PYTHON=.venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1
"$PYTHON" - <<'PY'
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, devices: {torch.cuda.device_count()}")
if not torch.cuda.is_available():
    raise SystemExit("device_check: this torch sees no CUDA device; benchmarks/device.py alone runs the CPU path")
print("gpu:", torch.cuda.get_device_name(0))
PY
if [ "${1:-}" = generative ]; then
    exec timeout 540 "$PYTHON" benchmarks/device.py --generative-only
fi
timeout 420 "$PYTHON" benchmarks/device.py --skip-generative
timeout 180 "$PYTHON" -m pytest -q -x -p no:cacheprovider -m cuda tests/engine/test_device.py tests/fedmmkt/test_kt.py \
    tests/pretrain/test_vl.py
