#!/usr/bin/env bash
# The wheelhouse for the GPU machine, which reaches no package index: pinned wheels of what the
# checked paths (benchmarks/gpu_check.sh) import that the GPU image lacks, every dependency
# named (benchmarks/gpu_wheels.txt), for one Python (default: the image's 3.12), manylinux
# x86_64. Packages published only as source are built here into pure-Python wheels.
#   bash scripts/gpu_wheels.sh [PYTHON_VERSION] [DEST]      # make gpu-wheels: 3.12 into .whl/
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-3.12}
dest=${2:-.whl}
limit=$((60 * 1024 * 1024))
pip=(${PIP:-python3 -m pip})
rm -rf "$dest"
mkdir -p "$dest"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux2010_x86_64 manylinux1_x86_64 linux_x86_64; do
  platforms+=(--platform "$p")
done
grep -v '^\s*#' benchmarks/gpu_wheels.txt | sed 's/#.*//' | while read -r pin; do
  [ -n "$pin" ] || continue
  if ! "${pip[@]}" download -q --disable-pip-version-check --no-deps --only-binary=:all: --dest "$dest" \
      --python-version "$version" --implementation cp "${platforms[@]}" "$pin" 2>/dev/null; then
    # no wheel for that Python: only a source release, built here (it must be pure Python)
    if ! "${pip[@]}" wheel -q --disable-pip-version-check --no-deps --wheel-dir "$dest" "$pin" >"$dest/.log" 2>&1; then
      cat "$dest/.log"; echo "gpu_wheels: no wheel of $pin for Python $version"; exit 1
    fi
  fi
done
rm -f "$dest/.log"
for w in "$dest"/*.whl; do
  case "$w" in *-none-any.whl|*-none-manylinux*|*-cp${version/./}-*|*-abi3-*) ;;
    *) echo "gpu_wheels: $w is not for Python $version"; exit 1;; esac
done
size=$(du -cb "$dest"/*.whl | tail -1 | cut -f1)
echo "gpu_wheels: $(ls "$dest"/*.whl | wc -l) wheels for Python $version in $dest, $((size / 1024 / 1024)) MiB"
if [ "$size" -gt "$limit" ]; then
  echo "gpu_wheels: over the 60 MiB the tree may carry to the GPU machine"; exit 1
fi
