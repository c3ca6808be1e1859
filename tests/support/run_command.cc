#include "tests/support/run_command.h"

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <sstream>

#include "engine/unique_fd.h"

extern char** environ;

namespace kcopyfs::test {

namespace {

using Clock = std::chrono::steady_clock;

// Reads the non-blocking fd until it would block; at EOF (or an error) it is closed.
void drain(UniqueFd& fd, std::string& sink) {
  while (fd.valid()) {
    char buf[4096];
    const ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n > 0) {
      sink.append(buf, static_cast<size_t>(n));
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && errno == EAGAIN) {
      return;
    } else {
      fd.reset();  // EOF or error
    }
  }
}

}  // namespace

std::vector<std::string> CommandResult::err_lines() const {
  std::vector<std::string> lines;
  std::istringstream in(err);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

std::string CommandResult::describe() const {
  std::string text = "`" + command + "` exit ";
  text += std::to_string(exit_code);
  if (timed_out) text += " (timed out)";
  return text + "\nstdout: " + out + "\nstderr: " + err;
}

std::ostream& operator<<(std::ostream& os, const CommandResult& r) { return os << r.describe(); }

int spawn_program(const std::vector<std::string>& argv, int stdout_fd, int stderr_fd, pid_t* pid) {
  if (argv.empty()) return EINVAL;
  std::vector<std::string> words = argv;
  std::vector<char*> pointers;
  for (auto& w : words) pointers.push_back(w.data());
  pointers.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, stdout_fd, 1);
  posix_spawn_file_actions_adddup2(&actions, stderr_fd, 2);
  const int rc = ::posix_spawnp(pid, pointers[0], &actions, nullptr, pointers.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  return rc;
}

CommandResult run_command(const std::vector<std::string>& argv, std::chrono::milliseconds timeout) {
  CommandResult result;
  for (const auto& a : argv) result.command += (result.command.empty() ? "" : " ") + a;
  int out_pipe[2], err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) {
    result.err = std::string("pipe2: ") + std::strerror(errno);
    return result;
  }
  UniqueFd out_read(out_pipe[0]), out_write(out_pipe[1]);
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) {
    result.err = std::string("pipe2: ") + std::strerror(errno);
    return result;
  }
  UniqueFd err_read(err_pipe[0]), err_write(err_pipe[1]);
  ::fcntl(out_read.get(), F_SETFL, O_NONBLOCK);
  ::fcntl(err_read.get(), F_SETFL, O_NONBLOCK);

  const auto start = Clock::now();
  pid_t pid = -1;
  const int rc = spawn_program(argv, out_write.get(), err_write.get(), &pid);
  if (rc != 0) {
    result.err = "posix_spawn " + (argv.empty() ? std::string() : argv[0]) + ": " + std::strerror(rc);
    return result;
  }
  result.started = true;
  out_write.reset();
  err_write.reset();
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));

  const auto deadline = start + timeout;
  int status = 0;
  bool reaped = false;
  for (;;) {
    const pid_t w = ::wait4(pid, &status, WNOHANG, &result.usage);
    if (w == pid) {
      reaped = true;
      break;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      result.timed_out = true;
      break;
    }
    pollfd fds[3] = {{out_read.get(), POLLIN, 0}, {err_read.get(), POLLIN, 0}, {pidfd.get(), POLLIN, 0}};
    // Without a pidfd, wake up now and then to check on the child.
    const int wait_ms = pidfd.valid() ? static_cast<int>(left.count()) : std::min<int>(20, left.count());
    const int n = ::poll(fds, 3, wait_ms);
    if (n < 0 && errno != EINTR) break;
    drain(out_read, result.out);
    drain(err_read, result.err);
  }
  if (!reaped) {
    ::kill(pid, SIGKILL);
    while (::wait4(pid, &status, 0, &result.usage) < 0 && errno == EINTR) {
    }
  }
  result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  // Whatever the child wrote before it exited is in the pipes now.
  drain(out_read, result.out);
  drain(err_read, result.err);
  if (!result.timed_out && reaped && WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  return result;
}

}  // namespace kcopyfs::test
