#!/usr/bin/env bash
# Compile every csrc/*.cu for sm_80 and sm_90a with nvcc (object files only), so a CUDA
# syntax error fails CI on machines with no GPU. Skips cleanly where nvcc is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvcc >/dev/null 2>&1; then
    echo "nvcc not found: skipping the CUDA compile check"
    exit 0
fi
shopt -s nullglob
sources=(csrc/*.cu)
if [ ${#sources[@]} -eq 0 ]; then
    echo "no csrc/*.cu files"
    exit 0
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for arch in sm_80 sm_90a; do
    for src in "${sources[@]}"; do
        name=$(basename "$src" .cu)
        nvcc -std=c++17 -arch="$arch" -Icsrc -Werror all-warnings -c "$src" -o "$out/$name.$arch.o"
        echo "ok  $src  ($arch)"
    done
done
