#include "fs/daemon/daemon.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mount.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <future>
#include <iostream>
#include <mutex>
#include <thread>

#include "engine/io_ring.h"
#include "engine/result.h"
#include "engine/unique_fd.h"
#include "fs/daemon/control_protocol.h"
#include "fs/daemon/control_server.h"
#include "fs/daemon/kcopyfs_mounts.h"
#include "fs/daemon/requests.h"
#include "fs/daemon/target_set.h"
#include "fs/daemon/volume_table.h"
#include "fs/view_server.h"

namespace kcopyfs::daemon {
namespace {

constexpr const char* kTableName = "kcopyfs.conf";
constexpr const char* kLockName = "lock";
// A daemon killed a moment ago may still hold the lock while the kernel tears it down.
constexpr std::chrono::milliseconds kLockRetry(3000);
// How long umount waits for the kernel's report of closes just made before it calls the mount busy.
constexpr std::chrono::milliseconds kCloseGrace(1000);

void log_line(const std::string& line) { std::cerr << "kcopyfs: " << line << std::endl; }

// The daemon's main loop: work handed over by other threads (merge completions, the kernel-side unmount,
// the umount request), run one at a time on the thread of run_daemon.
class EventLoop {
 public:
  EventLoop() : wake_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}
  bool valid() const { return wake_.valid(); }
  int fd() const { return wake_.get(); }

  // Result: false once the loop is closed (the work is dropped: the daemon is past its shutdown).
  bool post(std::function<void()> work) {
    {
      std::lock_guard lock(mutex_);
      if (closed_) return false;
      queue_.push_back(std::move(work));
    }
    const uint64_t one = 1;
    (void)!::write(wake_.get(), &one, sizeof one);
    return true;
  }
  // Refuses further work, then runs what was queued before.
  void close() {
    std::deque<std::function<void()>> work;
    {
      std::lock_guard lock(mutex_);
      closed_ = true;
      work.swap(queue_);
    }
    for (auto& w : work) w();
  }
  // Runs everything queued so far.
  void run_pending() {
    uint64_t n;
    (void)!::read(wake_.get(), &n, sizeof n);
    std::deque<std::function<void()>> work;
    {
      std::lock_guard lock(mutex_);
      work.swap(queue_);
    }
    for (auto& w : work) w();
  }

 private:
  UniqueFd wake_;
  std::mutex mutex_;
  std::deque<std::function<void()>> queue_;  // guarded by mutex_
  bool closed_ = false;                      // guarded by mutex_
};

// One daemon per state directory: an OFD write lock on STATE_DIR/lock, which also records the holder's pid
// for the message a second daemon prints.
Result<UniqueFd> lock_state_dir(const std::string& dir) {
  const std::string path = dir + "/" + kLockName;
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!fd.valid()) return Error::from_errno(errno, "open " + path);
  struct flock lk {};
  lk.l_type = F_WRLCK;
  lk.l_whence = SEEK_SET;
  const auto deadline = std::chrono::steady_clock::now() + kLockRetry;
  while (::fcntl(fd.get(), F_OFD_SETLK, &lk) != 0) {
    if (errno != EAGAIN && errno != EACCES) return Error::from_errno(errno, "lock " + path);
    if (std::chrono::steady_clock::now() >= deadline) {
      char pid[32] = {};
      (void)!::pread(fd.get(), pid, sizeof pid - 1, 0);
      std::string holder(pid);
      while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) holder.pop_back();
      return Error(std::make_error_code(std::errc::resource_unavailable_try_again),
                   "state directory " + dir + " is in use by another kcopyfs daemon" +
                       (holder.empty() ? std::string() : " (pid " + holder + ")"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd.get(), 0) != 0 || ::pwrite(fd.get(), pid.data(), pid.size(), 0) < 0)
    return Error::from_errno(errno, "write " + path);
  return fd;
}

Status make_state_dir(const std::string& dir) {
  if (dir.empty() || dir[0] != '/')
    return Error::invalid("state directory " + dir + " is not an absolute path");
  if (dir.find_first_of("\n\t") != std::string::npos)
    return Error::invalid("state directory " + dir + " holds a newline or tab");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Error(ec, "create state directory " + dir + ": " + ec.message());
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) return Error::from_errno(errno, "state directory " + dir);
  if (!S_ISDIR(st.st_mode)) return Error::invalid("state directory " + dir + " is not a directory");
  // The COW stores and logs in it hold volume data: only the owner may read them.
  if ((st.st_mode & 077) != 0 && st.st_uid == ::geteuid()) ::chmod(dir.c_str(), 0700);
  return {};
}

// After a SIGKILL the old mount stays, answering ENOTCONN. Called with the state directory's lock held, so a
// mount still showing this state directory as its source has no daemon any more: detach it, so that the new
// mount does not stack on a dead one.
void detach_dead_mounts(const std::string& state_dir) {
  for (const KcopyfsMount& m : kcopyfs_mounts()) {
    if (m.state_dir != state_dir) continue;
    log_line(m.mountpoint + " is a dead mount of " + state_dir + " (its daemon is gone): detaching it");
    if (::geteuid() == 0) {
      ::umount2(m.mountpoint.c_str(), MNT_DETACH | UMOUNT_NOFOLLOW);
      continue;
    }
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::execlp("fusermount3", "fusermount3", "-u", "-z", "-q", m.mountpoint.c_str(),
               static_cast<char*>(nullptr));
      ::_exit(127);
    }
    if (pid > 0) {
      int status;
      while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
    }
  }
}

class Daemon {
 public:
  explicit Daemon(DaemonOptions options) : options_(std::move(options)) {}

  int run(const std::function<void(const std::string&)>& ready);

 private:
  Status start();
  nlohmann::json handle(const nlohmann::json& request);
  // Unmounts, flushes and closes every target. Runs once, on the main loop.
  void shut_down(const std::string& why);

  const DaemonOptions options_;
  EventLoop loop_;
  UniqueFd signals_;
  UniqueFd lock_;
  std::unique_ptr<fs::ViewServer> views_;
  std::unique_ptr<TargetSet> targets_;
  std::unique_ptr<ControlServer> control_;
  bool stopping_ = false;  // main loop only
  Status close_status_;    // main loop only
};

Status Daemon::start() {
  if (!loop_.valid()) return Error::from_errno(errno, "eventfd");
  if (Status s = make_state_dir(options_.state_dir); !s) return s;
  auto lock = lock_state_dir(options_.state_dir);
  if (!lock) return lock.error();
  lock_ = std::move(lock).value();

  const std::string table_path = options_.state_dir + "/" + kTableName;
  auto table = load_volume_table(table_path);
  if (!table) return table.error();

  detach_dead_mounts(options_.state_dir);
  fs::MountOptions mount;
  mount.mountpoint = options_.mountpoint;
  mount.allow_other = options_.allow_other;
  mount.fsname = options_.state_dir;
  mount.subtype = kFuseSubtype;
  mount.on_unmounted = [this] { (void)loop_.post([this] { shut_down("the mount went away"); }); };
  auto views = fs::ViewServer::mount(std::move(mount));
  if (!views) return views.error();
  views_ = std::move(views).value();

  targets_ = std::make_unique<TargetSet>(
      options_.state_dir, *views_,
      [table_path](const VolumeTable& t) { return save_volume_table(table_path, t); },
      [this](std::function<void()> work) { return loop_.post(std::move(work)); });
  targets_->set_write_back_limit(Bytes(options_.write_back_bytes));
  if (Status s = targets_->load(table.value()); !s) return s;

  auto control = ControlServer::start(options_.state_dir, ::geteuid(),
                                      [this](const nlohmann::json& r) { return handle(r); });
  if (!control) return control.error();
  control_ = std::move(control).value();
  return {};
}

nlohmann::json Daemon::handle(const nlohmann::json& request) {
  const auto op = request.find("op");
  if (op != request.end() && *op == "umount") {
    if (std::string open = views_->wait_unused(kCloseGrace); !open.empty())
      return {{"ok", false}, {"error", options_.mountpoint + " is busy: " + open + " is open"}};
    // The main loop does the work; the reply waits until every device is closed.
    auto done = std::make_shared<std::promise<Status>>();
    std::future<Status> result = done->get_future();
    const bool queued = loop_.post([this, done] {
      shut_down("umount requested");
      done->set_value(close_status_);
    });
    if (!queued) return {{"ok", false}, {"error", "the daemon is already shutting down"}};
    Status s = result.get();
    if (!s) return {{"ok", false}, {"error", s.error().message()}};
    return {{"ok", true}};
  }
  return handle_target_request(*targets_, request);
}

void Daemon::shut_down(const std::string& why) {
  if (stopping_) return;
  stopping_ = true;
  log_line("unmounting " + options_.mountpoint + ": " + why);
  // No view is served from here on, so no I/O reaches the targets while they close.
  views_->unmount();
  close_status_ = targets_->close();
}

int Daemon::run(const std::function<void(const std::string&)>& ready) {
  if (Status s = start(); !s) {
    // As at shutdown: the views go first, so no I/O reaches the targets while they close.
    if (views_) views_->unmount();
    if (targets_) (void)targets_->close();
    ready(s.error().message());
    return 1;
  }
  std::string polling = "off";
  if (auto ring = IoRing::shared(); ring && ring.value()->polling())
    polling = std::to_string(options_.io_poll.count()) + " ms";
  log_line("serving " + options_.state_dir + " at " + options_.mountpoint +
           " (I/O submission polling: " + polling + ")");
  ready("");

  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  UniqueFd signals(::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
  while (!stopping_) {
    pollfd fds[2] = {{loop_.fd(), POLLIN, 0}, {signals.get(), POLLIN, 0}};
    if (::poll(fds, signals.valid() ? 2 : 1, -1) < 0) {
      if (errno == EINTR) continue;
      log_line(std::string("poll: ") + std::strerror(errno));
      shut_down("internal error");
      break;
    }
    if (signals.valid() && (fds[1].revents & POLLIN)) {
      signalfd_siginfo info{};
      if (::read(signals.get(), &info, sizeof info) == sizeof info)
        shut_down(std::string("signal ") + strsignal(static_cast<int>(info.ssi_signo)));
    }
    if (fds[0].revents & POLLIN) loop_.run_pending();
  }
  // Answers a umount request waiting for this shutdown (its work was queued behind it) and refuses later
  // ones, then stops taking requests: one being served finishes first.
  loop_.close();
  control_.reset();
  const bool clean = close_status_.ok();
  targets_.reset();
  views_.reset();
  log_line(clean ? "done" : "done, with errors: " + close_status_.error().message());
  return clean ? 0 : 1;
}

}  // namespace

int run_daemon(const DaemonOptions& options, const std::function<void(const std::string&)>& ready) {
  // Before any thread exists, so that every thread inherits the mask and only the signalfd sees them.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
  // Before anything makes the process's io_uring.
  IoRing::Options ring;
  ring.sq_poll_idle = options.io_poll;
  if (Status s = IoRing::configure_shared(ring); !s) {
    ready(s.error().message());
    return 1;
  }
  Daemon daemon(options);
  return daemon.run(ready);
}

std::string default_state_dir() {
  if (::geteuid() == 0) return "/var/lib/kcopyfs";
  if (const char* x = std::getenv("XDG_STATE_HOME"); x && *x == '/') return std::string(x) + "/kcopyfs";
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "") + "/.local/state/kcopyfs";
}

}  // namespace kcopyfs::daemon
