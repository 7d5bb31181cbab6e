#!/usr/bin/env bash
# One command for a lent GPU (benchmarks/gpu_check.py): at most 7 minutes, installs included.
# It runs on the GPU image's own Python and torch (never a carried .venv), with the packages
# the image lacks installed from the wheelhouse (.whl/, made by `make gpu-wheels`) into a
# temporary folder. PYTHON and WHEELS name others (the rehearsal: make gpu-rehearsal).
set -uo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for candidate in /opt/torch/.venv/bin/python3 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PY=$(command -v "$candidate"); break; fi
  done
fi
case "$(cd "$(dirname "$PY")" 2>/dev/null && pwd)" in
  "$PWD"/.venv/*) echo "gpu_check: $PY is the tree's own .venv; the check runs on the image's Python"; exit 2 ;;
esac
WHEELS=${WHEELS:-.whl}
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
count=$(ls "$WHEELS"/*.whl 2>/dev/null | wc -l)
if [ "$count" -gt 0 ]; then
  if "$PY" -m pip --version >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check \
      --target "$site" "$WHEELS"/*.whl >"$site.log" 2>&1 || echo "gpu_check: the wheelhouse did not install: $(tail -1 "$site.log")"
    rm -f "$site.log"
  else  # no pip there: a wheel is a zip of what lies in site-packages
    "$PY" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' "$site" "$WHEELS"/*.whl \
      || echo "gpu_check: the wheelhouse did not unpack"
  fi
fi
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
"$PY" -c "import sys, torch; print(f'gpu_check: {sys.executable} (Python {sys.version.split()[0]}), its own torch \
{torch.__version__} from {torch.__file__.rsplit(\"/\", 2)[0]}; $count wheels from $WHEELS installed into a temporary \
folder in $((SECONDS - start)) s')" || { echo "gpu_check: $PY has no torch"; exit 2; }
left=$((410 - (SECONDS - start)))
timeout --kill-after=5 $((left + 10)) "$PY" benchmarks/gpu_check.py --budget "$left" "$@"
