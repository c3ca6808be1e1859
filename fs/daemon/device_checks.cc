#include "fs/daemon/device_checks.h"

#include <fcntl.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <cerrno>
#include <fstream>
#include <optional>
#include <sstream>
#include <vector>

#include "engine/unique_fd.h"
#include "fs/daemon/kcopyfs_mounts.h"

namespace kcopyfs::daemon {

namespace {

// The mountpoint of the kcopyfs mount whose filesystem is dev, if any.
std::optional<std::string> kcopyfs_mount_of(dev_t dev) {
  for (const KcopyfsMount& m : kcopyfs_mounts())
    if (m.device == dev) return m.mountpoint;
  return std::nullopt;
}

// The backing file of the loop device rdev and the filesystem it lives on, or nothing when rdev is not a
// bound loop device.
struct LoopBacking {
  std::string file;
  std::optional<dev_t> dev;
};

std::optional<LoopBacking> loop_backing(const std::string& path, dev_t rdev) {
  const std::string sys = "/sys/dev/block/" + std::to_string(major(rdev)) + ":" +
                          std::to_string(minor(rdev)) + "/loop/backing_file";
  std::ifstream in(sys);
  if (!in) return std::nullopt;  // not a loop device, or one with nothing attached
  LoopBacking backing;
  std::getline(in, backing.file);
  const std::string deleted = " (deleted)";
  if (backing.file.size() >= deleted.size() &&
      backing.file.compare(backing.file.size() - deleted.size(), deleted.size(), deleted) == 0)
    backing.file.resize(backing.file.size() - deleted.size());
  struct stat st {};
  if (::stat(backing.file.c_str(), &st) == 0) {
    backing.dev = st.st_dev;
  } else {
    // The path no longer leads to the file (deleted, renamed, another namespace): the loop driver still knows
    // the device it lives on.
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
    loop_info64 info{};
    if (fd.valid() && ::ioctl(fd.get(), LOOP_GET_STATUS64, &info) == 0)
      backing.dev = static_cast<dev_t>(info.lo_device);
  }
  return backing;
}

}  // namespace

Status check_device_path(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return Error::from_errno(errno, "device " + path);
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
    return Error::invalid(path + " is neither a regular file nor a block device");
  // The daemon would serve its own requests with the device's I/O: a FUSE request waiting on itself.
  const auto deadlock = std::make_error_code(std::errc::resource_deadlock_would_occur);
  if (auto mount = kcopyfs_mount_of(st.st_dev))
    return Error(deadlock,
                 path + " is inside the kcopyfs mount at " + *mount + ": serving it would deadlock");
  if (S_ISBLK(st.st_mode)) {
    if (auto backing = loop_backing(path, st.st_rdev); backing && backing->dev) {
      if (auto mount = kcopyfs_mount_of(*backing->dev))
        return Error(deadlock, path + " is a loop device over " + backing->file +
                                   ", inside the kcopyfs mount at " + *mount + ": serving it would deadlock");
    }
  }
  return {};
}

}  // namespace kcopyfs::daemon
