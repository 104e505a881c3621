#!/bin/sh
# Download the wheels of benchmarks/gpu_wheels.txt for the accelerator machine (CPython 3.12,
# x86-64) into .whl/ (ignored by git), to carry with a `device` run: see benchmarks/gpu_check.py.
set -eu
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
grep -v '^#' benchmarks/gpu_wheels.txt | while read -r req; do
  [ -n "$req" ] || continue
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .whl "$req"
done
du -sh .whl
