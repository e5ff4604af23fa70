#!/usr/bin/env bash
# The staged GPU checks (benchmarks/gpu_check.py): one command per stage.
#
#   bash benchmarks/gpu_check.sh kernels                  # on the GPU machine, within 8 minutes
#   bash benchmarks/gpu_check.sh model
#   GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh kernels  # the same steps on the CPU, tiny shapes
#   bash benchmarks/gpu_check.sh --list                   # the steps of each stage and their caps
#
# Writes $OUT/gpu_check-<stage>.json and .log (OUT defaults to gpu_out/); exits non-zero when a
# step failed, timed out or had no time left. PYTHON picks the interpreter (default python3, the
# one that holds torch on the GPU machine). docs/benchmarks.md says how to run it there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3 || command -v python)}"
exec "$PY" -m benchmarks.gpu_check "$@"
