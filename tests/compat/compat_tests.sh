#!/usr/bin/env bash
# compat_tests.sh KCOPYFS_BINARY: kcopyfs against the real Linux dm-snapshot and dm-mirror, on the same image
# files. The kernel side runs in Debian's kernel under qemu (kernel_vm.sh); two guest boots cover everything:
#   boot 1: the kernel loads what kcopyfs made (COW store, disk-log mirror, a COW and a mirror log left by SIGKILL,
#           an invalid COW);
#   boot 2: the kernel makes what kcopyfs then opens (snapshots at 8K and 64K chunks, a snapshot to merge, an
#           overflowed COW, and a COW cut by a power-off mid-write, which must come last in the boot).
# Content is compared by MD5, status strings word for word (device numbers and paths both become disk names).
# Exit 0 when every bullet passes, 1 otherwise, 77 (skip) only when not root.
set -uo pipefail

[ $# -eq 1 ] || {
  echo "usage: compat_tests.sh KCOPYFS_BINARY" >&2
  exit 2
}
if [ "$(id -u)" -ne 0 ]; then
  echo "SKIP: the compat tests need root (FUSE mounts of image files, qemu)"
  exit 77
fi
K=$(realpath "$1")
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VM="$HERE/kernel_vm.sh"
# shellcheck source=tools/lib/setup.sh disable=SC1091  # the package helper of tools/test.sh
source "$HERE/../../tools/lib/setup.sh"
# qemu is only needed here, so it is installed here rather than by every build.
kcopyfs_install_missing qemu-system-x86 || {
  echo "FAIL: cannot install qemu-system-x86"
  exit 1
}

START=$SECONDS
WORK=$(mktemp -d /var/tmp/kcopyfs-compat.XXXXXX)
MOUNTS=()
BG_PIDS=()

# Unmount what we mounted and stop what we started, even after a failure half-way.
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  local m pid
  for pid in "${BG_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for m in "${MOUNTS[@]}"; do
    if mountpoint -q "$m" 2>/dev/null; then
      timeout 30 "$K" umount "$m" >/dev/null 2>&1 || fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
    fi
  done
  # A daemon that outlived its mount (it should not) is found by its state directory's lock file.
  cat "$WORK"/state-*/lock 2>/dev/null | while read -r pid || [ -n "$pid" ]; do
    [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$K" ] && kill -9 "$pid" 2>/dev/null
  done
  if [ -n "${KCOPYFS_COMPAT_KEEP:-}" ]; then
    echo "kept: $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- results, per bullet of the issue
BULLETS=(k2k c2k crash merge invalid)
declare -A TITLE=([k2k]="kernel -> kcopyfs (8K and 64K chunks)" [c2k]="kcopyfs -> kernel (COW store, disk-log mirror)"
  [crash]="crash images (power cut -> kcopyfs, SIGKILL -> kernel)" [merge]="merge: kcopyfs leaves the kernel's origin"
  [invalid]="invalidated COW both ways")
declare -A CHECKS=() FAILS=()
pass() {
  CHECKS[$1]=$((${CHECKS[$1]:-0} + 1))
  echo "  ok   [$1] $2"
}
fail() {
  CHECKS[$1]=$((${CHECKS[$1]:-0} + 1))
  FAILS[$1]=$((${FAILS[$1]:-0} + 1))
  echo "  FAIL [$1] $2"
}
# expect BULLET WHAT EXPECTED ACTUAL: equal strings pass; both are shown otherwise.
expect() {
  if [ "$3" = "$4" ] && [ -n "$3" ]; then
    pass "$1" "$2: $4"
  else
    fail "$1" "$2: expected '$3', got '$4'"
    return 1
  fi
}
# run BULLET CMD...: a step that must work; its error output is shown when it does not.
run() {
  local b=$1 out
  shift
  if out=$("$@" 2>&1); then
    return 0
  fi
  fail "$b" "'$*' failed: $out"
  return 1
}

# ---- images and host-side helpers
declare -A IMG=()
# mkimg NAME SIZE [random]: an image file, random-filled or sparse zero.
mkimg() {
  IMG[$1]="$WORK/$1.img"
  if [ "${3:-}" = random ]; then
    head -c "$2" /dev/urandom >"${IMG[$1]}"
  else
    truncate -s "$2" "${IMG[$1]}"
  fi
}
md5() { md5sum <"$1" | cut -d' ' -f1; }
# chunks_differing A B CHUNK_BYTES: the first chunk numbers where two files differ, to say where a mismatch is.
chunks_differing() {
  cmp -l "$1" "$2" 2>/dev/null | awk -v c="$3" '{ n = int(($1 - 1) / c); if (!(n in seen)) { seen[n]; printf "%s%d", (k++ ? " " : ""), n } } k >= 16 { exit }'
}
# area0_report COW CHUNK_BYTES OLD_CHUNK...: what metadata area 0 (chunk 1) of a persistent COW holds, for a
# mismatch: its record count up to the first all-zero record, any records after that, and for each OLD_CHUNK
# the record that copies it, if one does.
area0_report() {
  local cow=$1 cb=$2
  shift 2
  od -An -v -t u8 -j "$cb" -N "$cb" "$cow" | tr -s ' ' '\n' | grep -v '^$' | paste - - |
    awk -v want="$*" 'BEGIN { n = split(want, w, " ") }
      { r = NR - 1; if (!end && $2 == 0) end = 1; if (end) { if ($1 != 0 || $2 != 0) after++ } else { count++; old[$1] = r ":" $2 } }
      END { printf "area 0: %d records, %d non-zero after the terminator", count, after
            for (i = 1; i <= n; i++) printf "; old chunk %s: %s", w[i], (w[i] in old) ? "record " old[w[i]] : "no record"
            print "" }'
}
# shellcheck disable=SC2317  # called through run
# scribble FILE "OFFSET:LENGTH ..." (bytes, multiples of 512): random writes, each made durable before the next.
scribble() {
  local f=$1 w
  for w in $2; do
    dd if=/dev/urandom of="$f" bs=512 seek=$((${w%%:*} / 512)) count=$((${w##*:} / 512)) conv=notrunc,fsync \
      status=none || return 1
  done
}
# kstatus MOUNT NAME: the state and the dmsetup-style field of one target, as "STATE|FIELD".
kstatus() {
  "$K" status "$1" "$2" | awk 'NR == 2 { s = $5; for (i = 6; i <= NF; i++) s = s " " $i; print $4 "|" s }'
}
kmount() {
  mkdir -p "$WORK/mnt-$1"
  MOUNTS+=("$WORK/mnt-$1")
  "$K" mount --state "$WORK/state-$1" "$WORK/mnt-$1"
}

# ---- the VM: DISKS lists the images of one boot; attach NAME... adds images, D[NAME] is the guest's name (kcN).
DISKS=()
declare -A D=()
attach() {
  local n
  for n in "$@"; do
    DISKS+=("${IMG[$n]}")
    D[$n]=/dev/kc$((${#DISKS[@]} - 1))
  done
}
# by_disk TEXT: replace every image path in TEXT by its guest name, as the guest does for major:minor.
by_disk() {
  local t=$1 i
  for i in "${!DISKS[@]}"; do t=${t//${DISKS[$i]}/kc$i}; done
  echo "$t"
}
# The guest scripts' common helpers: R prints a result line; st prints a target's status with disk names.
# shellcheck disable=SC2016  # guest code, expanded in the guest
GUEST_PRELUDE='
R() { echo "R $*"; }
devname() { awk '"'"'NR == FNR { m[$1] = $2; next } { for (i = 1; i <= NF; i++) if ($i in m) $i = m[$i]; print }'"'"' /etc/kcompat/devmap -; }
st() { dmsetup status "$1" | cut -d" " -f4- | devname; }
sz() { blockdev --getsz "$1"; }
dmd5() { md5sum <"$1" | cut -d" " -f1; }
rawmd5() { blockdev --flushbufs "$1"; dmd5 "$1"; }
mk() { dmsetup create "$1" --table "$2" || R "$1"_create failed; }
wr() { for w in $2; do dd if=/dev/urandom of=$1 bs=512 seek=$((${w%%:*} / 512)) count=$((${w##*:} / 512)) conv=notrunc,fsync 2>/dev/null || R write_failed $1 $w; done; }
'
# boot NAME SCRIPT_TEXT: one guest run over DISKS; its R lines land in $WORK/NAME.out.
boot() {
  local t0=$SECONDS rc=0
  printf '%s\n%s\n' "$GUEST_PRELUDE" "$2" >"$WORK/$1.sh"
  "$VM" --timeout 200 --console "$WORK/$1.console" "$WORK/$1.sh" "${DISKS[@]}" >"$WORK/$1.out" 2>"$WORK/$1.err" ||
    rc=$?
  echo "  (guest boot '$1': exit $rc, $((SECONDS - t0)) s)"
  if [ $rc -ne 0 ]; then
    echo "  guest output:" && sed 's/^/    /' "$WORK/$1.out" "$WORK/$1.err" | tail -n 40
  else
    # A retried boot, or a guest step that went wrong (its own checks fail too): worth seeing either way.
    sed 's/^/    /' "$WORK/$1.err"
    grep -E '^R [^ ]*(_create|write_failed)' "$WORK/$1.out" | sed 's/^/    guest: /'
  fi
  return $rc
}
# got BOOT KEY: the value of the guest's result line "R KEY VALUE...".
got() { awk -v k="$2" '$1 == "R" && $2 == k { s = $3; for (i = 4; i <= NF; i++) s = s " " $i; print s; exit }' \
  "$WORK/$1.out"; }

# Writes used on both sides: inside one chunk, across chunk boundaries, whole chunks, near the end.
WRITES="0:4096 12288:512 65024:2048 131072:65536 1048576:200704 4194304:8192 6000640:4096 8380416:8192"
# These span several metadata areas of a 4K-chunk COW (256 exceptions per area).
AREA_WRITES="$WRITES 2097152:1048576 5242880:1572864 7340032:40960"
# Writes to a snapshot itself: a whole 8K chunk, part of a fresh chunk, part of a chunk the origin already copied.
SNAP_WRITES="3145728:8192 7340032:1024 0:512"

echo "== kcopyfs makes, the kernel loads"
mkimg ko 8M random
mkimg kcow 8M
mkimg kma 8M random
mkimg kmb 8M
mkimg io 8M random
mkimg icow 256K
mkimg co 8M random
mkimg ccow 8M
mkimg cma 8M random
mkimg cmb 8M
co_orig=$(md5 "${IMG[co]}")
ko_orig=$(md5 "${IMG[ko]}")
declare -A H=()
if kmount a; then
  M="$WORK/mnt-a"
  run c2k "$K" origin add "$M" ko "${IMG[ko]}" &&
    run c2k "$K" snapshot create "$M" ko ks --cow "${IMG[kcow]}" --writable &&
    run c2k scribble "$M/origins/ko" "$AREA_WRITES" && run c2k scribble "$M/snapshots/ks" "$SNAP_WRITES" &&
    H[ks_md5]=$(md5 "$M/snapshots/ks") && H[ks_status]=$(kstatus "$M" ks)
  [ "${H[ks_md5]:-}" != "$(md5 "$M/origins/ko")" ] || fail c2k "the writes did not change the origin"
  [ "${H[ks_md5]:-}" != "$ko_orig" ] || fail c2k "the writes did not change the snapshot"
  run c2k "$K" mirror create "$M" km "${IMG[kma]}" "${IMG[kmb]}" --region-size 64K --wait &&
    run c2k scribble "$M/mirrors/km" "$WRITES" && H[km_md5]=$(md5 "$M/mirrors/km")
  run invalid "$K" origin add "$M" io "${IMG[io]}" &&
    run invalid "$K" snapshot create "$M" io is --cow "${IMG[icow]}" &&
    run invalid scribble "$M/origins/io" "0:1048576"
  expect invalid "kcopyfs: its own overflowed COW" "invalid|Invalid" "$(kstatus "$M" is)"
  # The mirror's status is taken last, after the other targets' writes, so that it shows the settled state.
  H[km_status]=$(kstatus "$M" km)
  run c2k "$K" umount "$M"
else
  fail c2k "kcopyfs mount failed"
fi
# The crash image: writes made durable, then SIGKILL to the daemon while a writer is busy on the origin.
if kmount b; then
  M="$WORK/mnt-b"
  if run crash "$K" origin add "$M" co "${IMG[co]}" &&
    run crash "$K" snapshot create "$M" co cs --cow "${IMG[ccow]}" &&
    run crash scribble "$M/origins/co" "$WRITES" &&
    run crash "$K" mirror create "$M" cm "${IMG[cma]}" "${IMG[cmb]}" --region-size 64K --wait; then
    # The writer sweeps fresh chunks (every write needs a new exception) and counts its completed writes; a second
    # one keeps the mirror busy, so that some of its regions are dirty in the log when the daemon dies.
    : >"$WORK/progress"
    (while :; do scribble "$M/mirrors/cm" "$WRITES" 2>/dev/null || exit 0; done) &
    BG_PIDS+=($!)
    (while :; do scribble "$M/mirrors/cm" "$AREA_WRITES" 2>/dev/null || exit 0; done) &
    BG_PIDS+=($!)
    (
      for ((i = 1; i <= 256; i++)); do
        dd if=/dev/urandom of="$M/origins/co" bs=4096 seek=$((512 + 2 * i)) count=1 conv=notrunc,fsync \
          status=none 2>/dev/null || exit 0
        echo >>"$WORK/progress"
      done
    ) &
    BG_PIDS+=($!)
    for ((t = 0; t < 500; t++)); do
      [ "$(wc -l <"$WORK/progress" 2>/dev/null || echo 0)" -ge 32 ] && break
      sleep 0.02
    done
    kill -9 "$(cat "$WORK/state-b/lock")"
    at_kill=$(wc -l <"$WORK/progress" 2>/dev/null || echo 0)
    wait "${BG_PIDS[-1]}" "${BG_PIDS[-2]}" "${BG_PIDS[-3]}" 2>/dev/null
    if [ "$at_kill" -gt 0 ] && [ "$at_kill" -lt 256 ]; then
      pass crash "kcopyfs: SIGKILL after $at_kill of 256 new-chunk writes"
    else
      fail crash "kcopyfs: SIGKILL was not mid-write ($at_kill of 256 writes done)"
    fi
    run crash "$K" umount "$M"
    # How many regions the log holds dirty (clean bit 0) for the kernel to resync: 128 regions, 16 bitmap bytes.
    cm_dirty=$(od -An -v -tx1 -j1024 -N16 "$WORK/state-b/cm.log" | awk '
      BEGIN { for (i = 0; i < 16; i++) { h = sprintf("%x", i); ones[h] = (i % 2) + int(i / 2) % 2 + int(i / 4) % 2 + int(i / 8) } }
      { for (i = 1; i <= NF; i++) n += 8 - ones[substr($i, 1, 1)] - ones[substr($i, 2, 1)] } END { print n + 0 }')
  fi
else
  fail crash "kcopyfs mount failed"
fi

IMG[klog]="$WORK/state-a/km.log"
IMG[clog]="$WORK/state-b/cm.log"
# Without a mirror (its checks have failed already) the guest still needs a disk there for the others.
[ -f "${IMG[klog]}" ] || truncate -s 4K "${IMG[klog]}"
[ -f "${IMG[clog]}" ] || truncate -s 4K "${IMG[clog]}"
attach ko kcow kma kmb klog io icow co ccow cma cmb clog
ko=${D[ko]} kcow=${D[kcow]} kma=${D[kma]} kmb=${D[kmb]} klog=${D[klog]} io=${D[io]} icow=${D[icow]} co=${D[co]}
ccow=${D[ccow]} cma=${D[cma]} cmb=${D[cmb]} clog=${D[clog]}
boot one "
mk ks \"0 \$(sz $ko) snapshot $ko $kcow P 0\"
R ks_status \$(st ks)
R ks_table \$(dmsetup table ks | cut -d' ' -f6-)
R ks_md5 \$(dmd5 /dev/mapper/ks)
dmsetup remove ks
# The kernel carries on in kcopyfs's COW (new exceptions after kcopyfs's, into a new area); kcopyfs reads it back.
mk ks \"0 \$(sz $ko) snapshot $ko $kcow P 0\"
mk ko \"0 \$(sz $ko) snapshot-origin $ko\"
wr /dev/mapper/ko \"7471104:700416\"
R ks_rt_status \$(st ks)
R ks_rt_md5 \$(dmd5 /dev/mapper/ks)
R ko_rt_md5 \$(dmd5 /dev/mapper/ko)
dmsetup remove ko; dmsetup remove ks
mk km \"0 \$(sz $kma) mirror disk 2 $klog 128 2 $kma 0 $kmb 0\"
R km_status \$(st km)
R km_md5 \$(dmd5 /dev/mapper/km)
dmsetup remove km
R kmb_md5 \$(rawmd5 $kmb)
mk cs \"0 \$(sz $co) snapshot $co $ccow P 0\"
R cs_status \$(st cs)
R cs_md5 \$(dmd5 /dev/mapper/cs)
dmsetup remove cs
mk is \"0 \$(sz $io) snapshot $io $icow P 0\"
R is_status \$(st is)
if dd if=/dev/mapper/is of=/dev/null bs=4096 count=1 2>/dev/null; then R is_read ok; else R is_read EIO; fi
dmsetup remove is
# kcopyfs's mirror log after SIGKILL: the kernel resyncs the regions it marks dirty, and that must be enough.
mk cm \"0 \$(sz $cma) mirror disk 2 $clog 128 2 $cma 0 $cmb 0\"
R cm_load \$(st cm)
i=0
while [ \$i -lt 600 ]; do
  set -- \$(st cm); [ \"\${4%%/*}\" = \"\${4##*/}\" ] && break
  sleep 0.1; i=\$((i + 1))
done
R cm_synced \$(st cm)
dmsetup remove cm
R cma_md5 \$(rawmd5 $cma)
R cmb_md5 \$(rawmd5 $cmb)
" || true
expect c2k "kernel: kcopyfs's snapshot content" "${H[ks_md5]:-?}" "$(got one ks_md5)"
ks_status=${H[ks_status]:-?}
expect c2k "kernel: kcopyfs's snapshot status (kcopyfs said '$ks_status')" "${ks_status#*|}" \
  "$(got one ks_status)"
expect c2k "kernel: the chunk size in kcopyfs's header (4K, the default)" "P 8" "$(got one ks_table)"
expect c2k "kernel: kcopyfs's snapshot after the kernel's own writes" "${H[ks_md5]:-?}" "$(got one ks_rt_md5)"
expect c2k "kernel: kcopyfs's mirror content" "${H[km_md5]:-?}" "$(got one km_md5)"
expect c2k "kernel: mirror leg 1 holds the same data" "${H[km_md5]:-?}" "$(got one kmb_md5)"
expect c2k "kernel: kcopyfs's mirror status" "$(km_status=${H[km_status]:-?} && by_disk "${km_status#*|}")" "$(got one km_status)"
expect crash "kernel: kcopyfs's COW after SIGKILL, content at the point in time" "$co_orig" "$(got one cs_md5)"
cs_status=$(got one cs_status)
if [[ "$cs_status" =~ ^[0-9]+/[0-9]+\ [0-9]+$ ]]; then pass crash "kernel: status '$cs_status'"; else
  fail crash "kernel: kcopyfs's COW after SIGKILL has status '$cs_status'"
fi
cm_synced=$(got one cm_synced)
read -r -a w <<<"$cm_synced"
if [ ${#w[@]} -ge 6 ] && [ "${w[3]%/*}" = "${w[3]#*/}" ] && [ "${w[4]} ${w[5]}" = "1 AA" ]; then
  pass crash "kernel: kcopyfs's mirror log after SIGKILL (${cm_dirty:-?} regions dirty) loads ('$(got one cm_load)') and resyncs ('$cm_synced')"
else
  fail crash "kernel: kcopyfs's mirror log after SIGKILL: '$(got one cm_load)' at load, then '$cm_synced'"
fi
expect crash "kernel: both legs of that mirror equal after the kernel's resync" "$(got one cma_md5)" \
  "$(got one cmb_md5)"
expect invalid "kernel: kcopyfs's invalidated COW" "Invalid" "$(got one is_status)"
expect invalid "kernel: reading it" "EIO" "$(got one is_read)"

echo "== the kernel makes, kcopyfs opens"
DISKS=()
D=()
mkimg xo 8M random
mkimg x8 8M
mkimg x64 8M
mkimg mo 8M random
mkimg mc 8M
mkimg mo2 8M
mkimg mc2 8M
mkimg vo 8M random
mkimg vc 256K
mkimg po 8M random
mkimg pc 8M
mo_orig=$(md5 "${IMG[mo]}")
po_orig=$(md5 "${IMG[po]}")
cp "${IMG[po]}" "$WORK/po.orig"
attach xo x8 x64 mo mc mo2 mc2 vo vc po pc
xo=${D[xo]} x8=${D[x8]} x64=${D[x64]} mo=${D[mo]} mc=${D[mc]} mo2=${D[mo2]} mc2=${D[mc2]} vo=${D[vo]} vc=${D[vc]}
po=${D[po]} pc=${D[pc]}
boot two "
mk x8 \"0 \$(sz $xo) snapshot $xo $x8 P 16\"
mk x64 \"0 \$(sz $xo) snapshot $xo $x64 P 128\"
mk xo \"0 \$(sz $xo) snapshot-origin $xo\"
wr /dev/mapper/xo \"$WRITES\"
wr /dev/mapper/x8 \"$SNAP_WRITES\"
R x8_status \$(st x8)
R x64_status \$(st x64)
R x8_md5 \$(dmd5 /dev/mapper/x8)
R x64_md5 \$(dmd5 /dev/mapper/x64)
R xo_md5 \$(dmd5 /dev/mapper/xo)
dmsetup remove xo; dmsetup remove x8; dmsetup remove x64
mk ms \"0 \$(sz $mo) snapshot $mo $mc P 8\"
mk mo \"0 \$(sz $mo) snapshot-origin $mo\"
wr /dev/mapper/mo \"$AREA_WRITES\"
R ms_status \$(st ms)
dmsetup remove mo; dmsetup remove ms
blockdev --flushbufs $mo; blockdev --flushbufs $mc
dd if=$mo of=$mo2 bs=1M conv=fsync 2>/dev/null; dd if=$mc of=$mc2 bs=1M conv=fsync 2>/dev/null
mk mm \"0 \$(sz $mo2) snapshot-merge $mo2 $mc2 P 8\"
i=0
while [ \$i -lt 600 ]; do
  s=\$(st mm); a=\${s%%/*}; m=\${s##* }
  [ \"\$a\" = \"\$m\" ] && break
  sleep 0.1; i=\$((i + 1))
done
R mm_status \$(st mm)
dmsetup remove mm
R mo2_md5 \$(rawmd5 $mo2)
mk vs \"0 \$(sz $vo) snapshot $vo $vc P 8\"
mk vo \"0 \$(sz $vo) snapshot-origin $vo\"
wr /dev/mapper/vo 0:1048576
R vs_status \$(st vs)
dmsetup remove vo; dmsetup remove vs
mk ps \"0 \$(sz $po) snapshot $po $pc P 16\"
mk po \"0 \$(sz $po) snapshot-origin $po\"
wr /dev/mapper/po \"$WRITES\"
R ps_status \$(st ps)
s=\$(st ps); b=\${s%%/*}
# The power cut: a writer is busy on the origin when the guest powers off with both devices active.
i=0
while [ \$i -lt 256 ]; do
  dd if=/dev/urandom of=/dev/mapper/po bs=4096 seek=\$((512 + 2 * i)) count=1 conv=notrunc,fsync 2>/dev/null
  i=\$((i + 1))
done >/dev/null 2>&1 &
# Cut once the writer has added a few exceptions, however slow the emulation is today.
i=0
while [ \$i -lt 300 ]; do
  s=\$(st ps); [ \"\${s%%/*}\" -ge \$((b + 128)) ] 2>/dev/null && break
  sleep 0.05; i=\$((i + 1))
done
R ps_cut \$(st ps)
" || true
[ "$(got two x64_md5)" != "$(got two xo_md5)" ] || fail k2k "the kernel's writes did not reach the origin"
[ "$(got two x8_md5)" != "$(got two x64_md5)" ] || fail k2k "the kernel's writes did not reach the 8K snapshot"
if kmount c; then
  M="$WORK/mnt-c"
  if run k2k "$K" origin add "$M" xo "${IMG[xo]}" &&
    run k2k "$K" snapshot attach "$M" xo x8 --cow "${IMG[x8]}" &&
    run k2k "$K" snapshot attach "$M" xo x64 --cow "${IMG[x64]}"; then
    expect k2k "kcopyfs: the kernel's 8K-chunk snapshot content" "$(got two x8_md5)" "$(md5 "$M/snapshots/x8")"
    expect k2k "kcopyfs: the kernel's 64K-chunk snapshot content" "$(got two x64_md5)" "$(md5 "$M/snapshots/x64")"
    expect k2k "kcopyfs: the origin" "$(got two xo_md5)" "$(md5 "$M/origins/xo")"
    expect k2k "kcopyfs: 8K-chunk status" "active|$(got two x8_status)" "$(kstatus "$M" x8)"
    expect k2k "kcopyfs: 64K-chunk status" "active|$(got two x64_status)" "$(kstatus "$M" x64)"
  fi
  if run c2k "$K" origin add "$M" ko "${IMG[ko]}" &&
    run c2k "$K" snapshot attach "$M" ko ks --cow "${IMG[kcow]}"; then
    expect c2k "kcopyfs: its COW after the kernel added to it, content" "${H[ks_md5]:-?}" "$(md5 "$M/snapshots/ks")"
    expect c2k "kcopyfs: its COW after the kernel added to it, status" "active|$(got one ks_rt_status)" \
      "$(kstatus "$M" ks)"
    expect c2k "kcopyfs: the origin the kernel wrote" "$(got one ko_rt_md5)" "$(md5 "$M/origins/ko")"
  fi
  if run merge "$K" origin add "$M" mo "${IMG[mo]}" &&
    run merge "$K" snapshot attach "$M" mo ms --cow "${IMG[mc]}"; then
    expect merge "kcopyfs: the kernel's snapshot before the merge" "$(got two ms_status)" "$(kstatus "$M" ms | cut -d'|' -f2)"
    expect merge "kcopyfs: snapshot content" "$mo_orig" "$(md5 "$M/snapshots/ms")"
    run merge timeout 120 "$K" snapshot merge "$M" ms --wait &&
      expect merge "kcopyfs: origin view after the merge" "$mo_orig" "$(md5 "$M/origins/mo")"
  fi
  if run invalid "$K" origin add "$M" vo "${IMG[vo]}" &&
    run invalid "$K" snapshot attach "$M" vo vs --cow "${IMG[vc]}"; then
    expect invalid "kcopyfs: the kernel's overflowed COW" "invalid|$(got two vs_status)" "$(kstatus "$M" vs)"
    if dd if="$M/snapshots/vs" of=/dev/null bs=4096 count=1 status=none 2>/dev/null; then
      fail invalid "kcopyfs: reading the kernel's invalid snapshot succeeded"
    else pass invalid "kcopyfs: reading the kernel's invalid snapshot fails"; fi
  fi
  if run crash "$K" origin add "$M" po "${IMG[po]}" &&
    run crash "$K" snapshot attach "$M" po ps --cow "${IMG[pc]}"; then
    if ! expect crash "kcopyfs: the kernel's COW after a power cut, content at the point in time" "$po_orig" \
      "$(md5 "$M/snapshots/ps")"; then
      # Where, and what the images say there: was the origin written, does the COW record a copy?
      differ=$(chunks_differing "$WORK/po.orig" "$M/snapshots/ps" 8192)
      echo "       8K chunks that differ: $differ"
      echo "       origin image chunks that differ from the original: $(chunks_differing "$WORK/po.orig" "${IMG[po]}" 8192)"
      echo "       COW $(area0_report "${IMG[pc]}" 8192 "$differ")"
    fi
    ps_state=$(kstatus "$M" ps)
    if [ "${ps_state%%|*}" = active ]; then
      pass crash "kcopyfs: status '$ps_state' (the kernel said '$(got two ps_cut)' just before the cut)"
    else
      fail crash "kcopyfs: the kernel's COW after a power cut is '$ps_state'"
    fi
  fi
  run merge "$K" umount "$M"
else
  fail k2k "kcopyfs mount failed"
fi
expect merge "kcopyfs's merged origin equals the kernel's merged origin" "$(got two mo2_md5)" "$(md5 "${IMG[mo]}")"
mm_status=$(got two mm_status)
if [ -n "$mm_status" ] && [ "${mm_status%%/*}" = "${mm_status##* }" ]; then
  pass merge "kernel: merge done ($mm_status)"
else
  fail merge "kernel: the merge did not finish: '$mm_status'"
fi
# The cut must have come while the guest's writer was still adding exceptions, or it proves nothing.
before=$(got two ps_status) cut=$(got two ps_cut)
b=${before%%/*} c=${cut%%/*}
if [ -n "$c" ] && [ -n "$b" ] && [ "$c" -gt "$b" ] && [ "$c" -lt $((b + 256 * 16)) ]; then
  pass crash "kernel: power cut mid-write (COW '$before' before the writer, '$cut' at the cut)"
else
  fail crash "kernel: the power cut was not mid-write ('$before' before the writer, '$cut' at the cut)"
fi

echo "== summary ($((SECONDS - START)) s)"
status=0
for b in "${BULLETS[@]}"; do
  if [ "${CHECKS[$b]:-0}" -eq 0 ] || [ "${FAILS[$b]:-0}" -gt 0 ]; then
    echo "FAIL  ${TITLE[$b]} (${FAILS[$b]:-0} of ${CHECKS[$b]:-0} checks failed)"
    status=1
  else
    echo "PASS  ${TITLE[$b]} (${CHECKS[$b]} checks)"
  fi
done
exit $status
