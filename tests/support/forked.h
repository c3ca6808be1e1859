// Forked children of a test: a function run in a child process, and bounded waits for processes to end. A
// child must not touch gtest (it reports on stderr or a pipe); every child is reaped, also when a test fails.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <optional>
#include <string>

namespace kcopyfs::test {

// Waits at most timeout for our child pid to exit, then kills and reaps it. Result: its wait status, or
// nullopt after the timeout (or when pid is not our child).
std::optional<int> wait_child(pid_t pid, std::chrono::milliseconds timeout);

// Waits at most timeout for a process that is not our child to be gone (a zombie counts as gone). Result:
// whether it is.
bool wait_gone(pid_t pid, std::chrono::milliseconds timeout);

// "exit N", "killed by SIGNAL" or "timed out (killed)", for messages.
std::string describe_status(const std::optional<int>& status);

// A forked child running fn (its exit code: fn's result; 3 when fn throws). The destructor kills and reaps a
// child still running.
class Forked {
 public:
  explicit Forked(const std::function<int()>& fn);
  ~Forked();
  Forked(const Forked&) = delete;
  Forked& operator=(const Forked&) = delete;

  pid_t pid() const { return pid_; }
  bool started() const { return pid_ > 0; }
  // Waits at most timeout (then kills). Result: the wait status, nullopt after a timeout. Once only.
  std::optional<int> wait(std::chrono::milliseconds timeout);

 private:
  pid_t pid_ = -1;
};

}  // namespace kcopyfs::test
