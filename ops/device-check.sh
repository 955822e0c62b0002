#!/usr/bin/env bash
# GPU checks for a CUDA machine, in at most 8 minutes, results under one folder.
#
#   bash ops/device-check.sh [RESULTS_DIR]      (default: $OUT when set, else ./device-check-results)
#
# 1. finds a Python with a CUDA build of torch, or makes .venv-gpu and installs one (torch==2.13.0 from
#    PyPI is the CUDA build on Linux x86_64) with the project and torch-tensorrt;
# 2. runs the CUDA and TensorRT engine tests that skip on CPU machines;
# 3. `ecgscreen model bench` for R18 and R34 at 100 Hz (100x1000) and 500 Hz (500x5000), torch-cuda fp16
#    and tensorrt fp16, batch 1 and 32;
# 4. the worker load benchmark with the torch-cuda engine (writes performance-gpu.md and its plot).
#
# Every step has its own time limit within the 8-minute budget; a failing step is recorded and the
# next one still runs. summary.txt holds one line per step with its exit status.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS="${1:-${OUT:-device-check-results}}"
mkdir -p "$RESULTS"
RESULTS="$(cd "$RESULTS" && pwd)"
START=$(date +%s)
BUDGET_S=470  # 8 minutes, less a margin for writing results
SUMMARY="$RESULTS/summary.txt"
: > "$SUMMARY"

left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }

step() {  # step NAME LIMIT_S COMMAND...: run with the smaller of LIMIT_S and the time left
    local name=$1 limit=$2; shift 2
    local remaining; remaining=$(left)
    if [ "$remaining" -lt 15 ]; then echo "$name skipped (budget spent)" | tee -a "$SUMMARY"; return; fi
    [ "$limit" -gt "$remaining" ] && limit=$remaining
    echo "== $name (up to ${limit}s)"
    local t0; t0=$(date +%s)
    timeout --kill-after=5 "$limit" "$@" > "$RESULTS/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc ($(( $(date +%s) - t0 ))s)" | tee -a "$SUMMARY"
    tail -n 5 "$RESULTS/$name.log"
}

has_cuda_torch() { "$1" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; }

PY=""
for candidate in .venv-gpu/bin/python .venv/bin/python python3.11 python3; do
    if command -v "$candidate" > /dev/null 2>&1 && has_cuda_torch "$candidate"; then PY=$(command -v "$candidate"); break; fi
done
if [ -z "$PY" ]; then
    python3.11 -m venv .venv-gpu 2>/dev/null || python3 -m venv .venv-gpu
    PY=.venv-gpu/bin/python
    step install 240 "$PY" -m pip install -q --disable-pip-version-check torch==2.13.0
fi
# The project (editable, with the embedded stack and test tools), then TensorRT; either may already be there.
step install-project 90 "$PY" -m pip install -q --disable-pip-version-check -e ".[embedded,dev]"
"$PY" -c "import torch_tensorrt" 2>/dev/null || \
    step install-tensorrt 90 "$PY" -m pip install -q --disable-pip-version-check torch-tensorrt tensorrt
export PYTHONPATH="$PWD"

{ nvidia-smi || true; "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO CUDA')"; } > "$RESULTS/device.txt" 2>&1
cat "$RESULTS/device.txt" | tail -n 2

# The GPU engine tests (skipped on CPU machines); -rs lists any that still skip, with the reason.
step engine-tests 120 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_model_engines.py
step model-bench-cuda 60 "$PY" -m ops.cli model bench --archs r18 r34 --inputs 100x1000 500x5000 \
    --engines torch-cuda --batches 1 32 --warmup 3 --reps 10 --max-seconds 3 --threads 4 --json
step worker-bench-cuda 120 "$PY" -m ops.bench_worker --engine torch-cuda --threads 4 --prep-processes 8 \
    --rates 20 100 --seconds 8 --max-events 1500 --max-batch 64 --max-wait 0.1 \
    --out "$RESULTS/performance-gpu.md" --state-dir "$RESULTS/bench-state"
# TensorRT last: compiling four programs is the slowest step; its cache lands in the results folder.
export ECGSCREEN_TRT_CACHE="$RESULTS/trt-cache"
step model-bench-tensorrt 150 "$PY" -m ops.cli model bench \
    --archs r18 r34 --inputs 100x1000 500x5000 --engines tensorrt --batches 1 32 --warmup 3 --reps 10 \
    --max-seconds 3 --threads 4 --json
echo "done in $(( $(date +%s) - START ))s; results in $RESULTS"
cat "$SUMMARY"
