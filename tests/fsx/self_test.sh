#!/bin/sh
# ctest driver for kcopyfs_fsx: makes a fresh file of SIZE random bytes in DIR, runs the checker on it (or on
# a copy given as --initial-model, or on a loop device over it), and removes everything at exit.
# Usage: self_test.sh FSX DIR SIZE file|model|loop [FSX_OPTIONS...]
set -eu
fsx=$1 dir=$2 size=$3 mode=$4
shift 4
file=$(mktemp "$dir/kcopyfs-fsx.XXXXXX")
loop=""
cleanup() {
  if [ -n "$loop" ]; then losetup -d "$loop"; fi
  rm -f -- "$file" "$file.model"
}
trap cleanup EXIT
head -c "$size" /dev/urandom >"$file"
target=$file
case $mode in
  file) ;;
  model)
    cp -- "$file" "$file.model"
    set -- --initial-model "$file.model" "$@"
    ;;
  loop)
    # A real block device shows the end-of-device rules (ENOSPC, short writes) the views must copy.
    if [ "$(id -u)" -ne 0 ] || ! loop=$(losetup -f --show -- "$file" 2>/dev/null); then
      echo "self_test.sh: skipped (needs root and a free loop device)"
      exit 77
    fi
    target=$loop
    ;;
  *) echo "self_test.sh: unknown mode $mode" >&2; exit 2 ;;
esac
"$fsx" "$@" "$target"
