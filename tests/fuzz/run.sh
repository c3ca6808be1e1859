#!/usr/bin/env bash
# Runs libFuzzer targets of tests/fuzz/ for a bounded time each (docs/reliability.md, Fuzzing).
#
#   tests/fuzz/run.sh [TARGET...] [--seconds N] [--jobs J] [-- LIBFUZZER_ARGS...]
#
# TARGET: cow_loader, disk_log, volume_table, control_request (default: all four). Builds build-fuzz (clang,
# -DKCOPYFS_FUZZ=ON) when needed, copies the seed corpus to build-fuzz/fuzz-work/TARGET/corpus (new inputs
# collect there, the checked-in corpus is never written), and runs each target for N seconds (default 30).
# A crash leaves its input in build-fuzz/fuzz-work/TARGET/ and the script exits 1 once all targets ran.
# Environment: BUILD_DIR (default build-fuzz), CC/CXX (default clang/clang++).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${BUILD_DIR:-$root/build-fuzz}"
seconds=30
jobs=2
targets=()
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    cow_loader|disk_log|volume_table|control_request) targets+=("$1"); shift ;;
    *) echo "run.sh: unknown target or option '$1'" >&2; exit 2 ;;
  esac
done
[[ ${#targets[@]} -gt 0 ]] || targets=(cow_loader disk_log volume_table control_request)

# The compiler is chosen when the directory is first configured; KCOPYFS_FUZZ is (re)asserted every time.
if [[ ! -f "$build/CMakeCache.txt" ]]; then
  CC="${CC:-clang}" CXX="${CXX:-clang++}" cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DKCOPYFS_FUZZ=ON >/dev/null
else
  cmake -S "$root" -B "$build" -DKCOPYFS_FUZZ=ON >/dev/null
fi
fuzzers=()
for t in "${targets[@]}"; do fuzzers+=("fuzz_$t"); done
cmake --build "$build" -j "$jobs" --target "${fuzzers[@]}" >/dev/null

status=0
for t in "${targets[@]}"; do
  work="$build/fuzz-work/$t"
  rm -rf "$work/corpus"
  mkdir -p "$work/corpus"
  cp "$root/tests/fuzz/corpus/$t/"* "$work/corpus/"
  exe="$(find "$build" -name "fuzz_$t" -type f -executable | head -n1)"
  echo "== $t: ${seconds}s"
  # -rss_limit_mb: the COW and log images are at most a few MiB; -timeout catches a loader that hangs.
  if ! (cd "$work" && "$exe" -max_total_time="$seconds" -timeout=25 -rss_limit_mb=2048 -print_final_stats=1 \
          ${extra[@]+"${extra[@]}"} corpus 2>&1 | tee "$work/log" | grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units|==[0-9]+==ERROR|SUMMARY|artifact_prefix|Test unit written)' ); then
    :
  fi
  if grep -qE 'ERROR: libFuzzer|ERROR: AddressSanitizer|runtime error|Test unit written' "$work/log"; then
    echo "== $t: FINDING (see $work/log)"; status=1
  fi
done
exit $status
