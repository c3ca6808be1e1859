// Running other programs (mkfs.ext4, losetup, ...) from the CLI, without a shell.
#pragma once

#include <string>
#include <vector>

namespace kcopyfs::cli {

// Runs argv[0] (looked up in PATH) with argv, waits, and returns its exit code (128+signal when killed, 127
// when it could not start). quiet: its stdout and stderr go to /dev/null.
int run_program(const std::vector<std::string>& argv, bool quiet = false);

}  // namespace kcopyfs::cli
