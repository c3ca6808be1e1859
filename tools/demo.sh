#!/usr/bin/env bash
# Installs what is missing, builds kcopyfs (Release) into build/ and runs `build/kcopyfs demo`.
set -euo pipefail
source "$(dirname "$0")/lib/setup.sh"
kcopyfs_install_missing "${KCOPYFS_PACKAGES[@]}"
cd "$KCOPYFS_ROOT"
kcopyfs_build build -DCMAKE_BUILD_TYPE=Release
exec build/kcopyfs demo "$@"
