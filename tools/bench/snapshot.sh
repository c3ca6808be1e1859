#!/usr/bin/env bash
# Runs the snapshot benchmark (tools/bench/snapshot_bench.cc): origin writes through kcopyfs::Origin with 0-8
# persistent snapshots against the raw device, the load time of a store of 1,000,000 exceptions and the memory
# per exception. docs/benchmarks.md ("Snapshots (issue 3)") explains the figures; run with --help for options.
# Builds nothing: build the snapshot_bench target first.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: tools/bench/snapshot.sh [OPTIONS] [-- SNAPSHOT_BENCH_ARGS...]

Runs snapshot_bench once and prints its tables. In one run, interleaved round-robin over the configurations
(raw FileDevice; Origin with 0 snapshots; Origin with 1, 2, 4, 8 persistent snapshots of 4 KiB and 64 KiB
chunks), each repetition on fresh files, page cache dropped before every measurement (root only):
  (a) 4 KiB random first writes at queue depth 16 (IOPS; every write lands on a chunk not copied yet)
  (b) 1 MiB sequential writes at queue depth 4 (MiB/s)
  (c) load time of a persistent store of 1,000,000 exceptions, cold cache
  (d) ExceptionTable bytes per exception (random and sequential fills) and the RSS of an attach
Timings include the final flush. The scratch directory and everything in it is removed at exit.

Options:
  -n, --reps N          repetitions (default 3)
  -w, --workdir DIR     make the scratch directory inside DIR, on a disk-backed filesystem that supports
                        O_DIRECT (default /var/tmp); needs about 10 GiB free with the defaults
  -s, --seconds S       time cap of one write measurement (default 3)
  -b, --bench PATH      snapshot_bench binary (default build/tools/snapshot_bench under the repository root)
      --csv FILE        also write every write measurement to FILE
  -h, --help            show this help
Arguments after -- go to snapshot_bench unchanged (see `snapshot_bench --help`: --parts, --snapshots,
--chunks, --origin-size, --exceptions, --cow-prefill).
EOF
}

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$script_dir/../.." && pwd)

reps=3
parent=/var/tmp
seconds=3
bench=$repo_root/build/tools/snapshot_bench
extra=()

while [ $# -gt 0 ]; do
  case $1 in
    -n | --reps) reps=${2:?--reps needs a value}; shift 2 ;;
    -w | --workdir) parent=${2:?--workdir needs a value}; shift 2 ;;
    -s | --seconds) seconds=${2:?--seconds needs a value}; shift 2 ;;
    -b | --bench) bench=${2:?--bench needs a value}; shift 2 ;;
    --csv) extra+=(--csv "${2:?--csv needs a value}"); shift 2 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; extra+=("$@"); break ;;
    *) echo "snapshot.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

die() { echo "snapshot.sh: $*" >&2; exit 1; }

[[ $reps =~ ^[1-9][0-9]*$ ]] || die "--reps takes a positive integer, not '$reps'"
[[ $seconds =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--seconds takes a number, not '$seconds'"
case $bench in /*) ;; *) bench=$repo_root/$bench ;; esac
[ -x "$bench" ] || die "no snapshot_bench binary at $bench (build the snapshot_bench target, or pass --bench PATH)"
[ -d "$parent" ] || die "--workdir $parent is not a directory"
fstype=$(findmnt -n -o FSTYPE -T "$parent" 2>/dev/null || echo "?")
[ "$fstype" != tmpfs ] || die "--workdir $parent is on tmpfs: no O_DIRECT, and the figures would be of memory"
if [ "$(id -u)" -ne 0 ]; then
  echo "snapshot.sh: warning: not root, so the page cache is not dropped between measurements" >&2
fi

echo "snapshot benchmark: $(date -u '+%Y-%m-%d %H:%M UTC'), $(git -C "$repo_root" rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "  machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.1f GiB RAM", $2 / 1048576}' /proc/meminfo)," \
  "kernel $(uname -r), $fstype on $(findmnt -n -o SOURCE -T "$parent" 2>/dev/null || echo '?')"
echo "  command: $bench --workdir $parent --reps $reps --seconds $seconds ${extra[*]}"
pressure() { if [ -r /proc/pressure/io ]; then awk '/^some/ {print $2 ", " $3}' /proc/pressure/io; else echo n/a; fi; }
echo "  at start: load average $(cut -d' ' -f1-3 /proc/loadavg); I/O pressure some $(pressure)"
"$bench" --workdir "$parent" --reps "$reps" --seconds "$seconds" "${extra[@]}"
echo "  at end: load average $(cut -d' ' -f1-3 /proc/loadavg); I/O pressure some $(pressure)"
