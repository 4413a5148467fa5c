#!/usr/bin/env bash
# The two digits studies, one after the other, each resumable (rerun this script after any stop; finished rows
# and trained models are kept): the paper's Table 1 question (digits_study.toml) and the spectral family
# (spectral_study.toml). When a study finishes it is plotted and its CSV, loss curves (losses.csv), summary and plots
# are copied to benchmarks/results/<name>*; a study stopped before its last cell (SIGTERM to its workers) stops the
# script. On a fresh checkout, first copy benchmarks/results/<name>.csv to runs/<name>/study.csv and
# benchmarks/results/<name>_losses.csv to runs/<name>/losses.csv: the study then resumes from the committed rows.
# Usage: nohup bash benchmarks/studies.sh > runs/studies.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
for name in digits_study spectral_study; do
    last=$(python run.py study "benchmarks/$name.toml" --workers 2 | tee /dev/stderr | tail -n 1)
    if ! [[ "$last" =~ ^([0-9]+)\ of\ ([0-9]+)\ cells && "${BASH_REMATCH[1]}" == "${BASH_REMATCH[2]}" ]]; then
        echo "$name stopped before its last cell ($last); rerun this script to continue" >&2
        exit 1
    fi
    python run.py study "benchmarks/$name.toml" --plots
    cp "runs/$name/study.csv" "benchmarks/results/$name.csv"
    cp "runs/$name/losses.csv" "benchmarks/results/${name}_losses.csv"
    for f in summary.md fd_vs_steps.png fd_vs_training.png loss_curves.png; do
        if [[ -f "runs/$name/$f" ]]; then cp "runs/$name/$f" "benchmarks/results/${name}_$f"; fi
    done
done
