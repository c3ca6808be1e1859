#!/usr/bin/env bash
# kernel_vm.sh: runs a shell script inside Debian's own kernel (booted in qemu) with device-mapper loaded, on
# image files given as disks, so the compat tests can put kcopyfs next to the real dm-snapshot and dm-mirror.
#
#   kernel_vm.sh [--timeout SECONDS] [--console FILE] GUEST_SCRIPT [IMAGE...]
#   kernel_vm.sh --prepare
#
# In the guest, IMAGE number N (from 0) is /dev/kcN (matched by the virtio serial number, not by probe order),
# and /etc/kcompat/devmap maps each "major:minor" to its kcN name so status lines can be compared by name.
# GUEST_SCRIPT runs under busybox sh as root with dmsetup on PATH; its stdout and stderr come back on stdout and
# its exit code becomes ours. When it returns, the guest powers off at once without syncing: devices still
# active at that point see a power cut. Exit 124: the guest timed out; 125: the VM itself failed.
#
# Everything comes from Debian packages fetched with apt-get download and cached in
# ${KCOPYFS_COMPAT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kcopyfs-compat}.
# Knobs: KCOPYFS_COMPAT_KERNEL_PKG (default: what linux-image-cloud-amd64 depends on now),
# KCOPYFS_COMPAT_ACCEL (auto, kvm or tcg; auto probes KVM once and remembers the answer).
set -euo pipefail

CACHE=${KCOPYFS_COMPAT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kcopyfs-compat}
# The modules the tests need; their dependencies are added from each module's own "depends=" field.
WANTED_MODULES=(virtio_pci virtio_blk dm-snapshot dm-mirror)
GUEST_MEM_MB=384

die() {
  echo "kernel_vm: $*" >&2
  exit 125
}

# The version of this file is part of the cache key, so editing the guest init rebuilds the initramfs.
self_digest() { sha256sum "${BASH_SOURCE[0]}" | cut -c1-16; }

# apt_download DIR PKG...: fetch .deb files into DIR, refreshing the package lists once if the archive moved on.
apt_download() {
  local dir=$1
  shift
  (cd "$dir" && apt-get download -qq "$@" >/dev/null 2>&1) && return 0
  apt-get update -qq >/dev/null 2>&1 || true
  (cd "$dir" && apt-get download -qq "$@" >/dev/null) || die "apt-get download $* failed"
}

# The kernel package: pinned by the environment, else the one the cloud metapackage points at today.
resolve_kernel_pkg() {
  if [ -n "${KCOPYFS_COMPAT_KERNEL_PKG:-}" ]; then
    echo "$KCOPYFS_COMPAT_KERNEL_PKG"
    return
  fi
  local pkg
  pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  if [ -z "$pkg" ]; then
    apt-get update -qq >/dev/null 2>&1 || true
    pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  fi
  if [ -z "$pkg" ]; then
    # Offline with no package lists: fall back to a kernel fetched earlier, if any.
    pkg=$(find "$CACHE/debs" -name 'linux-image-*-cloud-amd64_*.deb' -printf '%f\n' 2>/dev/null | sort | tail -n1 |
      cut -d_ -f1)
  fi
  [ -n "$pkg" ] || die "cannot resolve the linux-image-*-cloud-amd64 package (apt-cache knows none)"
  echo "$pkg"
}

# cached_deb PKG: path of PKG's .deb in the cache, downloading it when absent.
cached_deb() {
  local pkg=$1 deb
  mkdir -p "$CACHE/debs"
  deb=$(find "$CACHE/debs" -name "${pkg}_*.deb" | sort | tail -n1)
  if [ -z "$deb" ]; then
    apt_download "$CACHE/debs" "$pkg"
    deb=$(find "$CACHE/debs" -name "${pkg}_*.deb" | sort | tail -n1)
  fi
  [ -n "$deb" ] || die "no .deb for $pkg"
  echo "$deb"
}

# The guest's /init. It is written with quoted here-documents so that nothing in it is expanded on the host.
write_guest_init() {
  cat >"$1" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin DM_DISABLE_UDEV=1 HOME=/tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
out=/dev/ttyS1
stty -F $out raw -echo 2>/dev/null
for m in $(cat /etc/kcompat/modules); do
  insmod "/lib/modules/$m.ko" || echo "kernel_vm guest: insmod $m failed" >$out
done
# Wait for every disk, then name each one by its serial (kcN), whatever order the PCI probe found them in.
want=$(cat /etc/kcompat/ndisks)
tries=0
while [ "$(ls /sys/block | grep -c '^vd')" -lt "$want" ] && [ $tries -lt 200 ]; do
  sleep 0.05
  tries=$((tries + 1))
done
: >/etc/kcompat/devmap
for d in /sys/block/vd*; do
  [ -e "$d" ] || continue
  name=$(cat "$d/serial" 2>/dev/null)
  majmin=$(cat "$d/dev")
  mknod "/dev/$name" b "${majmin%%:*}" "${majmin##*:}"
  echo "$majmin $name" >>/etc/kcompat/devmap
done
cd /tmp
echo "@KCOMPAT-START" >$out
sh /etc/kcompat/run.sh </dev/null >$out 2>&1
rc=$?
echo "@KCOMPAT-RC=$rc" >$out
# Let the UART drain even if a background job of the script still holds the port, then cut the power (no sync).
sleep 0.3
poweroff -n -f
INIT
  chmod 755 "$1"
}

# prepare: build the cached kernel + initramfs when missing or stale; prints its directory. A subshell, so that
# its temporary tree goes away however it ends.
prepare() (
  local kpkg stamp base tree deb kver kmod m lib
  kpkg=$(resolve_kernel_pkg)
  base="$CACHE/base-$kpkg"
  stamp="$kpkg $(self_digest)"
  if [ -f "$base/stamp" ] && [ "$(cat "$base/stamp")" = "$stamp" ]; then
    echo "$base"
    return
  fi
  tree=$(mktemp -d "$CACHE/build.XXXXXX")
  trap 'rm -rf "$tree"' EXIT
  for pkg in "$kpkg" busybox-static dmsetup libdevmapper1.02.1; do
    deb=$(cached_deb "$pkg")
    dpkg -x "$deb" "$tree/x"
  done
  kver=${kpkg#linux-image-}
  kmod="$tree/x/lib/modules/$kver/kernel"
  [ -d "$kmod" ] || die "$kpkg has no modules for $kver"
  local root="$tree/root" order=() seen=" "
  mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,etc/kcompat,lib/modules}
  cp "$tree/x/bin/busybox" "$root/bin/busybox"
  cp "$tree/x/sbin/dmsetup" "$root/sbin/dmsetup"
  # dmsetup's libraries: libdevmapper from its package, the rest (libc, libselinux, ...) from this Debian host.
  while read -r lib; do
    [ -n "$lib" ] || continue
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done < <(LD_LIBRARY_PATH="$tree/x/lib/x86_64-linux-gnu" ldd "$tree/x/sbin/dmsetup" |
    awk '/=> \// {print $3} /^\t\/lib/ {print $1}')
  for lib in "$tree"/x/lib/x86_64-linux-gnu/libdevmapper.so.*; do
    cp -L "$lib" "$root/lib/x86_64-linux-gnu/"
  done
  # Depth-first over "depends=" so that every module is inserted after the ones it needs.
  add_module() {
    local name=$1 file deps d
    case "$seen" in *" $name "*) return ;; esac
    seen="$seen$name "
    file=$(find "$kmod" \( -name "$name.ko" -o -name "${name//-/_}.ko" -o -name "${name//_/-}.ko" \) | head -n1)
    [ -n "$file" ] || die "module $name not found in $kpkg"
    deps=$(tr '\0' '\n' <"$file" | sed -n 's/^depends=//p' | head -n1)
    for d in ${deps//,/ }; do add_module "$d"; done
    cp "$file" "$root/lib/modules/$name.ko"
    order+=("$name")
  }
  for m in "${WANTED_MODULES[@]}"; do add_module "$m"; done
  echo "${order[*]}" >"$root/etc/kcompat/modules"
  write_guest_init "$root/init"
  # Built inside the private tree and moved into place whole, so that a concurrent run never sees half of it.
  mkdir -p "$tree/base"
  (cd "$root" && find . | "$root/bin/busybox" cpio -o -H newc 2>/dev/null) | gzip -1 >"$tree/base/initrd.gz"
  cp "$tree/x/boot/vmlinuz-$kver" "$tree/base/vmlinuz"
  cp "$root/bin/busybox" "$tree/base/busybox"
  echo "$stamp" >"$tree/base/stamp"
  rm -rf "$base"
  mv "$tree/base" "$base"
  # One kernel at a time: what an older kernel left (its tree, its .deb, its KVM verdict) is dead weight now.
  find "$CACHE" -maxdepth 1 \( -name 'base-*' ! -name "base-$kpkg" -o -name 'accel-*' \) -exec rm -rf {} +
  find "$CACHE/debs" -name 'linux-image-*.deb' ! -name "${kpkg}_*" -delete
  echo "$base"
)

# boot BASE ACCEL TIMEOUT SCRIPT OUT CONSOLE IMAGE...: one guest run; prints nothing, returns qemu's status.
boot() {
  local base=$1 accel=$2 timeout=$3 script=$4 out=$5 console=$6
  shift 6
  local run i=0 img args=()
  run=$(mktemp -d)
  mkdir -p "$run/root/etc/kcompat"
  cp "$script" "$run/root/etc/kcompat/run.sh"
  echo $# >"$run/root/etc/kcompat/ndisks"
  (cd "$run/root" && find . | "$base/busybox" cpio -o -H newc 2>/dev/null) | gzip -1 >"$run/run.gz"
  cat "$base/initrd.gz" "$run/run.gz" >"$run/initrd.gz"
  for img in "$@"; do
    [ -e "$img" ] || die "no such image: $img"
    args+=(-drive "file=$img,format=raw,if=none,id=d$i,cache=writeback"
      -device "virtio-blk-pci,drive=d$i,serial=kc$i")
    i=$((i + 1))
  done
  if [ "$accel" = kvm ]; then
    args+=(-accel kvm -cpu "host,-arch-capabilities")
  else
    args+=(-accel tcg -cpu max)
  fi
  local rc=0
  timeout --kill-after=5 "$timeout" qemu-system-x86_64 -M pc -nodefaults -no-reboot -display none \
    -m "$GUEST_MEM_MB" -smp 1 -bios /usr/share/qemu/qboot.rom \
    -kernel "$base/vmlinuz" -initrd "$run/initrd.gz" \
    -append "console=ttyS0 rdinit=/init panic=-1 oops=panic loglevel=4 mitigations=off no_timer_check" \
    -serial "file:$console" -serial "file:$out" "${args[@]}" </dev/null >"$run/qemu.log" 2>&1 || rc=$?
  [ -s "$run/qemu.log" ] && cat "$run/qemu.log" >>"$console"
  rm -rf "$run"
  return $rc
}

# KVM may exist and still fail to run this kernel; one short probe boot decides, remembered per host and qemu.
choose_accel() {
  local base=$1 want=${KCOPYFS_COMPAT_ACCEL:-auto}
  if [ "$want" != auto ]; then
    echo "$want"
    return
  fi
  [ -w /dev/kvm ] || {
    echo tcg
    return
  }
  local key memo probe
  key=$(printf '%s %s %s' "$(uname -r)" "$(qemu-system-x86_64 --version | head -n1)" "$(cat "$base/stamp")" |
    sha256sum | cut -c1-16)
  memo="$CACHE/accel-$key"
  if [ ! -f "$memo" ]; then
    probe=$(mktemp -d)
    printf 'echo kvm-ok\n' >"$probe/s.sh"
    if boot "$base" kvm 15 "$probe/s.sh" "$probe/out" "$probe/console" 2>/dev/null &&
      grep -q '^kvm-ok' "$probe/out"; then
      echo kvm >"$memo"
    else
      echo tcg >"$memo"
    fi
    rm -rf "$probe"
  fi
  cat "$memo"
}

main() {
  local timeout=240 console=""
  while [ $# -gt 0 ]; do
    case $1 in
    --prepare)
      mkdir -p "$CACHE"
      prepare
      return
      ;;
    --timeout)
      timeout=$2
      shift 2
      ;;
    --console)
      console=$2
      shift 2
      ;;
    -h | --help)
      sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      return
      ;;
    *) break ;;
    esac
  done
  [ $# -ge 1 ] || die "usage: kernel_vm.sh [--timeout S] [--console FILE] GUEST_SCRIPT [IMAGE...]"
  local script=$1
  shift
  [ $# -le 24 ] || die "at most 24 images"
  command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 is missing (Debian package qemu-system-x86)"
  [ -f /usr/share/qemu/qboot.rom ] || die "/usr/share/qemu/qboot.rom is missing (Debian package qemu-system-data)"
  mkdir -p "$CACHE"
  local base accel rc=0
  base=$(prepare)
  accel=$(choose_accel "$base")
  work=$(mktemp -d)
  # The serial captures live in a private directory that goes away however this ends.
  trap 'rm -rf "$work"' EXIT
  boot "$base" "$accel" "$timeout" "$script" "$work/out" "$work/console" "$@" || rc=$?
  # Emulation on a busy host can lose the guest before the script starts (a timer check, a stall): the images
  # are untouched then, so one more boot is safe.
  if ! grep -qa '^@KCOMPAT-START' "$work/out"; then
    echo "kernel_vm: the guest did not reach the script (qemu status $rc); booting again. Console tail:" >&2
    tail -n 5 "$work/console" >&2
    rc=0
    boot "$base" "$accel" "$timeout" "$script" "$work/out" "$work/console" "$@" || rc=$?
  fi
  [ -n "$console" ] && cp "$work/console" "$console"
  tr -d '\r' <"$work/out" | { grep -av '^@KCOMPAT-START' || true; } >"$work/out.txt"
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    grep -v '^@KCOMPAT-RC=' "$work/out.txt" || true
    echo "kernel_vm: the guest did not finish within ${timeout}s; console tail:" >&2
    tail -n 20 "$work/console" >&2
    return 124
  fi
  local marker
  marker=$(grep -a '^@KCOMPAT-RC=' "$work/out.txt" | tail -n1 || true)
  grep -av '^@KCOMPAT-RC=' "$work/out.txt" || true
  if [ -z "$marker" ]; then
    echo "kernel_vm: the guest ended without reporting (qemu status $rc, accel $accel); console tail:" >&2
    tail -n 30 "$work/console" >&2
    return 125
  fi
  return "${marker#@KCOMPAT-RC=}"
}

main "$@"
