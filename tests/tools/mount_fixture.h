// A kcopyfs mount driven through the built binary, as a user would: a state directory and a mountpoint in a
// fresh TempDir, `kcopyfs mount --state DIR MNT` (background mode), CLI commands with their exit code, stdout
// and stderr captured, and `status --json` parsed. The destructor always cleans up, even after a failed test:
// `kcopyfs umount`, else a lazy unmount (umount -l / fusermount3 -u -z), and a leftover daemon (its pid is in
// DIR/lock) is killed, so no mount or process is left behind.
//
// The including file must define KCOPYFS_BINARY (the path of the built kcopyfs) and link GTest and
// nlohmann_json. Every wait is bounded.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/unique_fd.h"
#include "tests/support/run_command.h"
#include "tests/support/test_support.h"

#ifndef KCOPYFS_BINARY
#error "KCOPYFS_BINARY must be defined as the path of the built kcopyfs binary"
#endif

namespace kcopyfs::test {

using Clock = std::chrono::steady_clock;

// CommandResult and run_command (any program, bounded): tests/support/run_command.h. This runs the built
// kcopyfs with args.
inline CommandResult run_kcopyfs(const std::vector<std::string>& args,
                                 std::chrono::milliseconds timeout = kCommandTimeout) {
  std::vector<std::string> words{KCOPYFS_BINARY};
  words.insert(words.end(), args.begin(), args.end());
  return run_command(words, timeout);
}

// Polls pred every few milliseconds until it holds or timeout passes. Result: whether it held.
inline bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    if (pred()) return true;
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// Undoes the octal escapes of /proc/self/mountinfo (\040 for a space, ...).
inline std::string unescape_mount_field(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      const std::string oct = s.substr(i + 1, 3);
      if (oct.size() == 3 && oct.find_first_not_of("01234567") == std::string::npos) {
        out.push_back(static_cast<char>(std::stoi(oct, nullptr, 8)));
        i += 3;
        continue;
      }
    }
    out.push_back(s[i]);
  }
  return out;
}

// The filesystem type of the mount at exactly `path` (the last one mounted there), or "" when path is not a
// mount point. From /proc/self/mountinfo.
inline std::string mount_type_at(const std::string& path) {
  std::ifstream in("/proc/self/mountinfo");
  std::string found;
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    std::string id, parent, devno, root, mount_point;
    fields >> id >> parent >> devno >> root >> mount_point;
    if (unescape_mount_field(mount_point) != path) continue;
    // Optional fields end with "-", then the type.
    std::string word;
    while (fields >> word && word != "-") {
    }
    std::string type;
    fields >> type;
    found = type;
  }
  return found;
}

inline bool is_mounted(const std::string& path) { return !mount_type_at(path).empty(); }

inline bool process_alive(pid_t pid) {
  if (pid <= 0) return false;
  if (::kill(pid, 0) != 0 && errno == ESRCH) return false;
  // A zombie (not yet reaped by its parent) is gone for our purposes.
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return false;
  const auto close = line.rfind(')');
  return close == std::string::npos || close + 2 >= line.size() || line[close + 2] != 'Z';
}

// The whole content of a file (a view, an image) as bytes.
inline std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// FNV-1a 64 of a file's content: cheap to compare and print.
inline uint64_t checksum(const std::string& path) {
  const std::string data = read_all(path);
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : data) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

inline uint64_t file_size(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return UINT64_MAX;
  return static_cast<uint64_t>(st.st_size);
}

// Whether an open file description holds an OFD lock on the file at path (how engine/file_device.cc holds
// images, COW files and logs).
inline bool file_locked(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return false;
  struct flock lk {};
  lk.l_type = F_WRLCK;
  lk.l_whence = SEEK_SET;
  return ::fcntl(fd.get(), F_OFD_GETLK, &lk) == 0 && lk.l_type != F_UNLCK;
}

inline bool path_exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

// One kcopyfs mount of a fresh state directory. mount() must be called (or the constructor's `mount_now`).
class KcopyfsMount {
 public:
  // mount_now: run `kcopyfs mount` in the constructor (check mounted() / mount_result() in the test).
  explicit KcopyfsMount(bool mount_now = true)
      : state_dir_(dir_.file("state")), mountpoint_(dir_.file("mnt")) {
    ::mkdir(mountpoint_.c_str(), 0755);
    if (mount_now) mount_result_ = mount();
  }
  ~KcopyfsMount() { cleanup(); }
  KcopyfsMount(const KcopyfsMount&) = delete;
  KcopyfsMount& operator=(const KcopyfsMount&) = delete;

  // The TempDir holding state/ and mnt/; put image files here with file(name).
  const TempDir& dir() const { return dir_; }
  std::string file(const std::string& name) const { return dir_.file(name); }
  const std::string& state_dir() const { return state_dir_; }
  const std::string& mnt() const { return mountpoint_; }
  std::string origin_view(const std::string& name) const { return mountpoint_ + "/origins/" + name; }
  std::string snapshot_view(const std::string& name) const { return mountpoint_ + "/snapshots/" + name; }
  std::string mirror_view(const std::string& name) const { return mountpoint_ + "/mirrors/" + name; }
  std::string table_path() const { return state_dir_ + "/kcopyfs.conf"; }
  const CommandResult& mount_result() const { return mount_result_; }
  bool mounted() const { return mount_type_at(mountpoint_) == "fuse.kcopyfs"; }

  // `kcopyfs mount --state DIR [extra...] MNT`.
  CommandResult mount(const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args{"mount", "--state", state_dir_};
    args.insert(args.end(), extra.begin(), extra.end());
    args.push_back(mountpoint_);
    return run_kcopyfs(args);
  }
  // `kcopyfs umount MNT`.
  CommandResult umount() { return run_kcopyfs({"umount", mountpoint_}); }

  // Runs `kcopyfs args...` verbatim.
  CommandResult run(const std::vector<std::string>& args,
                    std::chrono::milliseconds timeout = kCommandTimeout) const {
    return run_kcopyfs(args, timeout);
  }
  // Runs `kcopyfs VERB... MNT rest...`: verb is {"origin", "add"}, {"status"}, ...
  CommandResult verb(const std::vector<std::string>& verb, const std::vector<std::string>& rest = {},
                     std::chrono::milliseconds timeout = kCommandTimeout) const {
    std::vector<std::string> args = verb;
    args.push_back(mountpoint_);
    args.insert(args.end(), rest.begin(), rest.end());
    return run_kcopyfs(args, timeout);
  }

  CommandResult origin_add(const std::string& name, const std::string& device) const {
    return verb({"origin", "add"}, {name, device});
  }
  CommandResult snapshot_create(const std::string& origin, const std::string& name,
                                const std::vector<std::string>& options = {}) const {
    std::vector<std::string> rest{origin, name};
    rest.insert(rest.end(), options.begin(), options.end());
    return verb({"snapshot", "create"}, rest);
  }
  CommandResult snapshot_attach(const std::string& origin, const std::string& name, const std::string& cow,
                                const std::vector<std::string>& options = {}) const {
    std::vector<std::string> rest{origin, name, "--cow", cow};
    rest.insert(rest.end(), options.begin(), options.end());
    return verb({"snapshot", "attach"}, rest);
  }
  CommandResult mirror_create(const std::string& name, const std::vector<std::string>& legs,
                              const std::vector<std::string>& options = {}) const {
    std::vector<std::string> rest{name};
    rest.insert(rest.end(), legs.begin(), legs.end());
    rest.insert(rest.end(), options.begin(), options.end());
    return verb({"mirror", "create"}, rest);
  }
  CommandResult remove(const std::string& name) const { return verb({"remove"}, {name}); }

  // `status --json`, parsed; a failed command or unparsable output is a test failure and gives null.
  nlohmann::json status_json() const {
    const CommandResult r = verb({"status"}, {"--json"});
    if (!r.ok()) {
      ADD_FAILURE() << r;
      return nullptr;
    }
    try {
      return nlohmann::json::parse(r.out);
    } catch (const std::exception& e) {
      ADD_FAILURE() << "status --json printed no JSON object (" << e.what() << "): " << r.out;
      return nullptr;
    }
  }
  // The status object of one target, or null when it is not there.
  nlohmann::json target(const std::string& name) const {
    const nlohmann::json s = status_json();
    if (s.is_object() && s.contains("targets") && s["targets"].is_array()) {
      for (const auto& t : s["targets"]) {
        if (t.is_object() && t.value("name", "") == name) return t;
      }
    }
    return nullptr;
  }
  // Polls status until pred(target NAME) holds, at most timeout. Result: whether it held.
  bool wait_for_target(const std::string& name, const std::function<bool(const nlohmann::json&)>& pred,
                       std::chrono::milliseconds timeout = std::chrono::seconds(60)) const {
    return wait_until([&] { return pred(target(name)); }, timeout);
  }

  // The daemon's pid, from DIR/lock; 0 when unknown.
  pid_t daemon_pid() const {
    std::ifstream in(state_dir_ + "/lock");
    long pid = 0;
    if (!(in >> pid)) return 0;
    return static_cast<pid_t>(pid);
  }

  // Stops everything, however the test left it. Idempotent; the destructor calls it.
  void cleanup() {
    const pid_t pid = daemon_pid();
    if (mounted()) {
      const CommandResult r = run_kcopyfs({"umount", mountpoint_}, std::chrono::seconds(15));
      if (!r.ok() && is_mounted(mountpoint_)) {
        std::cerr << "mount_fixture: " << r.describe() << "\nmount_fixture: detaching " << mountpoint_
                  << "\n";
      }
    }
    if (is_mounted(mountpoint_)) detach();
    if (pid > 0 && daemon_process(pid)) {
      // Give a daemon that is shutting down a moment, then insist.
      if (!wait_until([&] { return !process_alive(pid); }, std::chrono::seconds(5))) {
        std::cerr << "mount_fixture: terminating leftover daemon " << pid << "\n";
        ::kill(pid, SIGTERM);
        ::kill(pid, SIGCONT);  // a stopped daemon
        if (!wait_until([&] { return !process_alive(pid); }, std::chrono::seconds(5))) {
          std::cerr << "mount_fixture: killing leftover daemon " << pid << "\n";
          ::kill(pid, SIGKILL);
          wait_until([&] { return !process_alive(pid); }, std::chrono::seconds(10));
        }
      }
    }
    // A killed daemon leaves a dead mount behind.
    if (is_mounted(mountpoint_)) detach();
  }

 private:
  // Whether pid is a live process running the kcopyfs binary (not a recycled pid).
  static bool daemon_process(pid_t pid) {
    if (!process_alive(pid)) return false;
    char exe[4096] = {};
    const std::string link = "/proc/" + std::to_string(pid) + "/exe";
    const ssize_t n = ::readlink(link.c_str(), exe, sizeof exe - 1);
    if (n <= 0) return true;  // cannot tell: assume it is ours
    const std::string path(exe, static_cast<size_t>(n));
    return path.find("kcopyfs") != std::string::npos;
  }
  void detach() {
    for (int i = 0; i < 8 && is_mounted(mountpoint_); ++i) {
      if (::geteuid() == 0) {
        run_command({"umount", "-l", mountpoint_}, std::chrono::seconds(10));
      } else {
        run_command({"fusermount3", "-u", "-z", mountpoint_}, std::chrono::seconds(10));
      }
    }
    if (is_mounted(mountpoint_)) std::cerr << "mount_fixture: could not unmount " << mountpoint_ << "\n";
  }

  TempDir dir_;  // first: it outlives the cleanup in the destructor
  std::string state_dir_;
  std::string mountpoint_;
  CommandResult mount_result_;
};

// Interface.md, Errors: exactly one line on stderr starting "kcopyfs: ", a non-zero exit.
inline ::testing::AssertionResult refused(const CommandResult& r) {
  if (r.timed_out) return ::testing::AssertionFailure() << "timed out: " << r;
  if (r.exit_code == 0) return ::testing::AssertionFailure() << "succeeded, expected a refusal: " << r;
  if (r.exit_code < 0) return ::testing::AssertionFailure() << "crashed: " << r;
  const auto lines = r.err_lines();
  if (lines.size() != 1 || lines[0].rfind("kcopyfs: ", 0) != 0 || lines[0].size() <= 9)
    return ::testing::AssertionFailure() << "stderr is not one line starting 'kcopyfs: ': " << r;
  return ::testing::AssertionSuccess();
}

}  // namespace kcopyfs::test
