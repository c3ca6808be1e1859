#include "fs/daemon/control_client.h"

#include <fcntl.h>
#include <limits.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "engine/unique_fd.h"
#include "fs/daemon/control_protocol.h"
#include "fs/daemon/kcopyfs_mounts.h"
#include "fs/daemon/socket_io.h"

namespace kcopyfs::daemon {

namespace {

using Clock = std::chrono::steady_clock;

// A reply (a status of many targets) is small, but a daemon gone wrong must not make the CLI eat all memory.
constexpr size_t kMaxReply = size_t{64} << 20;

// realpath, except that a mountpoint whose FUSE daemon died (ENOTCONN) is resolved through its parent: the
// CLI must still find such a mount to clean it up.
Result<std::string> resolve(const std::string& path) {
  char buffer[PATH_MAX];
  if (::realpath(path.c_str(), buffer) != nullptr) return std::string(buffer);
  const int err = errno;
  if (err == ENOTCONN || err == ECONNABORTED) {
    std::string trimmed = path;
    while (trimmed.size() > 1 && trimmed.back() == '/') trimmed.pop_back();
    const size_t slash = trimmed.rfind('/');
    const std::string parent =
        slash == std::string::npos ? "." : (slash == 0 ? "/" : trimmed.substr(0, slash));
    const std::string base = slash == std::string::npos ? trimmed : trimmed.substr(slash + 1);
    if (!base.empty() && base != "." && base != ".." && ::realpath(parent.c_str(), buffer) != nullptr) {
      std::string resolved = buffer;
      if (resolved != "/") resolved += '/';
      return resolved + base;
    }
  }
  return Error::from_errno(err, path);
}

}  // namespace

Result<std::string> find_state_dir(const std::string& mountpoint) {
  auto resolved = resolve(mountpoint);
  if (!resolved.ok()) return resolved.error();
  std::string found;
  bool matched = false;
  for (const KcopyfsMount& m : kcopyfs_mounts()) {
    if (m.mountpoint != *resolved) continue;
    // Mounts stack: the last line is the one on top, the one the path reaches.
    found = m.state_dir;
    matched = true;
  }
  if (!matched) return Error::invalid(mountpoint + " is not a kcopyfs mount");
  return found;
}

Result<nlohmann::json> call_daemon(const std::string& state_dir, const nlohmann::json& request,
                                   std::chrono::milliseconds timeout) {
  const Clock::time_point deadline = Clock::now() + timeout;
  const std::string path = state_dir + "/" + kSocketName;
  const std::string no_daemon = "no kcopyfs daemon is serving " + state_dir;

  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::string connect_path = path;
  UniqueFd dir;  // keeps /proc/self/fd/N valid until connect() for paths longer than sun_path
  if (connect_path.size() >= sizeof addr.sun_path) {
    dir.reset(::open(state_dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!dir.valid()) {
      if (errno == ENOENT) return Error(std::error_code(ENOENT, std::generic_category()), no_daemon);
      return Error::from_errno(errno, "connect " + path);
    }
    connect_path = "/proc/self/fd/" + std::to_string(dir.get()) + "/" + kSocketName;
    if (connect_path.size() >= sizeof addr.sun_path)
      return Error::from_errno(ENAMETOOLONG, "connect " + path);
  }
  std::memcpy(addr.sun_path, connect_path.c_str(), connect_path.size() + 1);

  // Non-blocking, so that every step, a full listen backlog included (EAGAIN), honours the timeout.
  UniqueFd sock(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!sock.valid()) return Error::from_errno(errno, "connect " + path);
  for (;;) {
    if (::connect(sock.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0) break;
    const int err = errno;
    if (err == EINTR) continue;
    if (err == ENOENT || err == ECONNREFUSED)
      return Error(std::error_code(err, std::generic_category()), no_daemon);
    if (err == EAGAIN && Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    if (err == EAGAIN) return Error::from_errno(ETIMEDOUT, "connect " + path);
    return Error::from_errno(err, "connect " + path);
  }
  dir.reset();

  std::string text = request.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  text += '\n';
  const int write_err = write_all(sock.get(), text, deadline);
  // Even when sending failed, a reply may be waiting: the daemon answers a refused request (permission, size)
  // without reading it all.
  const LineRead got = read_line(sock.get(), deadline, kMaxReply);
  if (got.status == LineStatus::timed_out)
    return Error(std::error_code(ETIMEDOUT, std::generic_category()),
                 "the daemon serving " + state_dir + " did not reply in time");
  const int read_err = got.status == LineStatus::too_long ? EMSGSIZE : got.error;
  if (read_err != 0 || (got.line.empty() && got.status == LineStatus::eof)) {
    if (write_err != 0 && write_err != EPIPE && write_err != ECONNRESET)
      return Error::from_errno(write_err, "send to " + path);
    if (read_err != 0) return Error::from_errno(read_err, "receive from " + path);
    return Error(std::error_code(ECONNRESET, std::generic_category()),
                 "the daemon serving " + state_dir + " closed the connection without replying");
  }
  nlohmann::json reply = nlohmann::json::parse(got.line, nullptr, false);
  if (reply.is_discarded() || !reply.is_object())
    return Error(std::error_code(EPROTO, std::generic_category()), "the daemon's reply is not JSON");
  return reply;
}

}  // namespace kcopyfs::daemon
