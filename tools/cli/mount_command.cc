// kcopyfs mount / umount: start the daemon of a state directory on a mountpoint, and stop it
// (interface.md, "The daemon and the mount").
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <iostream>

#include "fs/daemon/control_client.h"
#include "fs/daemon/daemon.h"
#include "tools/cli/command.h"
#include "tools/cli/sizes.h"
#include "tools/cli/subprocess.h"
#include "tools/cli/verb_args.h"

namespace po = boost::program_options;

namespace kcopyfs::cli {

namespace {

// The start-up report the daemon child sends its parent on a pipe: a line "OK" or "ERR message". A pipe that
// closes with no line means the child died before it could say anything.
constexpr const char* kReadyLine = "OK\n";
constexpr const char* kErrorPrefix = "ERR ";

void write_all(int fd, const std::string& text) {
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // the parent is gone: nobody to tell
    done += static_cast<size_t>(n);
  }
}

// mkdir -p, the last component 0700 (the daemon's socket and table are private to the mounting user).
Status make_state_dir(const std::string& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) return Error::invalid("state directory " + dir + " is not a directory");
    return {};
  }
  std::error_code ec;
  const auto parent = std::filesystem::path(dir).parent_path();
  std::filesystem::create_directories(parent, ec);
  if (ec) return Error::from_errno(ec.value(), "cannot create " + parent.string());
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
    return Error::from_errno(errno, "cannot create state directory " + dir);
  return {};
}

// The daemon child: detaches from the terminal and the caller's session, logs to DIR/kcopyfs.log, and reports
// start-up on report_fd. Never returns.
[[noreturn]] void daemon_child(const daemon::DaemonOptions& options, int report_fd) {
  ::setsid();
  if (::chdir("/") != 0) {
    // Unreachable in practice; the daemon uses absolute paths only.
  }
  // The parent may give up reading; a write to its closed pipe must not kill the daemon.
  std::signal(SIGPIPE, SIG_IGN);
  const int null_fd = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  const std::string log = options.state_dir + "/kcopyfs.log";
  int log_fd = ::open(log.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0600);
  if (log_fd < 0) log_fd = null_fd;
  if (null_fd >= 0) ::dup2(null_fd, STDIN_FILENO);
  if (log_fd >= 0) {
    ::dup2(log_fd, STDOUT_FILENO);
    ::dup2(log_fd, STDERR_FILENO);
  }
  if (log_fd >= 0 && log_fd != null_fd) ::close(log_fd);
  if (null_fd >= 0) ::close(null_fd);

  bool reported = false;
  const int code = daemon::run_daemon(options, [&](const std::string& error) {
    if (reported) return;
    reported = true;
    write_all(report_fd, error.empty() ? std::string(kReadyLine) : std::string(kErrorPrefix) + error + "\n");
    ::close(report_fd);
  });
  if (!reported) ::close(report_fd);
  std::cout.flush();
  std::cerr.flush();
  ::_exit(code);
}

std::string describe_exit(int status) {
  if (WIFEXITED(status)) return "exit code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("killed by signal ") + ::strsignal(WTERMSIG(status));
  return "stopped";
}

// The parent: waits for the child's start-up report. Result: the exit code of `kcopyfs mount`.
int await_daemon(pid_t child, int report_fd, const std::string& state_dir) {
  std::string report;
  char buf[512];
  while (report.find('\n') == std::string::npos) {
    const ssize_t n = ::read(report_fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    report.append(buf, static_cast<size_t>(n));
  }
  ::close(report_fd);
  if (report == kReadyLine) return 0;  // the child runs on as the daemon
  int status = 0;
  while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
  }
  if (report.rfind(kErrorPrefix, 0) == 0) {
    std::string message = report.substr(std::strlen(kErrorPrefix));
    while (!message.empty() && message.back() == '\n') message.pop_back();
    return fail("mount", message);
  }
  return fail("mount", "the daemon exited during start-up (" + describe_exit(status) + "; see " + state_dir +
                           "/kcopyfs.log)");
}

}  // namespace

int run_mount(const std::vector<std::string>& args) {
  constexpr const char* kVerb = "mount";
  std::string usage(
      "Usage: kcopyfs mount [--state DIR] [--foreground] [--allow-other] [--write-back SIZE] [--io-poll MS]\n"
      "                     MOUNTPOINT\n"
      "Starts the daemon of the state directory DIR and mounts its targets on MOUNTPOINT (an existing\n"
      "directory): MOUNTPOINT/origins/NAME, MOUNTPOINT/snapshots/NAME, MOUNTPOINT/mirrors/NAME.\n"
      "Returns 0 once the mount is ready and every target is loaded (a target that cannot be loaded is "
      "shown\n"
      "as 'failed' by kcopyfs status). DIR holds the volume table (kcopyfs.conf), the default COW stores "
      "and\n"
      "mirror logs, and the daemon's log (kcopyfs.log); it is created when missing. One daemon per DIR.\n"
      "Default DIR: ");
  usage += daemon::default_state_dir();
  usage +=
      ".\nIn /etc/fstab:  DIR MOUNTPOINT fuse.kcopyfs defaults[,allow_other][,write_back=SIZE][,io_poll=MS] "
      "0 "
      "0\n\nOptions";
  po::options_description visible(usage);
  std::string state_dir, write_back;
  unsigned io_poll = 2;
  visible.add_options()("help,h", "show this help")("state", po::value<std::string>(&state_dir),
                                                    "the state directory DIR")(
      "foreground", "run the daemon in this process (its log goes to stderr) until unmounted")(
      "allow-other", "let other users see the views (needs user_allow_other in /etc/fuse.conf unless root)")(
      "write-back", po::value<std::string>(&write_back),
      "origin writes that wait for copy-on-write are acknowledged once the daemon holds their data, up to "
      "SIZE per origin (default 16M), and reach the device after their exceptions are durable; fsync waits "
      "for them. 0: acknowledge each only once it is on the device")(
      "io-poll", po::value<unsigned>(&io_poll),
      "a kernel thread takes the daemon's I/O requests while they keep coming and sleeps after MS "
      "milliseconds without one (default 2): no system call and fewer device notifications per request, "
      "for one core busy while I/O flows. 0: no polling thread");
  auto parsed = parse_verb_args(kVerb, visible, args, 1, 1);
  if (auto* code = std::get_if<int>(&parsed)) return *code;
  const auto& vm = std::get<VerbArgs>(parsed).options;
  const std::string mountpoint = absolute_path(std::get<VerbArgs>(parsed).words[0]);

  daemon::DaemonOptions options;
  options.state_dir = absolute_path(state_dir.empty() ? daemon::default_state_dir() : state_dir);
  options.mountpoint = mountpoint;
  options.allow_other = vm.count("allow-other") > 0;
  options.io_poll = std::chrono::milliseconds(io_poll);
  if (!write_back.empty()) {
    const auto bytes = parse_size(write_back);
    if (!bytes) return fail(kVerb, "--write-back: '" + write_back + "' is not a SIZE (bytes, or K/M/G/T)");
    options.write_back_bytes = *bytes;
  }

  // A mount left by a killed daemon of this state directory is no obstacle: the new daemon, holding the
  // directory's lock, detaches it. Any other mount there is the user's to deal with.
  auto served = daemon::find_state_dir(mountpoint);
  bool dead = false;
  if (served) {
    auto alive = daemon::call_daemon(served.value(), {{"op", "status"}}, std::chrono::seconds(10));
    const int err = alive ? 0 : alive.error().errno_value();
    dead = err == ENOENT || err == ECONNREFUSED;
    if (!dead) return fail(kVerb, mountpoint + " is a kcopyfs mount already (of " + served.value() + ")");
    if (served.value() != options.state_dir)
      return fail(kVerb, mountpoint + " is a dead kcopyfs mount (of " + served.value() +
                             "): 'kcopyfs umount " + mountpoint + "' clears it");
  }
  struct stat st {};
  if (!dead) {
    if (::stat(mountpoint.c_str(), &st) != 0)
      return fail(kVerb, "mountpoint " + mountpoint + ": " + std::strerror(errno));
    if (!S_ISDIR(st.st_mode)) return fail(kVerb, "mountpoint " + mountpoint + " is not a directory");
  }
  if (auto made = make_state_dir(options.state_dir); !made) return fail(kVerb, made.error().message());

  if (vm.count("foreground")) {
    return daemon::run_daemon(options, [](const std::string& error) {
      if (!error.empty()) fail("mount", error);
    });
  }

  // Nothing before this point starts a thread or an io_uring: fork() copies only the calling thread.
  int report[2];
  if (::pipe2(report, O_CLOEXEC) != 0) return fail(kVerb, std::string("pipe: ") + std::strerror(errno));
  std::cout.flush();
  std::cerr.flush();
  const pid_t child = ::fork();
  if (child < 0) {
    const int err = errno;
    ::close(report[0]);
    ::close(report[1]);
    return fail(kVerb, std::string("fork: ") + std::strerror(err));
  }
  if (child == 0) {
    ::close(report[0]);
    daemon_child(options, report[1]);
  }
  ::close(report[1]);
  return await_daemon(child, report[0], options.state_dir);
}

int run_umount(const std::vector<std::string>& args) {
  constexpr const char* kVerb = "umount";
  po::options_description visible(
      "Usage: kcopyfs umount MOUNTPOINT\n"
      "Flushes and commits every target of the kcopyfs mount at MOUNTPOINT, unmounts it, and stops its\n"
      "daemon (as fusermount3 -u or SIGTERM to the daemon would). A mount whose daemon is gone (killed) is\n"
      "just unmounted; the next mount recovers its targets.\n\nOptions");
  visible.add_options()("help,h", "show this help");
  auto parsed = parse_verb_args(kVerb, visible, args, 1, 1);
  if (auto* code = std::get_if<int>(&parsed)) return *code;
  const std::string mountpoint = absolute_path(std::get<VerbArgs>(parsed).words[0]);
  auto state_dir = daemon::find_state_dir(mountpoint);
  if (!state_dir) return fail(kVerb, state_dir.error().message());
  auto reply = daemon::call_daemon(state_dir.value(), {{"op", "umount"}});
  if (reply) {
    if (reply.value().value("ok", false)) return 0;
    return fail(kVerb, reply.value().value("error", std::string("the daemon refused without saying why")));
  }
  const int err = reply.error().errno_value();
  if (err != ENOENT && err != ECONNREFUSED) return fail(kVerb, reply.error().message());
  // A mount whose daemon is gone (killed): take the dead mount away, so the next mount can use the
  // mountpoint.
  if (::umount2(mountpoint.c_str(), 0) != 0) {
    const int umount_err = errno;
    if (umount_err != EPERM || run_program({"fusermount3", "-u", "-q", mountpoint}, true) != 0)
      return fail(kVerb, reply.error().message() +
                             ", and unmounting the dead mount failed: " + std::strerror(umount_err));
  }
  std::cerr << "kcopyfs: umount: no daemon was serving " << state_dir.value()
            << "; unmounted the dead mount (the next mount recovers the targets)\n";
  return 0;
}

}  // namespace kcopyfs::cli
