#!/usr/bin/env bash
# Sets up the machine (scripts/setup.sh), builds Freshet with warnings as errors, and runs every test:
# the C++ unit tests (GoogleTest) and the end-to-end tests (pytest) through ctest.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash scripts/setup.sh
# Every setting that scripts/demo.sh may have changed in the same folder is set back here.
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFRESHET_WERROR=ON -DFRESHET_BUILD_TESTS=ON \
  -DFRESHET_BUILD_BENCH=ON >/dev/null
ninja -C build -j"$(nproc)"
ctest --test-dir build --output-on-failure -j"$(nproc)" --timeout 600
