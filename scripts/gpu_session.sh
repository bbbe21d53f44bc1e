#!/usr/bin/env bash
# The one GPU validation call (a thin wrapper around the package scripts/gpu_session/,
# which says it all in its docstring and --help). On a lent GPU machine, in one device call:
#
#   bash scripts/gpu_session.sh              # install, preflight, gpu tests, quick benchmarks
#                                            # within 540 s; at most 3 files in $OUT:
#                                            # summary.txt, results.tar.gz, results.json
#   bash scripts/gpu_session.sh --dry-run    # the same pipeline on a CPU machine, no GPU work
#   bash scripts/gpu_session.sh study        # the accuracy study's [gpu] configurations
#                                            # instead; it resumes, so call it again until done
#
# Exit status: 0 PASS (or DRY-RUN OK), 1 FAIL, 2 usage error, 3 PARTIAL (a deadline hit).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "study" ]]; then
    shift
    exec "${PYTHON:-python3}" scripts/gpu_session --study "$@"
fi
exec "${PYTHON:-python3}" scripts/gpu_session "$@"
