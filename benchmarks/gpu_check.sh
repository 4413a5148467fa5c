#!/usr/bin/env bash
# Kernel check on a CUDA machine:
#   tests: the Triton-vs-reference cases natively (tests/kernels_triton/triton_cases.py, bfloat16 included);
#   bench: the CUDA kernel benchmarks (benchmarks/test_kernels.py -k "$BENCH_FILTER", timed), then a JSON + markdown
#          summary: kernels_benchmark.json and kernels_summary.md (the table for benchmarks/RESULTS.md "## Kernels").
# Results go to $OUT (or ./gpu_results): gpu.txt, tests.log, benchmarks.log and the two summary files.
# Usage: bash benchmarks/gpu_check.sh [all|tests|bench]     (default all; needs torch, triton, pytest-benchmark)
# Triton compiles every kernel variant once (seconds each, about 20 s for 64 x 64 tiles); a whole run takes several
# minutes. Where one command may not run that long, run "tests" and "bench" as two commands on the same machine:
# the second one reuses the compiled kernels from triton's cache. BENCH_FILTER (default "cuda") narrows the
# benchmarks, e.g. BENCH_FILTER="cuda and B256 and 3x32x32". TESTS_TIMEOUT / BENCH_TIMEOUT are in seconds.
# Exit status: 0 when the steps run pass, 1 otherwise, 2 without a CUDA GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
STEP="${1:-all}"
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
    python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} | tee "$RESULTS/gpu.txt"

tests_rc=0
bench_rc=0
if [ "$STEP" = all ] || [ "$STEP" = tests ]; then
    echo "== Triton kernels vs reference, native"
    timeout "${TESTS_TIMEOUT:-420}" python -m pytest -q -p no:cacheprovider -rs --durations=10 \
        tests/kernels_triton/triton_cases.py 2>&1 | tee "$RESULTS/tests.log"
    tests_rc=${PIPESTATUS[0]}
fi
if [ "$STEP" = all ] || [ "$STEP" = bench ]; then
    echo "== kernel benchmarks (-k \"${BENCH_FILTER:-cuda}\")"
    timeout "${BENCH_TIMEOUT:-540}" python -m pytest -q -p no:cacheprovider benchmarks/test_kernels.py \
        -k "${BENCH_FILTER:-cuda}" --benchmark-enable --benchmark-min-rounds=5 --benchmark-max-time=0.1 \
        --benchmark-warmup=on --benchmark-json="$RESULTS/kernels_benchmark.json" >"$RESULTS/benchmarks.log" 2>&1
    bench_rc=$?
    tail -n 5 "$RESULTS/benchmarks.log"
    if [ -s "$RESULTS/kernels_benchmark.json" ]; then
        {
            echo "GPU: $(head -n 1 "$RESULTS/gpu.txt"); benchmark exit status $bench_rc."
            echo "Command: bash benchmarks/gpu_check.sh $STEP (BENCH_FILTER=\"${BENCH_FILTER:-cuda}\")"
            echo
            python benchmarks/test_kernels.py --summary "$RESULTS/kernels_benchmark.json"
        } >"$RESULTS/kernels_summary.md"
        cat "$RESULTS/kernels_summary.md"
    fi
fi
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && exit 0
exit 1
