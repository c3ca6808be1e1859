#!/usr/bin/env bash
# Benchmarks I/O through kcopyfs views (an origin, a read-only snapshot, first writes into writable snapshots)
# against fio on the raw image and nbdfuse over nbdkit (file plugin; cow filter for first writes), in one run,
# interleaved round-robin, page cache dropped before every measurement (root). docs/benchmarks.md explains the
# figures and the targets; run with --help for the options.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: tools/bench/views.sh [OPTIONS]

One image of SIZE random bytes, seen four ways, read with fio (O_DIRECT, libaio):
  raw        the image file itself
  origin     MNT/origins/data       kcopyfs origin view of the image
  snapshot   MNT/snapshots/snap     read-only snapshot of that origin (no exceptions: reads reach the image)
  nbdfuse    nbdfuse over nbdkit's file plugin (cache=none) serving the image
by three jobs: seq (1 MiB sequential reads, QD16: MiB/s), rand1 (4 KiB random reads, QD1: IOPS and mean
latency in µs) and rand16 (4 KiB random reads, QD16: IOPS). And first writes, 4 KiB random at QD --write-qd,
one pass over distinct blocks (fio's random map) or --runtime, whichever ends first, end_fsync included:
  wsnap      a fresh writable snapshot of the origin, 4 KiB chunks (kcopyfs snapshot create --writable):
             persistent, so exceptions are committed to its COW store's metadata
  wsnap-t    the same with --transient (exceptions in memory only: no metadata commits, as nbdkit's cow)
  cow        a fresh nbdkit --filter=cow cow-block-size=4096 over the image, through nbdfuse
  raw-write  a preallocated scratch file of SIZE bytes (context: the disk's own 4 KiB random-write rate)
Every repetition runs every measurement, in a rotating order. The report gives medians, ratios against raw
and against nbdfuse (of the medians, and the median of per-repetition ratios), and each target met or missed:
  snapshot seq >= 0.7x raw and > nbdfuse; snapshot rand1 and rand16 IOPS > nbdfuse;
  snapshot rand1 latency <= raw + 40 us; wsnap first writes >= 1.5x cow.
The scratch directory (image, state, mounts) is removed at exit; mounts are unmounted, daemons stopped.

Options:
  -n, --reps N          repetitions (default 3)
  -s, --size SIZE       image size, a multiple of 1 MiB; K/M/G suffixes are binary (default 1G)
  -r, --runtime S       seconds per fio job (default 10)
  -w, --workdir DIR     create the scratch directory inside DIR, on a disk-backed filesystem that supports
                        O_DIRECT (default /var/tmp); needs about 3x SIZE free
  -k, --kcopyfs PATH    kcopyfs binary (default build/kcopyfs relative to the repository root)
      --write-qd N      queue depth of the first-write jobs (default 16)
      --nbd-connect M   how nbdfuse reaches nbdkit: unix (a Unix socket, multi-conn with 4 connections: the
                        faster peer; default) or command (nbdfuse --command nbdkit -s: one connection)
      --no-kcopyfs      leave out origin, snapshot, wsnap and wsnap-t (to test the peers alone)
      --csv FILE        also write every measurement (rep,config,job,mib_s,iops,lat_us) to FILE
  -h, --help            show this help
EOF
}

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$script_dir/../.." && pwd)
# shellcheck source=../lib/setup.sh disable=SC1091 # followed only with shellcheck -x
source "$repo_root/tools/lib/setup.sh"

reps=3
size_text=1G
runtime=10
parent=/var/tmp
kcopyfs=$repo_root/build/kcopyfs
write_qd=16
nbd_connect=unix
with_kcopyfs=1
csv=""

while [ $# -gt 0 ]; do
  case $1 in
    -n | --reps) reps=${2:?--reps needs a value}; shift 2 ;;
    -s | --size) size_text=${2:?--size needs a value}; shift 2 ;;
    -r | --runtime) runtime=${2:?--runtime needs a value}; shift 2 ;;
    -w | --workdir) parent=${2:?--workdir needs a value}; shift 2 ;;
    -k | --kcopyfs) kcopyfs=${2:?--kcopyfs needs a value}; shift 2 ;;
    --write-qd) write_qd=${2:?--write-qd needs a value}; shift 2 ;;
    --nbd-connect) nbd_connect=${2:?--nbd-connect needs a value}; shift 2 ;;
    --no-kcopyfs) with_kcopyfs=0; shift ;;
    --csv) csv=${2:?--csv needs a value}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "views.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

die() { echo "views.sh: $*" >&2; exit 1; }

[[ $reps =~ ^[1-9][0-9]*$ ]] || die "--reps takes a positive integer, not '$reps'"
[[ $runtime =~ ^[1-9][0-9]*$ ]] || die "--runtime takes a positive whole number of seconds, not '$runtime'"
[[ $write_qd =~ ^[1-9][0-9]*$ ]] || die "--write-qd takes a positive integer, not '$write_qd'"
case $nbd_connect in unix | command) ;; *) die "--nbd-connect takes unix or command, not '$nbd_connect'" ;; esac
[ -d "$parent" ] || die "--workdir $parent is not a directory"
fstype=$(findmnt -n -o FSTYPE -T "$parent" 2>/dev/null || echo "?")
[ "$fstype" != tmpfs ] || die "--workdir $parent is on tmpfs: no O_DIRECT, and the figures would be of memory"
is_root=0
[ "$(id -u)" -ne 0 ] || is_root=1
[ "$is_root" -eq 1 ] || echo "views.sh: warning: not root, so the page cache is not dropped between measurements" >&2
if [ "$with_kcopyfs" -eq 1 ]; then
  case $kcopyfs in /*) ;; *) kcopyfs=$repo_root/$kcopyfs ;; esac
  [ -x "$kcopyfs" ] || die "no kcopyfs binary at $kcopyfs (build it, pass --kcopyfs PATH, or --no-kcopyfs)"
  "$kcopyfs" mount --help >/dev/null 2>&1 || die "$kcopyfs has no working 'mount' verb (or use --no-kcopyfs)"
fi

# Tools the run needs, from Debian 12, installed only when missing.
kcopyfs_install_missing fio jq nbdkit libnbd-bin fuse3 coreutils util-linux
for tool in fio jq nbdkit nbdfuse fusermount3 numfmt findmnt awk; do
  command -v "$tool" >/dev/null || die "$tool is still missing after installing packages"
done

size=$(numfmt --from=iec "$size_text" 2>/dev/null) || die "--size: cannot parse '$size_text'"
mib=$((1024 * 1024))
{ [ "$size" -gt 0 ] && [ $((size % mib)) -eq 0 ]; } || die "--size must be a positive multiple of 1 MiB"
size_mib=$((size / mib))

work=$(mktemp -d "$parent/kcopyfs-views.XXXXXX")
img=$work/image.raw
scratch=$work/raw-write.raw
state=$work/state
kmnt=$work/kcopyfs
nmnt=$work/nbdfuse
results=$work/results  # rep config job mib_s iops lat_us
kcopyfs_mounted=0
nbd_pids=()  # nbdkit daemons of the current nbdfuse mount (unix mode)
fuse_pid=""  # the current nbdfuse
: >"$results"
mkdir -p "$state" "$kmnt" "$nmnt"

# Unmounts nbdfuse, waits for it to exit (it does on unmount) and stops the nbdkit it used.
nbd_down() {
  if mountpoint -q "$nmnt"; then fusermount3 -u "$nmnt" 2>/dev/null || fusermount3 -uz "$nmnt" || true; fi
  if [ -n "$fuse_pid" ]; then
    mountpoint -q "$nmnt" && kill "$fuse_pid" 2>/dev/null
    wait "$fuse_pid" 2>/dev/null || true
    fuse_pid=""
  fi
  local pid
  for pid in "${nbd_pids[@]}"; do
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
  done
  nbd_pids=()
  rm -f -- "$work/nbdfuse.pid" "$work/nbdkit.pid" "$work/nbd.sock"
}
cleanup() {
  set +e
  nbd_down
  if [ "$kcopyfs_mounted" -eq 1 ] && mountpoint -q "$kmnt"; then
    "$kcopyfs" umount "$kmnt" 2>/dev/null || fusermount3 -u "$kmnt" 2>/dev/null || fusermount3 -uz "$kmnt"
  fi
  rm -rf -- "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

drop_caches() {
  sync
  if [ "$is_root" -eq 1 ]; then echo 3 >/proc/sys/vm/drop_caches; fi
}

# nbd_up [cow]: serves the image with nbdkit (file plugin, cache=none so its reads reach the disk like the
# O_DIRECT peers' do; with cow, under the cow filter with 4 KiB blocks) and mounts it with nbdfuse at
# $nmnt/nbd; returns once the file is there.
nbd_up() {
  local filter_args=() plugin_args=(file "$img" cache=none)
  if [ "${1:-}" = cow ]; then
    filter_args=(--filter=cow)
    plugin_args+=(cow-block-size=4096)
  fi
  rm -f -- "$work/nbdfuse.pid" "$work/nbdkit.pid"
  if [ "$nbd_connect" = unix ]; then
    # In the foreground (-f) so that $! is nbdkit itself; a forking nbdkit writes its pidfile after the
    # parent has returned, so the pid could not be read reliably.
    TMPDIR=$work nbdkit -f -U "$work/nbd.sock" -P "$work/nbdkit.pid" "${filter_args[@]}" "${plugin_args[@]}" \
      </dev/null >"$work/nbdkit.log" 2>&1 &
    nbd_pids+=("$!")
    wait_for_pidfile "$work/nbdkit.pid" "$!" "$work/nbdkit.log" nbdkit
    nbdfuse -P "$work/nbdfuse.pid" "$nmnt/nbd" --unix "$work/nbd.sock" </dev/null >"$work/nbdfuse.log" 2>&1 &
  else
    TMPDIR=$work nbdfuse -P "$work/nbdfuse.pid" "$nmnt/nbd" --command nbdkit -s --exit-with-parent \
      "${filter_args[@]}" "${plugin_args[@]}" </dev/null >"$work/nbdfuse.log" 2>&1 &
  fi
  fuse_pid=$!
  wait_for_pidfile "$work/nbdfuse.pid" "$fuse_pid" "$work/nbdfuse.log" nbdfuse
}

# wait_for_pidfile FILE PID LOG NAME: nbdkit and nbdfuse write their pidfile once they serve (their manuals
# document this as the way to wait for them); gives up after 30 s or when PID exits.
wait_for_pidfile() {
  local i
  for ((i = 0; i < 300; i++)); do
    [ -s "$1" ] && return 0
    kill -0 "$2" 2>/dev/null || break
    sleep 0.1
  done
  cat "$3" >&2
  die "$4 did not come up"
}

# run_fio REP CONFIG JOB FILE: one fio job on FILE; appends "rep config job mib_s iops lat_us" to $results.
run_fio() {
  local rep=$1 config=$2 job=$3 file=$4 json=$work/fio.json spec=$work/job.fio
  cat >"$spec" <<EOF
[global]
ioengine=libaio
direct=1
filename=$file
size=$size
fallocate=none
invalidate=1
[$job]
EOF
  case $job in
    seq) printf 'rw=read\nbs=1M\niodepth=16\ntime_based=1\nruntime=%s\n' "$runtime" >>"$spec" ;;
    rand1) printf 'rw=randread\nbs=4k\niodepth=1\ntime_based=1\nruntime=%s\n' "$runtime" >>"$spec" ;;
    rand16) printf 'rw=randread\nbs=4k\niodepth=16\ntime_based=1\nruntime=%s\n' "$runtime" >>"$spec" ;;
    # One pass over distinct 4 KiB blocks (every write a first write), capped by the runtime.
    first) printf 'rw=randwrite\nbs=4k\niodepth=%s\nruntime=%s\nend_fsync=1\n' "$write_qd" "$runtime" >>"$spec" ;;
  esac
  drop_caches
  fio --output-format=json --output="$json" "$spec" >/dev/null 2>"$work/fio.err" || {
    cat "$work/fio.err" >&2
    die "fio failed: $config $job on $file"
  }
  # Reads: fio's own rate. First writes: bytes over the job's runtime, which includes end_fsync.
  local line
  line=$(jq -r '.jobs[0] | (.job_runtime / 1000) as $s |
    if .error != 0 then "error \(.error)"
    elif .write.io_bytes > 0 then "\(.write.io_bytes / 1048576 / $s) \(.write.io_bytes / 4096 / $s) \(.write.lat_ns.mean / 1000)"
    else "\(.read.bw_bytes / 1048576) \(.read.iops) \(.read.lat_ns.mean / 1000)" end' "$json")
  case $line in error*) die "fio reported $line: $config $job on $file" ;; esac
  echo "$rep $config $job $line" >>"$results"
}

# measure REP CONFIG:JOB
measure() {
  local rep=$1 config=${2%%:*} job=${2##*:}
  case $config in
    raw) run_fio "$rep" raw "$job" "$img" ;;
    origin) run_fio "$rep" origin "$job" "$kmnt/origins/data" ;;
    snapshot) run_fio "$rep" snapshot "$job" "$kmnt/snapshots/snap" ;;
    nbdfuse) run_fio "$rep" nbdfuse "$job" "$nmnt/nbd" ;;
    raw-write) run_fio "$rep" raw-write "$job" "$scratch" ;;
    wsnap | wsnap-t)
      local name=$config$rep flags=(--writable)
      [ "$config" = wsnap ] || flags+=(--transient)
      "$kcopyfs" snapshot create "$kmnt" data "$name" "${flags[@]}" >/dev/null \
        || die "snapshot create $name failed"
      run_fio "$rep" "$config" "$job" "$kmnt/snapshots/$name"
      "$kcopyfs" remove "$kmnt" "$name" >/dev/null || die "remove $name failed"
      ;;
    cow)
      # A fresh nbdkit per repetition, so its overlay is empty and every write is a first write.
      nbd_down
      nbd_up cow
      run_fio "$rep" cow "$job" "$nmnt/nbd"
      nbd_down
      nbd_up
      ;;
  esac
}

measurements=(raw:seq raw:rand1 raw:rand16 nbdfuse:seq nbdfuse:rand1 nbdfuse:rand16)
if [ "$with_kcopyfs" -eq 1 ]; then
  measurements+=(origin:seq origin:rand1 origin:rand16 snapshot:seq snapshot:rand1 snapshot:rand16 wsnap:first
    wsnap-t:first)
fi
measurements+=(cow:first raw-write:first)

echo "kcopyfs views benchmark: $(date -u '+%Y-%m-%d %H:%M UTC')," \
  "$(git -C "$repo_root" rev-parse --short HEAD 2>/dev/null || echo '?'), $size_mib MiB, $reps repetitions," \
  "${runtime} s per job, in $work"
echo "  machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.1f GiB RAM", $2 / 1048576}' /proc/meminfo)," \
  "kernel $(uname -r), $fstype on $(findmnt -n -o SOURCE -T "$work" 2>/dev/null || echo '?')"
echo "  peers: $(fio --version), $(nbdkit --version | head -1), $(nbdfuse --version | head -1) (--nbd-connect $nbd_connect)"
[ "$with_kcopyfs" -eq 0 ] || echo "  kcopyfs: $kcopyfs"
echo "  load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

dd if=/dev/urandom of="$img" bs=1M count="$size_mib" status=none
fallocate -l "$size" "$scratch" 2>/dev/null || dd if=/dev/zero of="$scratch" bs=1M count="$size_mib" status=none
sync
if [ "$with_kcopyfs" -eq 1 ]; then
  kcopyfs_mounted=1
  "$kcopyfs" mount --state "$state" "$kmnt" || die "kcopyfs mount failed"
  "$kcopyfs" origin add "$kmnt" data "$img" >/dev/null || die "origin add failed"
  "$kcopyfs" snapshot create "$kmnt" data snap >/dev/null || die "snapshot create failed"
fi
nbd_up

for ((rep = 1; rep <= reps; rep++)); do
  # Rotate the starting measurement each repetition so none always runs first or after the same neighbour.
  order=()
  for ((i = 0; i < ${#measurements[@]}; i++)); do
    order+=("${measurements[(i + (rep - 1) * 5) % ${#measurements[@]}]}")
  done
  echo "rep $rep/$reps (load $(cut -d' ' -f1 /proc/loadavg)): ${order[*]}"
  for m in "${order[@]}"; do measure "$rep" "$m"; done
done
echo "  load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

if [ -n "$csv" ]; then
  awk 'BEGIN {print "rep,config,job,mib_s,iops,lat_us"} {printf "%s,%s,%s,%.1f,%.0f,%.1f\n", $1, $2, $3, $4, $5, $6}' \
    "$results" >"$csv"
fi

# The report: medians; ratios of the medians and the median of per-repetition (paired) ratios, so slow drift
# of the machine cancels; then the targets.
awk -v reps="$reps" -v kc="$with_kcopyfs" '
function median(arr, n,   i, j, t, a) {
  for (i = 1; i <= n; i++) a[i] = arr[i]
  for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
  return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
# med(config, job, field): field 1 MiB/s, 2 IOPS, 3 latency (us).
function med(c, j, f,   r, v) { for (r = 1; r <= reps; r++) v[r] = val[c, j, r, f]; return median(v, reps) }
function has(c, j) { return ((c, j, 1, 1) in val) }
# paired(a, b, job, field, op): median over repetitions of a/b (op "/") or a-b (op "-").
function paired(a, b, j, f, op,   r, v) {
  for (r = 1; r <= reps; r++) v[r] = op == "/" ? val[a, j, r, f] / val[b, j, r, f] : val[a, j, r, f] - val[b, j, r, f]
  return median(v, reps)
}
function row(c, j, f, unit,   r, v, mn, mx) {
  if (!has(c, j)) return
  mn = 1e18; mx = -1e18
  for (r = 1; r <= reps; r++) { v = val[c, j, r, f]; if (v < mn) mn = v; if (v > mx) mx = v }
  printf "%-8s %-10s %12.1f %12.1f %12.1f  %s\n", j, c, med(c, j, f), mn, mx, unit
}
function ratio(a, b, j, f,   m) {
  if (!has(a, j) || !has(b, j)) return
  printf "%-8s %-22s %9.2fx %9.2fx\n", j, a " / " b, med(a, j, f) / med(b, j, f), paired(a, b, j, f, "/")
}
function target(text, ok, detail) {
  printf "  %-6s %-46s %s\n", ok ? "met" : "MISSED", text, detail
}
{ val[$2, $3, $1, 1] = $4; val[$2, $3, $1, 2] = $5; val[$2, $3, $1, 3] = $6 }
END {
  nc = split("raw origin snapshot nbdfuse", cfg, " ")
  printf "\n%-8s %-10s %12s %12s %12s\n", "job", "config", "median", "min", "max"
  for (i = 1; i <= nc; i++) row(cfg[i], "seq", 1, "MiB/s (1 MiB sequential read, QD16)")
  for (i = 1; i <= nc; i++) row(cfg[i], "rand1", 2, "IOPS (4 KiB random read, QD1)")
  for (i = 1; i <= nc; i++) row(cfg[i], "rand1", 3, "us mean latency (4 KiB random read, QD1)")
  for (i = 1; i <= nc; i++) row(cfg[i], "rand16", 2, "IOPS (4 KiB random read, QD16)")
  nw = split("wsnap wsnap-t cow raw-write", wcfg, " ")
  for (i = 1; i <= nw; i++) row(wcfg[i], "first", 1, "MiB/s (4 KiB random first writes)")
  for (i = 1; i <= nw; i++) row(wcfg[i], "first", 2, "IOPS (4 KiB random first writes)")

  printf "\n%-8s %-22s %10s %10s\n", "job", "ratio", "of medians", "paired"
  split("seq:1 rand1:2 rand16:2", jobs, " ")
  for (k = 1; k <= 3; k++) {
    split(jobs[k], jf, ":")
    ratio("origin", "raw", jf[1], jf[2]); ratio("snapshot", "raw", jf[1], jf[2]); ratio("nbdfuse", "raw", jf[1], jf[2])
    ratio("origin", "nbdfuse", jf[1], jf[2]); ratio("snapshot", "nbdfuse", jf[1], jf[2])
  }
  ratio("wsnap", "cow", "first", 1); ratio("wsnap-t", "cow", "first", 1); ratio("wsnap", "wsnap-t", "first", 1)
  ratio("wsnap", "raw-write", "first", 1); ratio("cow", "raw-write", "first", 1)
  for (k = 1; k <= nc; k++) if (cfg[k] != "raw" && has(cfg[k], "rand1"))
    printf "%-8s %-22s %+9.1f us %+7.1f us (latency over raw)\n", "rand1", cfg[k] " - raw",
      med(cfg[k], "rand1", 3) - med("raw", "rand1", 3), paired(cfg[k], "raw", "rand1", 3, "-")

  if (!kc) { print "\ntargets: not evaluated (--no-kcopyfs)"; exit }
  print "\ntargets (on the medians):"
  s = med("snapshot", "seq", 1); r = med("raw", "seq", 1); n = med("nbdfuse", "seq", 1)
  target("snapshot seq >= 0.7x raw", s >= 0.7 * r, sprintf("%.2fx (%.0f vs %.0f MiB/s)", s / r, s, r))
  target("snapshot seq > nbdfuse", s > n, sprintf("%.2fx (%.0f vs %.0f MiB/s)", s / n, s, n))
  s = med("snapshot", "rand1", 2); n = med("nbdfuse", "rand1", 2)
  target("snapshot 4K random QD1 > nbdfuse", s > n, sprintf("%.2fx (%.0f vs %.0f IOPS)", s / n, s, n))
  s = med("snapshot", "rand16", 2); n = med("nbdfuse", "rand16", 2)
  target("snapshot 4K random QD16 > nbdfuse", s > n, sprintf("%.2fx (%.0f vs %.0f IOPS)", s / n, s, n))
  s = med("snapshot", "rand1", 3); r = med("raw", "rand1", 3)
  target("snapshot QD1 latency <= raw + 40 us", s <= r + 40, sprintf("%+.1f us (%.1f vs %.1f us)", s - r, s, r))
  s = med("wsnap", "first", 1); n = med("cow", "first", 1)
  target("writable-snapshot first writes >= 1.5x cow", s >= 1.5 * n, sprintf("%.2fx (%.1f vs %.1f MiB/s)", s / n, s, n))
}' "$results"
