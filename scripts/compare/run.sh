#!/usr/bin/env bash
# Side-by-side comparison of clustered-conv with PyTorch (3x3 conv2d) and scikit-learn
# (k-means), on this machine, with 1 and 2 threads on both sides. Prints one markdown table.
#
# Usage: bash scripts/compare/run.sh [--quick] [--regen] [--threads "1 2"] [--weights skewed|normal]
#                                    [--train-only]
#   --quick    2 shapes, short timing, 1 timed k-means fit: checks the harness end to end
#   --train-only  only the training step of the flagship network (no conv, no k-means)
#   --regen    regenerate the shared .npy data even if it exists
#   --threads  thread counts to run (default "1 2")
#   --weights  synthetic weights of the conv layers (default skewed; implies --regen when it
#              differs from the existing data)
#
# Needs the venv of setup.sh. Uses CARGO_TARGET_DIR (default target/compare-build), writes the
# data to target/compare-data and the JSON results to target/compare-results.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
here="scripts/compare"

quick=0
regen=0
threads="1 2"
weights="skewed"
train_only=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) quick=1 ;;
        --regen) regen=1 ;;
        --threads) threads="$2"; shift ;;
        --weights) weights="$2"; shift ;;
        --train-only) train_only=1 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/compare-build}"
python="$root/target/compare-venv/bin/python"
if [[ ! -x "$python" ]]; then
    echo "run.sh: no venv at target/compare-venv; run: bash $here/setup.sh" >&2
    exit 1
fi
data="$root/target/compare-data"
results="$root/target/compare-results"
mkdir -p "$results"

# The timing protocol, passed identically to both sides; --quick also limits the shapes.
if [[ $quick == 1 ]]; then
    protocol=(--min-runs 5 --min-secs 0.1 --max-secs 0.5 --warmup-secs 0.05)
    kmeans_runs=1
    only="vgg_64_32,resnet_256_14"
else
    protocol=(--min-runs 20 --min-secs 1 --max-secs 5 --warmup-secs 0.2)
    kmeans_runs=7
    only=""
fi
only_args=()
if [[ -n $only ]]; then only_args=(--only "$only"); fi

load_start="$(cut -d' ' -f1-3 /proc/loadavg)"

# Build our side once (release), then generate the shared data once.
echo "== building examples/compare (release, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)" >&2
cargo build --quiet --release --example compare
ours=(cargo run --quiet --release --example compare --)
if [[ $regen == 1 || ! -f "$data/manifest.json" || ! -f "$data/train/x.npy" ]] \
    || ! grep -q "\"weights\": \"$weights\"" "$data/manifest.json"; then
    echo "== generating data in $data ($weights weights)" >&2
    rm -rf "$data"
    "${ours[@]}" gen --data "$data" --weights "$weights"
fi

# Remove stale results so the table only shows this run.
rm -f "$results"/{ours,torch,sklearn,torchtrain}_t*.json
ours_only=()
if [[ $train_only == 1 ]]; then ours_only=(--train-only); fi
for n in $threads; do
    pin=(env OMP_NUM_THREADS="$n" MKL_NUM_THREADS="$n" OPENBLAS_NUM_THREADS="$n")
    echo "== $n thread(s): ours" >&2
    "${pin[@]}" RAYON_NUM_THREADS="$n" "${ours[@]}" bench --data "$data" \
        --out "$results/ours_t$n.json" "${protocol[@]}" "${only_args[@]}" \
        --kmeans-runs "$kmeans_runs" "${ours_only[@]}"
    if [[ $train_only == 0 ]]; then
        echo "== $n thread(s): PyTorch" >&2
        "${pin[@]}" "$python" "$here/bench_python.py" conv --data "$data" \
            --out "$results/torch_t$n.json" --threads "$n" "${protocol[@]}" "${only_args[@]}"
        echo "== $n thread(s): scikit-learn" >&2
        "${pin[@]}" "$python" "$here/bench_python.py" kmeans --data "$data" \
            --out "$results/sklearn_t$n.json" --threads "$n" --runs "$kmeans_runs"
    fi
    echo "== $n thread(s): PyTorch training step" >&2
    "${pin[@]}" "$python" "$here/bench_python.py" train --data "$data" \
        --out "$results/torchtrain_t$n.json" --threads "$n" "${protocol[@]}"
done

machine="$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1), $(nproc) CPUs"
note="load average (1, 5, 15 min) at start: $load_start; at end: $(cut -d' ' -f1-3 /proc/loadavg)"
if [[ $quick == 1 ]]; then note="QUICK MODE (2 shapes, short timing; harness check only); $note"; fi
echo >&2
"$python" "$here/table.py" --results "$results" --threads "${threads// /,}" \
    --machine "$machine" --rustc "$(rustc --version)" --note "$note"
