// Checks the daemon makes on a DEVICE path before opening it (interface.md: Sizes and names).
#pragma once

#include <string>

#include "engine/result.h"

namespace kcopyfs::daemon {

// Refuses a device that lives inside any kcopyfs mount (a FUSE mount of type fuse.kcopyfs, found in
// /proc/self/mountinfo by the st_dev of the path), or a loop device whose backing file does: serving it
// would deadlock the daemon. Also refuses a path that does not exist or is neither a regular file nor a
// block device. Errors name the path and the reason in one sentence.
Status check_device_path(const std::string& path);

}  // namespace kcopyfs::daemon
