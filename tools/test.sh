#!/usr/bin/env bash
# Installs what is missing, builds kcopyfs twice (Release, and ASan+UBSan) and runs the whole suite in each,
# then the libFuzzer targets for a bounded time (a third, clang build).
# Exits non-zero on any failure. .ci/run calls this.
set -euo pipefail
source "$(dirname "$0")/lib/setup.sh"
kcopyfs_install_missing "${KCOPYFS_PACKAGES[@]}"
cd "$KCOPYFS_ROOT"

status=0
echo "== Release build (build/)"
kcopyfs_build build -DCMAKE_BUILD_TYPE=Release
(cd build && ctest --output-on-failure --timeout 600) || status=1

echo "== AddressSanitizer + UBSan build (build-asan/)"
kcopyfs_build build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKCOPYFS_SANITIZE=ON
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
(cd build-asan && ctest --output-on-failure --timeout 900) || status=1

echo "== libFuzzer targets (build-fuzz/, clang, ASan+UBSan): the seeds, past findings, then 10 s of fuzzing each"
kcopyfs_install_missing clang libclang-rt-14-dev
tests/fuzz/run.sh --seconds 10 || status=1
(cd build-fuzz && ctest -L fuzz --output-on-failure --timeout 120) || status=1
exit $status
