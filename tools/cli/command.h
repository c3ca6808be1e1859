// The verbs of the kcopyfs CLI. Each verb lives in its own file and parses its own options with
// Boost.Program_options; main.cc only dispatches. A verb returns the process exit code and prints errors as
// one line "kcopyfs: VERB: what and why" on stderr.
#pragma once

#include <string>
#include <vector>

namespace kcopyfs::cli {

// args: the words after the verb.
int run_copy(const std::vector<std::string>& args);
int run_demo(const std::vector<std::string>& args);
int run_mount(const std::vector<std::string>& args);
int run_umount(const std::vector<std::string>& args);
int run_origin(const std::vector<std::string>& args);
int run_snapshot(const std::vector<std::string>& args);
int run_mirror(const std::vector<std::string>& args);
int run_remove(const std::vector<std::string>& args);
int run_status(const std::vector<std::string>& args);

// Prints "kcopyfs: VERB: message" on stderr; returns 1 (or `code`).
int fail(const std::string& verb, const std::string& message, int code = 1);

}  // namespace kcopyfs::cli
