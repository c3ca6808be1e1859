#include "fs/daemon/socket_io.h"

#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <utility>

namespace kcopyfs::daemon {

namespace {

using Clock = std::chrono::steady_clock;

// Milliseconds left until deadline, for poll(); 0 once it has passed.
int remaining_ms(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left > 0 ? static_cast<int>(left) : 0;
}

}  // namespace

LineRead read_line(int fd, Clock::time_point deadline, size_t max_bytes, int wake_fd) {
  LineRead result;
  std::string buffer;
  char chunk[16384];
  for (;;) {
    // poll() ignores a negative fd, so wake_fd -1 watches nothing.
    pollfd fds[2] = {{fd, POLLIN, 0}, {wake_fd, POLLIN, 0}};
    int ready = ::poll(fds, 2, remaining_ms(deadline));
    if (ready < 0) {
      if (errno == EINTR) continue;
      result.error = errno;
      return result;
    }
    if (ready == 0) {
      result.status = LineStatus::timed_out;
      return result;
    }
    if (fds[1].revents != 0) {
      result.status = LineStatus::woken;
      return result;
    }
    ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
    // ECONNRESET after the data: the peer closed without reading all we sent (a server refusing a request).
    if (n == 0 || (n < 0 && errno == ECONNRESET)) {
      result.status = LineStatus::eof;
      result.line = std::move(buffer);
      return result;
    }
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      result.error = errno;
      return result;
    }
    const size_t old_size = buffer.size();
    buffer.append(chunk, static_cast<size_t>(n));
    const size_t newline = buffer.find('\n', old_size);
    if (newline != std::string::npos) {
      if (newline > max_bytes) {
        result.status = LineStatus::too_long;
        return result;
      }
      buffer.resize(newline);
      result.status = LineStatus::line;
      result.line = std::move(buffer);
      return result;
    }
    if (buffer.size() > max_bytes) {
      result.status = LineStatus::too_long;
      return result;
    }
  }
}

int write_all(int fd, const std::string& text, Clock::time_point deadline) {
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::send(fd, text.data() + done, text.size() - done, MSG_NOSIGNAL);
    if (n >= 0) {
      done += static_cast<size_t>(n);
      continue;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return errno;
    pollfd pfd = {fd, POLLOUT, 0};
    int ready = ::poll(&pfd, 1, remaining_ms(deadline));
    if (ready == 0) return ETIMEDOUT;
    if (ready < 0 && errno != EINTR) return errno;
  }
  return 0;
}

}  // namespace kcopyfs::daemon
