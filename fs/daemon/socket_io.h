// Line-oriented I/O with a deadline on a non-blocking stream socket: the framing of the control protocol
// (control_protocol.h: one JSON line each way), shared by its client (control_client.cc) and its server
// (control_server.cc).
#pragma once

#include <chrono>
#include <cstddef>
#include <string>

namespace kcopyfs::daemon {

enum class LineStatus {
  line,       // a whole line arrived
  eof,        // the peer closed (or reset) the connection before a '\n'; `line` holds what came before
  too_long,   // more than max_bytes arrived without a '\n'
  timed_out,  // the deadline passed first
  woken,      // wake_fd became readable first
  error,      // poll or recv failed; `error` is the errno
};

struct LineRead {
  LineStatus status = LineStatus::error;
  std::string line;  // without its '\n'
  int error = 0;
};

// Reads from the non-blocking socket fd up to the first '\n', a line of at most max_bytes, before the
// deadline. wake_fd, when not -1, is watched as well: once it is readable the read gives up
// (LineStatus::woken), so a shutdown does not wait for a peer that is slow to send.
LineRead read_line(int fd, std::chrono::steady_clock::time_point deadline, size_t max_bytes,
                   int wake_fd = -1);

// Sends all of text on the non-blocking socket fd (without SIGPIPE) before the deadline; a peer that stops
// reading cannot hold the caller beyond it. Result: 0, or an errno (ETIMEDOUT at the deadline).
int write_all(int fd, const std::string& text, std::chrono::steady_clock::time_point deadline);

}  // namespace kcopyfs::daemon
