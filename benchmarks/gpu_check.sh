#!/usr/bin/env bash
# GPU check of nidiff: one call on one CUDA GPU (sized for an H200), under 8 minutes, in steps with their own limits.
#
#   bash benchmarks/gpu_check.sh [STEP ...]      (default: the default steps below, in order)
#
# Default steps, time limit in seconds (the limits sum to 450 <= 480; override one with
# GPU_CHECK_TIMEOUT_<STEP>, e.g. GPU_CHECK_TIMEOUT_TRAIN=200, the step name upper-cased with - as _):
#   cuda-tests  40  the tests that skip without CUDA: tests/test_covariance.py -k cuda, tests/test_kernels_cuda.py
#   triton     150  Triton kernels vs the torch reference, natively (tests/kernels_triton/triton_cases.py, its
#                   cases split over GPU_CHECK_GROUPS=8 parallel pytest processes: compilation is the cost)
#   update      40  fused ni_update vs the plain torch chain, B=256 3x32x32 fp32 (target >= 3x faster)
#   bandwidth   40  gff_noise bytes written / time / peak HBM bandwidth, B=4096 3x32x32 fp32 (target >= 60%; peak
#                   by GPU name in benchmarks/test_kernels.py: H200 4800, H100 3350, A100 2039 GB/s, or NIDIFF_PEAK_GBS)
#   train       90  cifar10-config train step in bf16, NI-DDPM vs DDPM: images/s, ratio (target <= 1.03), peak
#                   memory (benchmarks/gpu_train_step.py, batch 128)
#   sample      45  dpm2m, 10 steps, cifar10 network, batch 256: images/s, NI vs isotropic (no target)
#                   (benchmarks/gpu_sample_speed.py)
#   torchrun    45  torchrun --nproc_per_node=1 run.py train --config tiny --device cuda --train-steps 5, then an
#                   NCCL all_reduce under torchrun (one rank: training itself needs no DDP at world size 1)
# Optional step, not in the default run (its own call): bench 540, the full CUDA benchmark table of
#   benchmarks/test_kernels.py (pytest-benchmark; kernels_benchmark.json and kernels_summary.md for RESULTS.md).
#
# Output in $OUT (default ./gpu_results): summary.md, gpu.txt (GPU, driver, versions) and <step>.log per step.
# summary.md (also printed at the end): a "# gpu_check ..." title line naming the GPU, then a markdown table
# with one row per step:
#   | step | status | result (target) | seconds |
#   status  PASS     the step ran: tests passed / target met
#           MISS     the step ran, but its number missed the target
#           FAIL     error or failing tests (see <step>.log)
#           TIMEOUT  killed at its time limit
#           SKIP     a package it needs is missing (the result names it)
#   result  the step's "SUMMARY: ..." line (its key number against its target), else the pytest tally.
# Exit status: 0 when no step FAILs or TIMEOUTs (MISS and SKIP are reported, not failures), 1 otherwise,
# 2 when torch sees no CUDA GPU ("gpu_check: no CUDA GPU visible to torch"), 64 for an unknown step.
#
# Python: $PYTHON, else python, else python3. The GPU image lacks tqdm, torchvision, PIL, clean-fid, tensorboard,
# safetensors, matplotlib and tomli-w: wheels in .whl/ (if that folder exists) are installed first with
# pip --no-index --no-deps --target /tmp/nidiff_site. Without them the benchmark scripts use inert stand-ins
# (benchmarks/stand_ins.py), and the torchrun step, which runs the real command line, is SKIP.
set -uo pipefail
cd "$(dirname "$0")/.."

DEFAULT_STEPS="cuda-tests:40 triton:150 update:40 bandwidth:40 train:90 sample:45 torchrun:45"
OPTIONAL_STEPS="bench:540"

if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
elif command -v python >/dev/null 2>&1; then
    PY=python
else
    PY=python3
fi
RESULTS="${OUT:-gpu_results}"
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
export PY RESULTS
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
export NIDIFF_KERNELS=triton

limit_of() { # step -> its default limit, empty for an unknown step
    local entry
    for entry in $DEFAULT_STEPS $OPTIONAL_STEPS; do
        [ "${entry%%:*}" = "$1" ] && echo "${entry#*:}" && return 0
    done
    return 1
}
if [ $# -gt 0 ]; then STEPS=("$@"); else STEPS=(); for e in $DEFAULT_STEPS; do STEPS+=("${e%%:*}"); done; fi
for step in "${STEPS[@]}"; do
    if ! limit_of "$step" >/dev/null; then
        echo "gpu_check: unknown step '$step'; steps: $DEFAULT_STEPS $OPTIONAL_STEPS" >&2
        exit 64
    fi
done

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA GPU visible to torch" | tee "$RESULTS/gpu.txt" "$RESULTS/summary.md"
    exit 2
fi
if [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/nidiff_site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/nidiff_site"
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
    "$PY" -c "import torch, triton
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} | tee "$RESULTS/gpu.txt"
GPU_NAME=$("$PY" -c "import torch; print(torch.cuda.get_device_name())")

# ---- steps (each prints a final "SUMMARY: ..." line or a pytest tally; exit 0 pass, 3 target missed, 4 skip) ----
step_cuda_tests() {
    "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_covariance.py tests/test_kernels_cuda.py -k cuda
}

step_triton() {
    local ids n g i rc=0 pids=()
    mapfile -t ids < <("$PY" -m pytest -q -p no:cacheprovider --collect-only tests/kernels_triton/triton_cases.py \
        2>/dev/null | grep '::')
    [ ${#ids[@]} -gt 0 ] || { echo "no Triton cases collected"; return 1; }
    n=${GPU_CHECK_GROUPS:-8}
    rm -f "$RESULTS"/triton.group*.log
    for ((g = 0; g < n; g++)); do
        local chunk=()
        for ((i = g; i < ${#ids[@]}; i += n)); do chunk+=("${ids[$i]}"); done
        [ ${#chunk[@]} -gt 0 ] || continue
        "$PY" -m pytest -q -p no:cacheprovider -rs "${chunk[@]}" >"$RESULTS/triton.group$g.log" 2>&1 &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
    cat "$RESULTS"/triton.group*.log
    local tally
    tally=$(tail -q -n 1 "$RESULTS"/triton.group*.log | grep -oE '[0-9]+ (passed|failed|skipped|errors?)' \
        | awk '{n[$2] += $1} END {for (k in n) printf "%d %s, ", n[k], k}')
    echo "SUMMARY: ${tally%, } (${#ids[@]} cases in ${#pids[@]} parallel groups)"
    return $rc
}

step_update() { "$PY" benchmarks/test_kernels.py --gpu-check update; }
step_bandwidth() { "$PY" benchmarks/test_kernels.py --gpu-check bandwidth; }
step_train() { "$PY" benchmarks/gpu_train_step.py --config cifar10 --batch 128 --steps 30 --block 10; }
step_sample() { "$PY" benchmarks/gpu_sample_speed.py --config cifar10 --method dpm2m --steps 10 --batch 256; }

step_torchrun() {
    local missing work
    missing=$("$PY" -c "import importlib.util as u
print(' '.join(m for m in ('tqdm', 'PIL', 'tomli_w', 'safetensors', 'tensorboard', 'torchvision', 'cleanfid')
    if not u.find_spec(m)))")
    if [ -n "$missing" ]; then
        echo "SUMMARY: not run: the command line needs $missing (put their wheels in .whl/)"
        return 4
    fi
    work=$(mktemp -d)
    "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 run.py train --config tiny --device cuda \
        --train-steps 5 --workdir "$work/run" || return 1
    [ -f "$work/run/checkpoints/ckpt_00000005.pt" ] || { echo "no checkpoint of step 5 in $work/run"; return 1; }
    cat >"$work/nccl_probe.py" <<'EOF'
import os

import torch
import torch.distributed as dist

torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
dist.init_process_group("nccl")
t = torch.full((4,), float(dist.get_rank() + 1), device="cuda")
dist.all_reduce(t)
assert t.tolist() == [float(sum(range(1, dist.get_world_size() + 1)))] * 4, t
print(f"nccl all_reduce ok: world size {dist.get_world_size()}, nccl {torch.cuda.nccl.version()}")
dist.destroy_process_group()
EOF
    "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 "$work/nccl_probe.py" || return 1
    rm -rf "$work"
    echo "SUMMARY: torchrun train --config tiny, 5 steps on cuda: checkpoint written; NCCL all_reduce under torchrun ok"
}

step_bench() {
    "$PY" -m pytest -q -p no:cacheprovider benchmarks/test_kernels.py -k cuda --benchmark-enable \
        --benchmark-min-rounds=5 --benchmark-max-time=0.1 --benchmark-warmup=on \
        --benchmark-json="$RESULTS/kernels_benchmark.json" || return 1
    "$PY" benchmarks/test_kernels.py --summary "$RESULTS/kernels_benchmark.json" | tee "$RESULTS/kernels_summary.md"
    echo "SUMMARY: CUDA kernel benchmarks: table in kernels_summary.md"
}
export -f step_cuda_tests step_triton step_update step_bandwidth step_train step_sample step_torchrun step_bench

# ---- run ----------------------------------------------------------------------------------------------------------
{
    commit=$(git rev-parse --short HEAD 2>/dev/null || echo '?')
    echo "# gpu_check on $GPU_NAME, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit"
    echo
    echo "| step | status | result (target) | seconds |"
    echo "|---|---|---|---:|"
} >"$RESULTS/summary.md"
failed=0
for step in "${STEPS[@]}"; do
    var="GPU_CHECK_TIMEOUT_$(echo "$step" | tr 'a-z-' 'A-Z_')"
    limit=${!var:-$(limit_of "$step")}
    log="$RESULTS/$step.log"
    echo "== $step (limit ${limit} s)"
    start=$SECONDS
    timeout --kill-after=10 "$limit" bash -c "step_${step//-/_}" >"$log" 2>&1
    rc=$?
    tail -n 8 "$log"
    case $rc in
        0) status=PASS ;;
        3) status=MISS ;;
        4) status=SKIP ;;
        124 | 137) status=TIMEOUT ;;
        *) status=FAIL ;;
    esac
    case $status in FAIL | TIMEOUT) failed=1 ;; esac
    result=$(grep -a '^SUMMARY: ' "$log" | tail -n 1 | cut -c 10-)
    [ -n "$result" ] || result=$(grep -aE '[0-9]+ (passed|failed|skipped|errors?)' "$log" | tail -n 1 | tr -d '=')
    [ -n "$result" ] || result="exit status $rc, see $step.log"
    [ "$status" = TIMEOUT ] && result="killed after ${limit} s; $result"
    echo "| $step | $status | ${result//|//} | $((SECONDS - start)) |" >>"$RESULTS/summary.md"
done
echo
cat "$RESULTS/summary.md"
exit $failed
