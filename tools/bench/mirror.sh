#!/usr/bin/env bash
# Runs the mirror benchmark (tools/bench/mirror_bench.cc): resync of a 2-leg mirror against fio's copy ceiling,
# throttle accuracy, writes through an in-sync mirror against the raw device, and the resync after a crash.
# docs/benchmarks.md ("Mirrors (issue 4)") explains the figures; run with --help for the options.
# With --qemu, also times qemu-storage-daemon's mirror job (blockdev-mirror sync=full) on a same-size image,
# interleaved with the repetitions (qemu_mirror below), and prints kcopyfs resync / qemu mirror ratios.
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

With --qemu, every repetition also runs (5): qemu-storage-daemon's mirror job (blockdev-mirror, sync=full,
default granularity and buf-size) copying a SIZE image of random data to a SIZE image of other random data,
both raw files opened cache.direct=on (O_DIRECT), timed from the blockdev-mirror command to BLOCK_JOB_READY
(the whole copy plus qemu's flush of the target), then block-job-cancel and quit; a new daemon each time.
mirror_bench then runs once per repetition (--reps 1; its images are remade each time), qemu's job before it
in odd and after it in even repetitions, and this script prints the per-repetition rates and the medians,
with kcopyfs resync (window 64, else the last window measured) / qemu mirror. Best with -- --resync-only
(the summary keeps only each configuration's main rate).

Options:
  -n, --reps N          repetitions (default 3)
  -w, --workdir DIR     make the scratch directory inside DIR, on a disk-backed filesystem that supports
                        O_DIRECT (default /var/tmp); needs about 2 GiB free with the defaults
  -s, --size SIZE       leg size (default 1G)
  -b, --bench PATH      mirror_bench binary (default build/tools/mirror_bench under the repository root)
  -q, --qemu            also time qemu-storage-daemon's mirror job, interleaved (see above; needs python3
                        and 2 x SIZE more space in the workdir)
      --qsd PATH        qemu-storage-daemon binary (default qemu-storage-daemon)
      --qemu-aio MODE   aio= of qemu's file nodes: io_uring (default), native or threads
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
qemu=0
qsd='qemu-storage-daemon'
qemu_aio=io_uring

while [ $# -gt 0 ]; do
  case $1 in
    -n | --reps) reps=${2:?--reps needs a value}; shift 2 ;;
    -w | --workdir) parent=${2:?--workdir needs a value}; shift 2 ;;
    -s | --size) size=${2:?--size needs a value}; shift 2 ;;
    -b | --bench) bench=${2:?--bench needs a value}; shift 2 ;;
    -q | --qemu) qemu=1; shift ;;
    --qsd) qsd=${2:?--qsd needs a value}; shift 2 ;;
    --qemu-aio) qemu_aio=${2:?--qemu-aio needs a value}; shift 2 ;;
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
[ "$qemu" -eq 1 ] || exec "$bench" --workdir "$parent" --reps "$reps" --size "$size" "${extra[@]}"

# ---------------------------------------------------------------------------------------------------------
# --qemu: mirror_bench once per repetition, qemu-storage-daemon's mirror job between them.

command -v "$qsd" >/dev/null || die "no $qsd (Debian package qemu-system-common, or pass --qsd PATH)"
command -v python3 >/dev/null || die "python3 is missing (the QMP client)"
case $qemu_aio in io_uring | native | threads) ;; *) die "--qemu-aio takes io_uring, native or threads" ;; esac
bytes=$(numfmt --from=iec "$size" 2>/dev/null) || die "--size $size: not a size (K/M/G suffixes binary)"
if [ "$bytes" -le 0 ] || [ $((bytes % 1048576)) -ne 0 ]; then die "--size must be a positive multiple of 1 MiB"; fi

qemu_timeout=300  # seconds for one mirror job (start to READY, then cancel); qsd start and exit: 10 s each
qdir=
qsd_pid=
cleanup() {
  if [ -n "$qsd_pid" ]; then
    kill "$qsd_pid" 2>/dev/null || true
    wait "$qsd_pid" 2>/dev/null || true
  fi
  [ -z "$qdir" ] || rm -rf -- "$qdir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
qdir=$(mktemp -d "$parent/kcopyfs-qemumirror.XXXXXX")

drop_caches() {
  sync
  if [ "$(id -u)" -eq 0 ]; then echo 3 >/proc/sys/vm/drop_caches; fi
}

# The QMP client: argv = socket, qsd pid, timeout (s). Prints "MiB/s seconds bytes" of one mirror job.
# shellcheck disable=SC2016  # Python, not shell
qmp_client='
import json, os, socket, sys, time
sock_path, pid, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
def die(msg):
    sys.exit("mirror.sh: qemu mirror: " + msg)
s = socket.socket(socket.AF_UNIX)
start = time.monotonic()
while True:
    try:
        s.connect(sock_path)
        break
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            die("qemu-storage-daemon exited at start")
        if time.monotonic() - start > 10:
            die("no QMP socket after 10 s")
        time.sleep(0.02)
f = s.makefile("r")
end = time.monotonic() + limit
events = []
def recv():
    left = end - time.monotonic()
    if left <= 0:
        die("timed out after %.0f s" % limit)
    s.settimeout(left)
    try:
        line = f.readline()
    except (TimeoutError, socket.timeout):
        die("timed out after %.0f s" % limit)
    if not line:
        die("qemu-storage-daemon closed the QMP connection")
    return json.loads(line)
def cmd(name, args=None):
    msg = {"execute": name}
    if args:
        msg["arguments"] = args
    s.sendall((json.dumps(msg) + "\n").encode())
    while True:
        m = recv()
        if "return" in m:
            return m["return"]
        if "error" in m:
            die("%s: %s" % (name, m["error"].get("desc", m["error"])))
        events.append(m)
def event(*names):
    while True:
        m = events.pop(0) if events else recv()
        ev = m.get("event")
        if ev in names and m.get("data", {}).get("device") == "bench":
            return m
        if ev in ("BLOCK_JOB_ERROR", "BLOCK_JOB_CANCELLED", "BLOCK_JOB_COMPLETED") and ev not in names:
            die("job ended early: " + json.dumps(m))
recv()  # greeting
cmd("qmp_capabilities")
t0 = time.monotonic()
cmd("blockdev-mirror", {"job-id": "bench", "device": "src", "target": "tgt", "sync": "full"})
event("BLOCK_JOB_READY")
seconds = time.monotonic() - t0
jobs = [j for j in cmd("query-block-jobs") if j.get("device") == "bench"]
if not jobs:
    die("the job vanished at READY")
done, length = jobs[0]["offset"], jobs[0]["len"]
if done != length:
    die("READY at offset %d of %d" % (done, length))
cmd("block-job-cancel", {"device": "bench"})  # after READY: completes without pivoting
m = event("BLOCK_JOB_COMPLETED")
if m["data"].get("error"):
    die("job failed: " + m["data"]["error"])
try:
    cmd("quit")
except SystemExit:
    pass  # the daemon may close the socket before answering
print("%.1f %.3f %d" % (done / 1048576 / seconds, seconds, done))
'

# A path inside a qemu option string: commas doubled.
qpath() { printf '%s' "${1//,/,,}"; }

# One mirror job in a new daemon, in this shell (the EXIT trap must see qsd_pid): sets q_rate (MiB/s), q_s.
q_rate=
q_s=
qemu_mirror() {
  drop_caches
  rm -f -- "$qdir/qmp.sock"
  "$qsd" \
    --blockdev "driver=file,node-name=src-file,filename=$(qpath "$qdir/src.img"),cache.direct=on,aio=$qemu_aio" \
    --blockdev driver=raw,node-name=src,file=src-file \
    --blockdev "driver=file,node-name=tgt-file,filename=$(qpath "$qdir/tgt.img"),cache.direct=on,aio=$qemu_aio" \
    --blockdev driver=raw,node-name=tgt,file=tgt-file \
    --chardev "socket,path=$(qpath "$qdir/qmp.sock"),server=on,wait=off,id=qmp" \
    --monitor chardev=qmp >"$qdir/qsd.log" 2>&1 &
  qsd_pid=$!
  local out rc=0
  out=$(timeout $((qemu_timeout + 30)) python3 -c "$qmp_client" "$qdir/qmp.sock" "$qsd_pid" "$qemu_timeout") ||
    rc=$?
  local i
  for ((i = 0; i < 100; i++)); do  # quit: the daemon exits by itself
    kill -0 "$qsd_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill "$qsd_pid" 2>/dev/null || true
  wait "$qsd_pid" 2>/dev/null || true
  qsd_pid=
  if [ "$rc" -ne 0 ] || [ -z "$out" ]; then
    cat "$qdir/qsd.log" >&2
    die "the qemu mirror job failed (QMP client exit $rc)"
  fi
  read -r q_rate q_s _ <<<"$out"
}

median() {  # of the numbers on stdin (space or newline separated)
  tr ' ' '\n' | grep . | sort -g |
    awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
minmax() { tr ' ' '\n' | grep . | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo, hi }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0) ? a / b : 0 }'; }

echo "qemu: $("$qsd" --version | head -n 1), raw files, cache.direct=on, aio=$qemu_aio, blockdev-mirror sync=full"
echo "making two $size images for qemu in $qdir"
head -c "$bytes" /dev/urandom >"$qdir/src.img"
head -c "$bytes" /dev/urandom >"$qdir/tgt.img"
sync
qemu_mirror  # checks the setup; not counted
echo "$reps repetitions: mirror_bench --reps 1 each, qemu's mirror job before it (odd) or after it (even)"

declare -A vals=()  # config name -> space-separated rates, one per repetition
names=()            # config names in first-seen order
rw_per_rep=()       # kcopyfs resync / qemu, per repetition
rw=
add() {
  [ -n "${vals[$1]+set}" ] || names+=("$1")
  vals[$1]="${vals[$1]:-} $2"
}
for ((rep = 1; rep <= reps; rep++)); do
  load=$(cut -d' ' -f1 /proc/loadavg)
  if ((rep % 2 == 1)); then qemu_mirror; fi
  "$bench" --workdir "$parent" --reps 1 --size "$size" "${extra[@]}" >"$qdir/bench.log" ||
    { cat "$qdir/bench.log" >&2; die "mirror_bench failed"; }
  if ((rep % 2 == 0)); then qemu_mirror; fi
  line=$(grep -m1 '^rep 1/1' "$qdir/bench.log") || { cat "$qdir/bench.log" >&2; die "no rep line from mirror_bench"; }
  for kv in ${line#*:}; do add "${kv%%=*}" "${kv#*=}"; done
  add qemu-mirror "$q_rate"
  if [ -z "$rw" ]; then  # the resync compared with qemu: window 64, else the last window measured
    for n in "${names[@]}"; do
      case $n in resync-w64) rw=$n ;; resync-w*) [ "$rw" = resync-w64 ] || rw=$n ;; esac
    done
    [ -n "$rw" ] || die "mirror_bench measured no resync window"
  fi
  r_rate=$(awk '{ print $NF }' <<<"${vals[$rw]}")
  rw_per_rep+=("$(ratio "$r_rate" "$q_rate")")
  echo "rep $rep/$reps (load $load): qemu-mirror=$q_rate (${q_s} s) ${line#*: }  $rw/qemu=${rw_per_rep[-1]}"
done

printf '\nmedians of %s repetitions; ratio = of medians [median of per-repetition ratios]\n' "$reps"
printf '(1)+(5) copy of %s: rates in MiB/s (IOPS for rand-*)\n' "$size"
printf '%-14s %9s %7s %7s %16s %16s\n' config rate min max "x fio ceiling" "x qemu mirror"
ceil_med=$(median <<<"${vals[fio-ceiling]:-}")
qemu_med=$(median <<<"${vals[qemu-mirror]}")
paired() {  # median of the per-repetition ratios of config $1 to config $2
  local -a a b
  read -r -a a <<<"${vals[$1]}"
  read -r -a b <<<"${vals[$2]}"
  local i out=
  for i in "${!a[@]}"; do out+=" $(ratio "${a[$i]}" "${b[$i]}")"; done
  median <<<"$out"
}
for n in "${names[@]}"; do
  case $n in fio-ceiling | resync-w* | qemu-mirror) ;; *) continue ;; esac
  m=$(median <<<"${vals[$n]}")
  read -r lo hi <<<"$(minmax <<<"${vals[$n]}")"
  xc=-
  [ -z "$ceil_med" ] || xc="$(ratio "$m" "$ceil_med") [$(paired "$n" fio-ceiling)]"
  xq="$(ratio "$m" "$qemu_med") [$(paired "$n" qemu-mirror)]"
  printf '%-14s %9.0f %7.0f %7.0f %16s %16s\n' "$n" "$m" "$lo" "$hi" "$xc" "$xq"
done
for n in "${names[@]}"; do
  case $n in fio-ceiling | resync-w* | qemu-mirror) continue ;; esac
  printf '%-14s median %.1f over %s\n' "$n" "$(median <<<"${vals[$n]}")" "${vals[$n]}"
done
printf '\n%s / qemu-mirror per repetition: %s; of medians %s, median of the ratios %s\n' "$rw" \
  "${rw_per_rep[*]}" "$(ratio "$(median <<<"${vals[$rw]}")" "$qemu_med")" "$(median <<<"${rw_per_rep[*]}")"
