#!/usr/bin/env bash
# make gpu-rehearsal: benchmarks/gpu_check.sh on this machine's CPU, in an environment that
# holds only the GPU image's packages that editx touches (benchmarks/gpu_image.txt, at the
# image's versions where the package index has them; torch 2.13 for the CPU stands in for the
# image's CUDA torch) plus the wheelhouse built for this Python, with the tiny shape through
# every part. Whatever the check would miss on the image, for want of a package, fails here.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${REHEARSAL:-.rehearsal}
start=$SECONDS
if [ ! -f "$venv/.ready" ] || [ benchmarks/gpu_image.txt -nt "$venv/.ready" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  pip=("$venv/bin/pip" install -q --disable-pip-version-check)
  "${pip[@]}" torch==2.13.0
  # the image's own torch and triton are CUDA builds: torch 2.13 for the CPU stands in
  mapfile -t entries < <(grep -v '^\s*#' benchmarks/gpu_image.txt | sed 's/#.*//;s/\s//g' | grep -v '^$' \
                         | grep -v -E '^(torch|triton)(==|$)')
  pins=()
  for entry in "${entries[@]}"; do  # a version the index lacks gives way to its latest
    if [[ "$entry" == *==* ]] && ! "${pip[@]}" --dry-run --no-deps "$entry" >/dev/null 2>&1; then
      echo "rehearsal: ${entry%%==*}: the index has no $entry; its latest instead"
      entry=${entry%%==*}
    fi
    pins+=("$entry")
  done
  "${pip[@]}" "${pins[@]}" torch==2.13.0
  touch "$venv/.ready"
fi
version=$("$venv/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
PIP="$venv/bin/python -m pip" bash scripts/gpu_wheels.sh "$version" "$venv/wheels"
echo "rehearsal: environment ready in $((SECONDS - start)) s"
PYTHON="$venv/bin/python" WHEELS="$venv/wheels" bash benchmarks/gpu_check.sh --device cpu --shape tiny "$@"
echo "rehearsal: $((SECONDS - start)) s in all"
