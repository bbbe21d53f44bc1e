#!/usr/bin/env bash
# Compile every csrc/*.cu for sm_80 and sm_90a with nvcc (object files only), so a CUDA
# syntax error or a register spill fails CI on machines with no GPU, and every csrc/*.c with the C compiler
# and the CPU loader's flags, warnings as errors. Each step skips cleanly where its
# compiler is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
shopt -s nullglob
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

cc=${CC:-cc}
c_sources=(csrc/*.c)
if ! command -v "$cc" >/dev/null 2>&1; then
    echo "$cc not found: skipping the C compile check"
elif [ ${#c_sources[@]} -gt 0 ]; then
    # the loader's own flags; runs from the checkout, installed or not (torch needed)
    flags=$(PYTHONPATH=. python -c "from step.native.cpu.loader import FLAGS; print(' '.join(FLAGS))")
    for src in "${c_sources[@]}"; do
        name=$(basename "$src" .c)
        # shellcheck disable=SC2086
        "$cc" $flags -Wall -Wextra -Werror "$src" -o "$out/$name.so" -lm
        echo "ok  $src  ($cc)"
    done
fi

if ! command -v nvcc >/dev/null 2>&1; then
    echo "nvcc not found: skipping the CUDA compile check"
    exit 0
fi
sources=(csrc/*.cu)
if [ ${#sources[@]} -eq 0 ]; then
    echo "no csrc/*.cu files"
    exit 0
fi
for arch in sm_80 sm_90a; do
    for src in "${sources[@]}"; do
        name=$(basename "$src" .cu)
        # ptxas warns on register spills and local memory: with -Werror they fail too
        nvcc -std=c++17 -arch="$arch" -Icsrc -Werror all-warnings \
            -Xptxas -warn-spills,-warn-lmem-usage -c "$src" -o "$out/$name.$arch.o"
        echo "ok  $src  ($arch)"
    done
done
