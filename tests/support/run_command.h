// Running a program from a test: its stdout and stderr captured, its exit code, run time and resource usage,
// every wait bounded (a program that overruns is killed).
#pragma once

#include <sys/resource.h>
#include <sys/types.h>

#include <chrono>
#include <ostream>
#include <string>
#include <vector>

namespace kcopyfs::test {

inline constexpr std::chrono::seconds kCommandTimeout(60);

struct CommandResult {
  std::string command;   // argv joined by spaces, for messages
  bool started = false;  // false: it could not be started, and err says why
  int exit_code = -1;    // -1: killed by a signal, timed out or could not start
  bool timed_out = false;
  std::string out;
  std::string err;
  double seconds = 0;  // from its start until it was reaped
  rusage usage{};      // its resource usage (wait4)

  bool ok() const { return exit_code == 0; }
  // The lines of stderr (without their '\n').
  std::vector<std::string> err_lines() const;
  // The command, its exit code, stdout and stderr, for a failure message.
  std::string describe() const;
};

std::ostream& operator<<(std::ostream& os, const CommandResult& r);

// Runs argv (argv[0] looked up in PATH unless it holds a '/'), stdin from /dev/null, and waits at most
// `timeout` for it to exit (then it is killed, and the result says timed_out).
//
// Output is read until the program exits, then what is left in the pipes is taken, and the call returns: it
// does not wait for the pipes to close. Everything the program itself wrote is in the pipes by the time it
// has exited, so nothing of it is lost; only a process it left running that inherited the pipes (the daemon
// of `kcopyfs mount`) could write more later, and waiting for that one to close them would last as long as
// the daemon does (until the timeout). Such later output is not wanted by any test.
CommandResult run_command(const std::vector<std::string>& argv,
                          std::chrono::milliseconds timeout = kCommandTimeout);

// Starts argv (argv[0] looked up in PATH unless it holds a '/') with stdin from /dev/null and its stdout and
// stderr on the given fds (they may be the same fd), without waiting for it. Result: 0 with *pid set, or
// posix_spawn's error number.
int spawn_program(const std::vector<std::string>& argv, int stdout_fd, int stderr_fd, pid_t* pid);

}  // namespace kcopyfs::test
