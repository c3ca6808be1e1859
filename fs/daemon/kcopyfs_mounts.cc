#include "fs/daemon/kcopyfs_mounts.h"

#include <sys/sysmacros.h>

#include <fstream>
#include <sstream>

#include "fs/daemon/control_protocol.h"

namespace kcopyfs::daemon {
namespace {

// Undoes the kernel's octal escapes in mountinfo fields (\040 space, \011 tab, \012 newline, \134 backslash).
std::string unescape_mountinfo(const std::string& field) {
  std::string out;
  out.reserve(field.size());
  for (size_t i = 0; i < field.size(); ++i) {
    if (field[i] == '\\' && i + 3 < field.size() && field[i + 1] >= '0' && field[i + 1] <= '3' &&
        field[i + 2] >= '0' && field[i + 2] <= '7' && field[i + 3] >= '0' && field[i + 3] <= '7') {
      out += static_cast<char>((field[i + 1] - '0') * 64 + (field[i + 2] - '0') * 8 + (field[i + 3] - '0'));
      i += 3;
    } else {
      out += field[i];
    }
  }
  return out;
}

}  // namespace

std::vector<KcopyfsMount> kcopyfs_mounts() {
  std::vector<KcopyfsMount> mounts;
  std::ifstream mountinfo("/proc/self/mountinfo");
  std::string line;
  while (std::getline(mountinfo, line)) {
    // id parent major:minor root mountpoint options [optional...] - fstype source superoptions
    std::istringstream in(line);
    std::vector<std::string> fields;
    std::string field;
    while (in >> field) fields.push_back(field);
    if (fields.size() < 5) continue;
    size_t dash = 6;
    while (dash < fields.size() && fields[dash] != "-") ++dash;
    if (dash + 2 >= fields.size() || fields[dash + 1] != kMountType) continue;
    unsigned maj = 0, min = 0;
    if (std::sscanf(fields[2].c_str(), "%u:%u", &maj, &min) != 2) continue;
    mounts.push_back(
        {unescape_mountinfo(fields[4]), unescape_mountinfo(fields[dash + 2]), makedev(maj, min)});
  }
  return mounts;
}

}  // namespace kcopyfs::daemon
