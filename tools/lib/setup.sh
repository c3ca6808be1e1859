# Sourced by tools/test.sh and tools/demo.sh: installs the Debian packages that are missing (and only those),
# then configures and builds kcopyfs. Quiet when nothing needs installing.

KCOPYFS_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# Build and test dependencies, all from Debian 12.
KCOPYFS_PACKAGES=(
  cmake g++ make pkg-config
  liburing-dev libfuse3-dev fuse3 libboost-program-options-dev libgtest-dev nlohmann-json3-dev
  e2fsprogs util-linux fuse2fs nbdkit libnbd-bin
)

kcopyfs_install_missing() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "Installing missing packages: ${missing[*]}"
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# kcopyfs_build DIR [cmake args...]: configure (once) and build into DIR.
kcopyfs_build() {
  local dir=$1
  shift
  cmake -S "$KCOPYFS_ROOT" -B "$dir" "$@" >/dev/null
  cmake --build "$dir" -j "$(nproc)" -- --no-print-directory
}
