#!/usr/bin/env bash
# Kernel check on a CUDA machine, in one run:
#   1. the Triton-vs-reference cases natively (tests/kernels_triton/triton_cases.py; bfloat16 included),
#   2. the kernel benchmarks on the GPU (benchmarks/test_kernels.py -k cuda, timed),
#   3. a JSON + markdown summary in $OUT (or ./gpu_results): gpu.txt, tests.log, kernels_benchmark.json,
#      kernels_summary.md (the table for benchmarks/RESULTS.md "## Kernels").
# Usage (from anywhere): bash benchmarks/gpu_check.sh        Needs torch, triton, pytest, pytest-benchmark.
# Exit status: 0 when the tests pass and the benchmarks ran, 1 otherwise, 2 without a CUDA GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS="${OUT:-gpu_results}"
mkdir -p "$RESULTS"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
export NIDIFF_KERNELS=triton

if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA GPU visible to torch" | tee "$RESULTS/gpu.txt"
    exit 2
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
    python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
} | tee "$RESULTS/gpu.txt"

echo "== 1. Triton kernels vs reference, native"
timeout 300 python -m pytest -q -p no:cacheprovider -rs tests/kernels_triton/triton_cases.py 2>&1 | tee "$RESULTS/tests.log"
tests_rc=${PIPESTATUS[0]}

echo "== 2. kernel benchmarks (CUDA cases)"
timeout 420 python -m pytest -q -p no:cacheprovider benchmarks/test_kernels.py -k cuda \
    --benchmark-enable --benchmark-min-rounds=5 --benchmark-max-time=0.1 --benchmark-warmup=on \
    --benchmark-json="$RESULTS/kernels_benchmark.json" >"$RESULTS/benchmarks.log" 2>&1
bench_rc=$?
tail -n 5 "$RESULTS/benchmarks.log"

echo "== 3. summary"
if [ -s "$RESULTS/kernels_benchmark.json" ]; then
    {
        echo "GPU: $(head -n 1 "$RESULTS/gpu.txt"); tests exit status $tests_rc, benchmarks exit status $bench_rc."
        echo "Command: bash benchmarks/gpu_check.sh"
        echo
        python benchmarks/test_kernels.py --summary "$RESULTS/kernels_benchmark.json"
    } >"$RESULTS/kernels_summary.md"
    cat "$RESULTS/kernels_summary.md"
fi
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && exit 0
exit 1
