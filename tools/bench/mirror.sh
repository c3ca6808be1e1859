#!/usr/bin/env bash
# Runs the mirror benchmark (tools/bench/mirror_bench.cc): resync of a 2-leg mirror against fio's copy ceiling,
# throttle accuracy, writes through an in-sync mirror against the raw device, and the resync after a crash.
# docs/benchmarks.md ("Mirrors (issue 4)") explains the figures; run with --help for the options.
# Builds nothing: build the mirror_bench target first.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: tools/bench/mirror.sh [OPTIONS] [-- MIRROR_BENCH_ARGS...]

Runs mirror_bench once and prints its tables. In one run, interleaved round-robin in a rotating order, page
cache dropped before every measurement (root only), O_DIRECT image files in a scratch directory:
  (1) resync of a 2-leg mirror (core log, leg 0 random data, leg 1 different) with resync_window 1, 8 and 64,
      against fio's copy ceiling (1 MiB QD16 read of leg 0 and write of leg 1 at once, as copy.sh)
  (2) a forced resync throttled to 64 and 200 MiB/s: achieved rate against the cap
  (3) 1 MiB sequential writes QD4 and 4 KiB random writes QD16: raw device vs 2-leg in-sync mirror (disk log)
  (4) a child process writes 64 MiB of whole random regions through a disk-log mirror and exits without a
      clean shutdown; the reopened mirror's resync is measured (bytes resynced, time)
The scratch directory and everything in it is removed at exit.

Options:
  -n, --reps N          repetitions (default 3)
  -w, --workdir DIR     make the scratch directory inside DIR, on a disk-backed filesystem that supports
                        O_DIRECT (default /var/tmp); needs about 2 GiB free with the defaults
  -s, --size SIZE       leg size (default 1G)
  -b, --bench PATH      mirror_bench binary (default build/tools/mirror_bench under the repository root)
  -h, --help            show this help
Arguments after -- go to mirror_bench unchanged (see `mirror_bench --help`: --windows, --caps,
--throttle-seconds, --write-seconds, --dirty, --fio, --resync-only).
USAGE
}

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$script_dir/../.." && pwd)

reps=3
parent=/var/tmp
size=1G
bench=$repo_root/build/tools/mirror_bench
extra=()

while [ $# -gt 0 ]; do
  case $1 in
    -n | --reps) reps=${2:?--reps needs a value}; shift 2 ;;
    -w | --workdir) parent=${2:?--workdir needs a value}; shift 2 ;;
    -s | --size) size=${2:?--size needs a value}; shift 2 ;;
    -b | --bench) bench=${2:?--bench needs a value}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; extra+=("$@"); break ;;
    *) echo "mirror.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

die() { echo "mirror.sh: $*" >&2; exit 1; }

[[ $reps =~ ^[1-9][0-9]*$ ]] || die "--reps takes a positive integer, not '$reps'"
case $bench in /*) ;; *) bench=$repo_root/$bench ;; esac
[ -x "$bench" ] || die "no mirror_bench binary at $bench (build the mirror_bench target, or pass --bench PATH)"
[ -d "$parent" ] || die "--workdir $parent is not a directory"
command -v fio >/dev/null || die "fio is missing (Debian package fio)"
[ "$(id -u)" -eq 0 ] || echo "mirror.sh: warning: not root, the page cache is not dropped between measurements" >&2

echo "machine: $(nproc) CPUs, kernel $(uname -r), $(findmnt -n -o FSTYPE,SOURCE -T "$parent"), $(fio --version)"
exec "$bench" --workdir "$parent" --reps "$reps" --size "$size" "${extra[@]}"
