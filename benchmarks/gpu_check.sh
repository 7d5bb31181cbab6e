#!/usr/bin/env bash
# One command for a lent GPU: the decode table, the deterministic CLI, serve's idle release
# and the vocoder, printed as one table (see benchmarks/gpu_check.py). Under 5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec timeout 330 "$PY" benchmarks/gpu_check.py "$@"
