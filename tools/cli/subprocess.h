// Running other programs (mkfs.ext4, losetup, ...) from the CLI, without a shell.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace kcopyfs::cli {

// Runs argv[0] (looked up in PATH) with argv, waits, and returns its exit code (128+signal when killed, 127
// when it could not start). quiet: its stdout and stderr go to /dev/null.
int run_program(const std::vector<std::string>& argv, bool quiet = false);

// Starts argv as run_program does, in the working directory `dir` ("" keeps ours), without waiting for it.
// Returns its pid, or -1 when it could not start. Reap it with wait_program.
pid_t start_program(const std::vector<std::string>& argv, bool quiet = false, const std::string& dir = "");

// The exit code of a child from start_program, as run_program's. With block false it returns -1 at once while
// the child still runs.
int wait_program(pid_t pid, bool block = true);

// run_program in the working directory `dir`, so argv can name files relative to it as a person would type.
int run_program_in(const std::string& dir, const std::vector<std::string>& argv, bool quiet = false);

}  // namespace kcopyfs::cli
