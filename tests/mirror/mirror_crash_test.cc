// Crash consistency of the disk log: a child process writing to a few regions of a mirror is killed
// (SIGKILL) with writes in flight; on restart only the regions dirty at the kill are resynced, and the legs
// end identical. With the core log the same restart resyncs everything.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <set>
#include <thread>

#include "tests/mirror/mirror_test_util.h"

extern char** environ;

namespace kcopyfs::test {
namespace {

using namespace std::chrono_literals;

// Runs the workload until it reports "ready", lets it write a little longer, then kills it.
void run_and_kill(const std::string& dir, const std::vector<uint64_t>& regions) {
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], 3);
  std::vector<std::string> args{KCOPYFS_MIRROR_CRASH_WORKLOAD, dir};
  for (uint64_t r : regions) args.push_back(std::to_string(r));
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  const int err = ::posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(fds[1]);
  ASSERT_EQ(err, 0);
  std::string got;
  const auto deadline = std::chrono::steady_clock::now() + kMirrorTimeout;
  while (got.find("ready\n") == std::string::npos && std::chrono::steady_clock::now() < deadline) {
    pollfd pfd{fds[0], POLLIN, 0};
    if (::poll(&pfd, 1, 100) <= 0) continue;
    char buf[64];
    const ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n <= 0) break;
    got.append(buf, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  const bool ready = got.find("ready\n") != std::string::npos;
  if (ready) std::this_thread::sleep_for(100ms);
  ::kill(pid, SIGKILL);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  ASSERT_TRUE(ready) << "the workload did not get ready";
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "the workload ended by itself";
}

// A killed process's io_uring lets go of its files a little after the process is reaped: waits until every
// image in dir can be opened exclusively again.
void wait_released(const std::vector<std::string>& paths) {
  const auto deadline = std::chrono::steady_clock::now() + kMirrorTimeout;
  for (const auto& p : paths) {
    while (!FileDevice::open(p, OpenOptions{}).ok()) {
      ASSERT_LT(std::chrono::steady_clock::now(), deadline) << p << " still held";
      std::this_thread::sleep_for(20ms);
    }
  }
}

std::set<uint64_t> dirty_on_disk(const std::string& log_path, uint64_t regions) {
  const auto image = read_file(log_path, 0, 4096);
  std::set<uint64_t> out;
  for (uint64_t n = 0; n < regions; ++n)
    if (((static_cast<unsigned>(image.at(1024 + n / 8)) >> (n % 8)) & 1u) == 0) out.insert(n);
  return out;
}

TEST(MirrorCrashTest, OnlyRegionsDirtyAtTheCrashAreResynced) {
  constexpr uint64_t kRegions = 64;
  LegSet legs(2, kRegions, {1, 1});
  const std::string dir = std::filesystem::path(legs.path(0)).parent_path().string();
  const std::string log_path = dir + "/log.img";
  make_sparse_file(log_path, 1 << 20);
  {
    // A log that says everything is in sync (the legs are identical).
    auto log_file = FileDevice::open(log_path, OpenOptions{});
    ASSERT_TRUE(log_file.ok());
    auto m = make_disk_mirror(legs, *log_file.value(), SyncMode::nosync);
    ASSERT_TRUE(m.ok()) << m.error().message();
  }
  EXPECT_TRUE(dirty_on_disk(log_path, kRegions).empty());
  legs.close();

  const std::vector<uint64_t> written{5, 17, 33};
  run_and_kill(dir, written);
  if (HasFatalFailure()) return;
  wait_released({legs.path(0), legs.path(1), log_path});
  if (HasFatalFailure()) return;

  const auto dirty = dirty_on_disk(log_path, kRegions);
  EXPECT_FALSE(dirty.empty()) << "no region dirty at the kill";
  std::printf("dirty at the kill: %zu of %llu regions\n", dirty.size(),
              static_cast<unsigned long long>(kRegions));
  for (uint64_t r : dirty) EXPECT_TRUE(r == 5 || r == 17 || r == 33) << "region " << r << " dirty";
  {
    auto log_file = FileDevice::open(log_path, OpenOptions{});
    ASSERT_TRUE(log_file.ok());
    auto m = make_disk_mirror(legs, *log_file.value(), SyncMode::by_log);
    ASSERT_TRUE(m.ok()) << m.error().message();
    ASSERT_TRUE(m.value()->wait_in_sync(kMirrorTimeout));
    EXPECT_EQ(m.value()->status().regions_resynced, dirty.size());
  }
  EXPECT_TRUE(legs.image(0) == legs.image(1));
  EXPECT_TRUE(dirty_on_disk(log_path, kRegions).empty());

  // The same legs behind a core log: everything is copied.
  {
    auto m = make_core_mirror(legs, SyncMode::by_log);
    ASSERT_TRUE(m->wait_in_sync(kMirrorTimeout));
    EXPECT_EQ(m->status().regions_resynced, kRegions);
  }
}

}  // namespace
}  // namespace kcopyfs::test
