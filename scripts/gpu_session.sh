#!/usr/bin/env bash
# Everything a session with a lent GPU should run, in phases that each fit one device call
# (10 minutes): results and logs go under $OUT (default: gpu_out/), to be committed to
# benchmarks/results/ and experiments/accuracy/results/gpu/.
#
#   bash scripts/gpu_session.sh tests   # install, device info, the gpu-marked tests (~5 min)
#   bash scripts/gpu_session.sh bench   # the GPU benchmarks, baselines in the same run
#   bash scripts/gpu_session.sh study   # the accuracy study's [gpu] configurations; it
#                                       # resumes, so call it again until it is complete
#
# A phase never stops at the first failure: every step's exit status is logged in
# $OUT/status.txt, so one broken kernel does not hide the other results.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT/results" "$OUT/logs"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log output and status
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*"
    timeout "$limit" "$@" >"$OUT/logs/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc" | tee -a "$OUT/status.txt"
    tail -n 5 "$OUT/logs/$name.log"
}

install() {
    pip install --no-deps --no-build-isolation -q -e . >"$OUT/logs/install.log" 2>&1 || {
        echo "install failed: see $OUT/logs/install.log"
        exit 1
    }
}

case "${1:-}" in
tests)
    install
    nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
    step-sparsity info --json >"$OUT/info.json" 2>&1
    step gpu_tests 480 python -m pytest -m gpu -q -p no:cacheprovider -rf \
        --junitxml="$OUT/gpu_tests.xml"
    ;;
bench)
    install
    step bench_sparse24_gemm 150 python benchmarks/bench_sparse24_gemm.py --out "$OUT/results"
    step bench_nm_matmul 150 python benchmarks/bench_nm_matmul.py --out "$OUT/results"
    step bench_optimizer 90 python benchmarks/bench_optimizer.py --device cuda --out "$OUT/results"
    step bench_sparsify 60 python benchmarks/bench_sparsify.py --device cuda --out "$OUT/results"
    step bench_inference 60 python benchmarks/bench_inference.py --device cuda --out "$OUT/results"
    ;;
study)
    install
    step study_gpu 560 python experiments/accuracy/study.py --scale gpu --jobs 4 \
        --results experiments/accuracy/results --work "$OUT/runs"
    cp -r experiments/accuracy/results/gpu "$OUT/accuracy-gpu"
    rm -rf "$OUT/runs"
    ;;
*)
    echo "usage: bash scripts/gpu_session.sh tests|bench|study" >&2
    exit 2
    ;;
esac
