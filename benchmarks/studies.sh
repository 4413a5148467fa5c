#!/usr/bin/env bash
# The two digits studies, one after the other, each resumable (rerun this script after any stop; finished rows
# and trained models are kept): the paper's Table 1 question (digits_study.toml) and the spectral family
# (spectral_study.toml). Each study's CSV is copied to benchmarks/results/ and plotted when it finishes; a study
# stopped before its last cell (SIGTERM to its workers) stops the script.
# Usage: nohup bash benchmarks/studies.sh > runs/studies.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
for name in digits_study spectral_study; do
    last=$(python run.py study "benchmarks/$name.toml" --workers 2 | tee /dev/stderr | tail -n 1)
    if ! [[ "$last" =~ ^([0-9]+)\ of\ ([0-9]+)\ cells && "${BASH_REMATCH[1]}" == "${BASH_REMATCH[2]}" ]]; then
        echo "$name stopped before its last cell ($last); rerun this script to continue" >&2
        exit 1
    fi
    cp "runs/$name/study.csv" "benchmarks/results/$name.csv"
    python run.py study "benchmarks/$name.toml" --plots
done
