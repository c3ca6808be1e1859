#!/usr/bin/env bash
# Benchmarks `kcopyfs copy` against nbdcopy, dd and fio's concurrent read+write ceiling on one filesystem, in one
# run, interleaved round-robin, page cache dropped before every measurement. Needs root (drop_caches).
# docs/benchmarks.md explains the figures; run with --help for the options.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: tools/bench/copy.sh [OPTIONS]

Measures, for each repetition and in rotating round-robin order (page cache dropped before each measurement,
durability included in every timing):
  kcopyfs         kcopyfs copy SRC DST                (offload allowed: copy_file_range on one filesystem)
  kcopyfs-nooff   kcopyfs copy --no-offload SRC DST   (io_uring O_DIRECT read + write)
  nbdcopy         nbdcopy --flush SRC DST             (local files; buffered pread/pwrite + fsync)
  dd              dd bs=1M iflag=direct oflag=direct conv=fdatasync
  fio-ceiling     one fio run, two jobs at once: 1 MiB QD16 O_DIRECT sequential read of SRC and write of DST
                  (io_uring, end_fsync=1); rate = SIZE / runtime of the slower job
  kcopyfs-3dest   kcopyfs copy SRC D1 D2 D3           (rate = SIZE / time: source bytes per second)
  nbdcopy-3x      nbdcopy --flush SRC Di, three runs in a row (nbdcopy has no fan-out; same rate definition;
                  the cache is dropped before the first run only, so runs 2 and 3 may read cached source)
  fio-ceiling-3   as fio-ceiling with three write jobs (D1 D2 D3) beside the read: the fan-out ceiling
Each destination is deleted (and the deletion synced) before its measurement, so every tool writes new files.
Every copy is checked once with cmp, outside the timed region. The source is SIZE bytes from /dev/urandom,
written once. Read-once evidence: the read/write bytes the kernel charged to the process (/usr/bin/time %I/%O,
which covers io_uring's worker threads) and the sectors the backing block device read during the run.

Options:
  -n, --reps N          repetitions (default 5)
  -s, --size SIZE       source size, a multiple of 1 MiB; K/M/G suffixes are binary (default 1G)
  -w, --workdir DIR     create the scratch directory inside DIR (default /var/tmp); the scratch directory and
                        everything in it is removed at exit
  -k, --kcopyfs PATH    kcopyfs binary (default build/kcopyfs relative to the repository root)
      --csv FILE        also write every measurement (rep,tool,seconds,MiB/s,read_bytes,write_bytes) to FILE
  -h, --help            show this help
EOF
}

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$script_dir/../.." && pwd)
# shellcheck source=../lib/setup.sh disable=SC1091 # followed only with shellcheck -x
source "$repo_root/tools/lib/setup.sh"

reps=5
size_text=1G
parent=/var/tmp
kcopyfs=$repo_root/build/kcopyfs
csv=""

while [ $# -gt 0 ]; do
  case $1 in
    -n | --reps) reps=${2:?--reps needs a value}; shift 2 ;;
    -s | --size) size_text=${2:?--size needs a value}; shift 2 ;;
    -w | --workdir) parent=${2:?--workdir needs a value}; shift 2 ;;
    -k | --kcopyfs) kcopyfs=${2:?--kcopyfs needs a value}; shift 2 ;;
    --csv) csv=${2:?--csv needs a value}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "copy.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

die() { echo "copy.sh: $*" >&2; exit 1; }

[[ $reps =~ ^[1-9][0-9]*$ ]] || die "--reps takes a positive integer, not '$reps'"
[ "$(id -u)" -eq 0 ] || die "must run as root (it writes /proc/sys/vm/drop_caches)"
case $kcopyfs in /*) ;; *) kcopyfs=$repo_root/$kcopyfs ;; esac
[ -x "$kcopyfs" ] || die "no kcopyfs binary at $kcopyfs (build it, or pass --kcopyfs PATH)"
[ -d "$parent" ] || die "--workdir $parent is not a directory"

# Tools the run needs, from Debian 12, installed only when missing.
kcopyfs_install_missing fio libnbd-bin time diffutils coreutils util-linux
for tool in fio nbdcopy /usr/bin/time cmp dd numfmt findmnt awk; do
  command -v "$tool" >/dev/null || die "$tool is still missing after installing packages"
done

size=$(numfmt --from=iec "$size_text" 2>/dev/null) || die "--size: cannot parse '$size_text'"
mib=$((1024 * 1024))
{ [ "$size" -gt 0 ] && [ $((size % mib)) -eq 0 ]; } || die "--size must be a positive multiple of 1 MiB"
size_mib=$((size / mib))

work=$(mktemp -d "$parent/kcopyfs-bench.XXXXXX")
cleanup() { rm -rf -- "$work"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
case $work in *:*) die "the scratch path must not contain ':' (kcopyfs and fio treat it as a separator)" ;; esac
src=$work/src
results=$work/results  # rep tool seconds read_bytes write_bytes dev_read_bytes
: >"$results"

# The block device under the scratch directory, for the device-level read counter (empty when not found).
dev_stat=""
if source_dev=$(findmnt -n -o SOURCE -T "$work" 2>/dev/null); then
  name=$(basename "$(readlink -f "$source_dev")")
  [ -r "/sys/class/block/$name/stat" ] && dev_stat=/sys/class/block/$name/stat
fi
dev_sectors_read() { if [ -n "$dev_stat" ]; then awk '{print $3}' "$dev_stat"; else echo 0; fi; }

drop_caches() {
  sync
  echo 3 >/proc/sys/vm/drop_caches
}
now_ns() { date +%s%N; }

# Sets $dests to N destination paths under $work and deletes them (the sync before the measurement covers it).
prepare_dests() {
  local i
  dests=()
  for ((i = 1; i <= $1; i++)); do dests+=("$work/dst$i"); done
  rm -f -- "${dests[@]}"
}

# run_timed REP TOOL CMD...: drop caches, run CMD under /usr/bin/time, record the wall time and the I/O counters.
run_timed() {
  local rep=$1 tool=$2
  shift 2
  local tfile=$work/time.out t0 t1 d0 d1 in out
  drop_caches
  d0=$(dev_sectors_read)
  t0=$(now_ns)
  /usr/bin/time -f '%I %O' -o "$tfile" "$@" >"$work/cmd.out" 2>&1 || {
    cat "$work/cmd.out" >&2
    die "$tool failed: $*"
  }
  t1=$(now_ns)
  d1=$(dev_sectors_read)
  read -r in out <"$tfile"
  echo "$rep $tool $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.6f", (b-a)/1e9}') $((in * 512)) $((out * 512)) $(((d1 - d0) * 512))" >>"$results"
}

# fio_ceiling REP TOOL DST...: one fio run, a read job of SRC and one write job per DST, all at once.
fio_ceiling() {
  local rep=$1 tool=$2 json=$work/fio.json job=$work/ceiling.fio d i=0
  shift 2
  cat >"$job" <<EOF
[global]
ioengine=io_uring
direct=1
bs=1M
iodepth=16
size=$size
invalidate=1
[read]
rw=read
filename=$src
EOF
  for d in "$@"; do
    i=$((i + 1))
    printf '[write%d]\nrw=write\nfilename=%s\nfallocate=none\nend_fsync=1\n' "$i" "$d" >>"$job"
  done
  drop_caches
  fio --output-format=json --output="$json" "$job" >/dev/null || die "fio failed"
  # job_runtime is in ms and, for the write job, includes end_fsync. Rate: SIZE / the slower job's runtime.
  local slow
  slow=$(awk '/"job_runtime"/ {v = $0; gsub(/[^0-9]/, "", v); if (v + 0 > m) m = v + 0} END {print m + 0}' "$json")
  if [ -z "$slow" ] || [ "$slow" -le 0 ]; then die "could not read job_runtime from fio's output"; fi
  echo "$rep $tool $(awk -v ms="$slow" 'BEGIN{printf "%.6f", ms/1000}') 0 0 0" >>"$results"
}

measure() {
  local rep=$1 tool=$2 d
  case $tool in
    kcopyfs)
      prepare_dests 1
      run_timed "$rep" "$tool" "$kcopyfs" copy "$src" "${dests[0]}" ;;
    kcopyfs-nooff)
      prepare_dests 1
      run_timed "$rep" "$tool" "$kcopyfs" copy --no-offload "$src" "${dests[0]}" ;;
    nbdcopy)
      prepare_dests 1
      run_timed "$rep" "$tool" nbdcopy --flush "$src" "${dests[0]}" ;;
    dd)
      prepare_dests 1
      run_timed "$rep" "$tool" dd if="$src" of="${dests[0]}" bs=1M iflag=direct oflag=direct conv=fdatasync status=none ;;
    fio-ceiling)
      prepare_dests 1
      fio_ceiling "$rep" "$tool" "${dests[@]}" ;;
    fio-ceiling-3)
      prepare_dests 3
      fio_ceiling "$rep" "$tool" "${dests[@]}" ;;
    kcopyfs-3dest)
      prepare_dests 3
      run_timed "$rep" "$tool" "$kcopyfs" copy "$src" "${dests[@]}" ;;
    nbdcopy-3x)
      prepare_dests 3
      # Three runs in a row make one measurement (cache dropped once, before the first).
      # shellcheck disable=SC2016 # expanded by the inner shell
      run_timed "$rep" "$tool" bash -c 'for d in "${@:2}"; do nbdcopy --flush "$1" "$d"; done' _ "$src" "${dests[@]}" ;;
  esac
  # Correctness, once per tool, outside the timed region (fio writes a pattern, not a copy: nothing to check).
  if [ "$rep" -eq 1 ] && [[ $tool != fio-ceiling* ]]; then
    for d in "${dests[@]}"; do
      cmp -s "$src" "$d" || die "$tool: $d differs from the source"
    done
    echo "  $tool: ${#dests[@]} destination(s) identical to the source (cmp)"
  fi
  rm -f -- "${dests[@]}"
}

tools=(kcopyfs kcopyfs-nooff nbdcopy dd fio-ceiling kcopyfs-3dest nbdcopy-3x fio-ceiling-3)

echo "kcopyfs copy benchmark: $size_mib MiB, $reps repetitions, in $work"
echo "  machine: $(nproc) CPUs, kernel $(uname -r), $(findmnt -n -o FSTYPE -T "$work") on ${source_dev:-?}"
echo "  kcopyfs: $kcopyfs"
echo "  peers: $(nbdcopy --version | head -1), $(fio --version), dd ($(dd --version | head -1))"
echo "  load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
dd if=/dev/urandom of="$src" bs=1M count="$size_mib" status=none
sync

for ((rep = 1; rep <= reps; rep++)); do
  # Rotate the starting tool each repetition so no tool always runs first (or right after the same neighbour).
  order=()
  for ((i = 0; i < ${#tools[@]}; i++)); do order+=("${tools[(i + rep - 1) % ${#tools[@]}]}"); done
  echo "rep $rep/$reps: ${order[*]} (load $(cut -d' ' -f1 /proc/loadavg))"
  for tool in "${order[@]}"; do measure "$rep" "$tool"; done
done
echo "  load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

if [ -n "$csv" ]; then
  awk -v mib="$size_mib" 'BEGIN{print "rep,tool,seconds,mib_per_s,read_bytes,write_bytes,device_read_bytes"}
    {printf "%s,%s,%s,%.1f,%s,%s,%s\n", $1, $2, $3, mib/$3, $4, $5, $6}' "$results" >"$csv"
fi

# The report: medians over the repetitions; ratios both of the medians and as the median of per-repetition
# ratios (paired within one repetition, so slow drift of the machine cancels).
awk -v mib="$size_mib" -v size="$size" -v reps="$reps" -v order="${tools[*]}" '
function median(arr, n,   i, j, t, a) {
  for (i = 1; i <= n; i++) a[i] = arr[i]
  for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
  return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
{
  rate[$2, $1] = mib / $3
  rd[$2, ++n_rd[$2]] = $4; wr[$2, n_rd[$2]] = $5; dv[$2, n_rd[$2]] = $6
}
END {
  nt = split(order, tool, " ")
  printf "\n%-14s %10s %10s %10s   %s\n", "tool", "median", "min", "max", "MiB/s over the repetitions"
  for (t = 1; t <= nt; t++) {
    name = tool[t]; mn = 1e18; mx = 0
    for (r = 1; r <= reps; r++) { v[r] = rate[name, r]; if (v[r] < mn) mn = v[r]; if (v[r] > mx) mx = v[r] }
    med[name] = median(v, reps)
    printf "%-14s %10.0f %10.0f %10.0f\n", name, med[name], mn, mx
  }
  split("kcopyfs nbdcopy|kcopyfs-nooff nbdcopy|kcopyfs fio-ceiling|kcopyfs-nooff fio-ceiling|kcopyfs dd|kcopyfs-nooff dd|kcopyfs kcopyfs-nooff|kcopyfs-3dest nbdcopy-3x|kcopyfs-3dest fio-ceiling-3", pairs, "|")
  printf "\n%-30s %10s %10s %10s %10s\n", "ratio", "of medians", "paired", "min", "max"
  for (p = 1; p in pairs; p++) {
    split(pairs[p], ab, " "); mn = 1e18; mx = 0
    for (r = 1; r <= reps; r++) { q[r] = rate[ab[1], r] / rate[ab[2], r]; if (q[r] < mn) mn = q[r]; if (q[r] > mx) mx = q[r] }
    printf "%-30s %9.2fx %9.2fx %9.2fx %9.2fx\n", ab[1] " / " ab[2], med[ab[1]] / med[ab[2]], median(q, reps), mn, mx
  }
  printf "\nI/O charged to the process (median over repetitions; source = %d bytes):\n", size
  printf "%-14s %14s %14s %14s %8s\n", "tool", "read_bytes", "write_bytes", "device_read", "read/src"
  for (t = 1; t <= nt; t++) {
    name = tool[t]
    if (name ~ /^fio-ceiling/) continue
    for (r = 1; r <= reps; r++) { a1[r] = rd[name, r]; a2[r] = wr[name, r]; a3[r] = dv[name, r] }
    m1 = median(a1, reps)
    printf "%-14s %14.0f %14.0f %14.0f %7.3fx\n", name, m1, median(a2, reps), median(a3, reps), m1 / size
  }
}' "$results"
