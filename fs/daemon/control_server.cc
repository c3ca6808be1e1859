#include "fs/daemon/control_server.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <exception>
#include <utility>

#include "fs/daemon/control_protocol.h"
#include "fs/daemon/socket_io.h"

namespace kcopyfs::daemon {

namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kMaxRequest = size_t{1} << 20;
constexpr std::chrono::seconds kRequestDeadline(10);

nlohmann::json error_reply(const std::string& message) { return {{"ok", false}, {"error", message}}; }

void send_reply(int fd, const nlohmann::json& reply) {
  // replace: a handler's message with invalid UTF-8 (a path, say) must not make dump() throw.
  std::string text = reply.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  text += '\n';
  // A peer that stops reading must not hold the server beyond the deadline; a failed reply is just dropped.
  (void)write_all(fd, text, Clock::now() + kRequestDeadline);
}

}  // namespace

Result<std::unique_ptr<ControlServer>> ControlServer::start(const std::string& state_dir, uid_t owner,
                                                            Handler handler) {
  const std::string path = state_dir + "/" + kSocketName;
  // The directory's fd lets every step name the socket by a short path, however long state_dir is.
  UniqueFd dir(::open(state_dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!dir.valid()) return Error::from_errno(errno, "control socket " + path);

  // Only a stale socket is replaced: any other file there is not ours to delete.
  struct stat st {};
  if (::fstatat(dir.get(), kSocketName, &st, AT_SYMLINK_NOFOLLOW) == 0) {
    if (!S_ISSOCK(st.st_mode)) return Error::from_errno(EEXIST, "control socket " + path);
    if (::unlinkat(dir.get(), kSocketName, 0) != 0 && errno != ENOENT)
      return Error::from_errno(errno, "control socket " + path);
  } else if (errno != ENOENT) {
    return Error::from_errno(errno, "control socket " + path);
  }

  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::string bind_path = path;
  if (bind_path.size() >= sizeof addr.sun_path)
    bind_path = "/proc/self/fd/" + std::to_string(dir.get()) + "/" + kSocketName;
  if (bind_path.size() >= sizeof addr.sun_path)
    return Error::from_errno(ENAMETOOLONG, "control socket " + path);
  std::memcpy(addr.sun_path, bind_path.c_str(), bind_path.size() + 1);

  UniqueFd sock(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!sock.valid()) return Error::from_errno(errno, "control socket " + path);
  if (::bind(sock.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0)
    return Error::from_errno(errno, "control socket " + path);
  // From here on a failure must not leave the socket file behind.
  auto fail = [&](int err) {
    ::unlinkat(dir.get(), kSocketName, 0);
    return Error::from_errno(err, "control socket " + path);
  };
  // bind() created the file with the process umask; the 0700 directory keeps others out until this chmod,
  // and no one can connect before listen() anyway.
  if (::fchmodat(dir.get(), kSocketName, 0600, 0) != 0) return fail(errno);
  if (::listen(sock.get(), SOMAXCONN) != 0) return fail(errno);
  UniqueFd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake.valid()) return fail(errno);

  std::unique_ptr<ControlServer> server(new ControlServer());
  server->socket_path_ = path;
  server->owner_ = owner;
  server->handler_ = std::move(handler);
  server->listen_fd_ = std::move(sock);
  server->wake_fd_ = std::move(wake);
  try {
    server->thread_ = std::thread([s = server.get()] { s->serve(); });
  } catch (const std::system_error& e) {
    // The destructor would unlink the path too, but it must not join a thread that never started.
    return fail(e.code().value());
  }
  return server;
}

ControlServer::~ControlServer() {
  if (thread_.joinable()) {
    const uint64_t one = 1;
    // The eventfd stays readable from now on, so the loop sees it after the request it may be serving.
    (void)!::write(wake_fd_.get(), &one, sizeof one);
    thread_.join();
  }
  listen_fd_.reset();
  if (!socket_path_.empty()) ::unlink(socket_path_.c_str());
}

void ControlServer::serve() {
  for (;;) {
    pollfd fds[2] = {{listen_fd_.get(), POLLIN, 0}, {wake_fd_.get(), POLLIN, 0}};
    int ready = ::poll(fds, 2, -1);
    if (ready < 0) {
      if (errno == EINTR) continue;
      return;  // poll on two valid fds fails only on ENOMEM; nothing sensible is left to do
    }
    if (fds[1].revents != 0) return;
    if (fds[0].revents == 0) continue;
    UniqueFd conn(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!conn.valid()) {
      // EMFILE and the like leave the connection queued: pause so the loop does not spin on it.
      if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }

    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(conn.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 ||
        (cred.uid != owner_ && cred.uid != 0)) {
      // Refused before reading anything, so a stranger's input is never parsed.
      send_reply(conn.get(), error_reply("permission denied"));
      continue;
    }

    // Watching wake_fd_ too, so a shutdown does not wait for a client that is slow to send its request.
    const LineRead got = read_line(conn.get(), Clock::now() + kRequestDeadline, kMaxRequest, wake_fd_.get());
    switch (got.status) {
      case LineStatus::line:
        break;
      case LineStatus::too_long:
        send_reply(conn.get(), error_reply("the request is longer than 1 MiB"));
        continue;
      case LineStatus::timed_out:
        send_reply(conn.get(), error_reply("the request did not arrive within 10 seconds"));
        continue;
      case LineStatus::eof:
      case LineStatus::error:
        continue;  // the client is gone
      case LineStatus::woken:
        return;  // shutting down, and the request was not complete: nothing is being served yet
    }

    nlohmann::json request = nlohmann::json::parse(got.line, nullptr, false);
    nlohmann::json reply;
    if (request.is_discarded()) {
      reply = error_reply("the request is not JSON");
    } else if (!request.is_object()) {
      reply = error_reply("the request is not a JSON object");
    } else if (!request.contains("op") || !request["op"].is_string()) {
      reply = error_reply("the request has no \"op\" string");
    } else {
      try {
        reply = handler_(request);
        if (!reply.is_object() || !reply.contains("ok") || !reply["ok"].is_boolean())
          reply = error_reply("internal error: the reply to \"" + request["op"].get<std::string>() +
                              "\" has no \"ok\"");
      } catch (const std::exception& e) {
        reply = error_reply(std::string("internal error: ") + e.what());
      } catch (...) {
        reply = error_reply("internal error: unknown exception");
      }
    }
    send_reply(conn.get(), reply);
  }
}

}  // namespace kcopyfs::daemon
