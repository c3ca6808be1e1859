// The kcopyfs mounts of this mount namespace, as /proc/self/mountinfo lists them (fstype fuse.kcopyfs).
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace kcopyfs::daemon {

struct KcopyfsMount {
  std::string mountpoint;  // octal escapes undone
  std::string state_dir;   // the mount's source: the state directory of its daemon
  dev_t device = 0;        // the filesystem's st_dev
};

// In mountinfo order: of two mounts stacked on one mountpoint, the later one is on top. Empty if mountinfo
// cannot be read.
std::vector<KcopyfsMount> kcopyfs_mounts();

}  // namespace kcopyfs::daemon
