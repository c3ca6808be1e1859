#include "tests/support/forked.h"

#include <poll.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <exception>
#include <iostream>

#include "engine/unique_fd.h"

namespace kcopyfs::test {

namespace {

using Clock = std::chrono::steady_clock;

UniqueFd pidfd_of(pid_t pid) { return UniqueFd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0))); }

}  // namespace

std::optional<int> wait_child(pid_t pid, std::chrono::milliseconds timeout) {
  const UniqueFd pidfd = pidfd_of(pid);
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    int status = 0;
    const pid_t w = ::waitpid(pid, &status, WNOHANG);
    if (w == pid) return status;
    if (w < 0 && errno != EINTR) return std::nullopt;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) break;
    pollfd p{pidfd.get(), POLLIN, 0};
    ::poll(&p, 1, pidfd.valid() ? static_cast<int>(left.count()) : 20);
  }
  ::kill(pid, SIGKILL);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return std::nullopt;
}

bool wait_gone(pid_t pid, std::chrono::milliseconds timeout) {
  const UniqueFd pidfd = pidfd_of(pid);
  if (!pidfd.valid()) {
    // No pidfd (the process is gone already, or the kernel lacks pidfd_open): ask kill(0), bounded.
    const auto deadline = Clock::now() + timeout;
    while (::kill(pid, 0) == 0 || errno != ESRCH) {
      if (Clock::now() >= deadline) return false;
      ::poll(nullptr, 0, 10);
    }
    return true;
  }
  pollfd p{pidfd.get(), POLLIN, 0};
  return ::poll(&p, 1, static_cast<int>(timeout.count())) == 1;
}

std::string describe_status(const std::optional<int>& status) {
  if (!status) return "timed out (killed)";
  if (WIFEXITED(*status)) return "exit " + std::to_string(WEXITSTATUS(*status));
  if (WIFSIGNALED(*status)) return std::string("killed by ") + ::strsignal(WTERMSIG(*status));
  return "stopped";
}

Forked::Forked(const std::function<int()>& fn) {
  std::cout.flush();
  std::cerr.flush();
  pid_ = ::fork();
  if (pid_ == 0) {
    int code = 3;
    try {
      code = fn();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child: exception: %s\n", e.what());
    }
    std::fflush(stderr);
    ::_exit(code);
  }
}

Forked::~Forked() {
  if (pid_ > 0) wait(std::chrono::milliseconds(0));
}

std::optional<int> Forked::wait(std::chrono::milliseconds timeout) {
  if (pid_ <= 0) return std::nullopt;
  auto status = wait_child(pid_, timeout);
  pid_ = -1;
  return status;
}

}  // namespace kcopyfs::test
