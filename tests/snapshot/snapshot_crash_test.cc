// Crash consistency of the snapshot targets: a child process (snapshot_crash_workload, started by
// posix_spawn, so without this process's threads) works on image files and dies, by SIGKILL at a random
// moment or by _exit at an exact step of the commit or merge protocol (a FaultDevice hook). This process then
// reopens everything and checks it against images rebuilt from the workload's seed and the child's reports
// (crash_workload.h):
//   - every store opens without error (and the snapshots the child created are all there);
//   - every snapshot equals its point-in-time image; every flushed write is present; a write in flight at the
//     kill may have reached each of its sectors or not, nothing else may differ;
//   - at a commit step: the origin write waiting for the commit was not applied, and the snapshot reads the
//     old data whether or not the record made it;
//   - at a merge step: the snapshot still reads its image, the origin holds old or merged data per chunk, and
//     attaching + start_merge finishes the merge with the origin equal to the snapshot's image.
//
// Seeds are printed. KCOPYFS_CRASH_SEEDS=<n> runs seeds 1..n (default 30); KCOPYFS_CRASH_SEED=<s> runs one.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <random>
#include <sstream>

#include "snapshot/persistent_store.h"
#include "tests/snapshot/crash_workload.h"
#include "tests/snapshot/origin_test_util.h"

extern char** environ;

namespace kcopyfs::crash {
// Names the crash point in GoogleTest's messages.
void PrintTo(const CrashPoint& p, std::ostream* os) { *os << p.name; }
}  // namespace kcopyfs::crash

namespace kcopyfs::test {
namespace {

using Clock = std::chrono::steady_clock;
using crash::k4K;

// A child process reporting on its fd 3 through a pipe. The destructor kills and reaps it if it still runs,
// so a failing test leaves no process behind.
class Child {
 public:
  explicit Child(const std::vector<std::string>& args) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
    read_end_ = fds[0];
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], crash::kReportFd);  // dup2 clears O_CLOEXEC
    std::vector<char*> argv;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    const int err = ::posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    ::close(fds[1]);
    if (err != 0) {
      ::close(read_end_);
      throw std::runtime_error("posix_spawn " + args[0] + ": " + std::strerror(err));
    }
    pidfd_ = static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0));
    if (pidfd_ < 0) {
      kill_and_reap();
      throw std::runtime_error("pidfd_open failed");
    }
  }
  ~Child() {
    if (!reaped_) kill_and_reap();
    if (pidfd_ >= 0) ::close(pidfd_);
    ::close(read_end_);
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  // Appends what the child reports until `deadline` or the end of its output. Result: true at the end.
  bool read_until(Clock::time_point deadline, std::string& out) {
    for (;;) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return false;
      pollfd pfd{read_end_, POLLIN, 0};
      const int n = ::poll(&pfd, 1, static_cast<int>(left));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      char buf[4096];
      const ssize_t got = ::read(read_end_, buf, sizeof buf);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) return true;
      out.append(buf, static_cast<size_t>(got));
    }
  }
  // Reads until a whole line equal to one of `lines` arrived, the output ended or kWait passed. Result: the
  // line, or "" when it did not come.
  std::string wait_line(const std::vector<std::string>& lines, std::string& out) {
    const auto deadline = Clock::now() + kWait;
    for (;;) {
      for (const std::string& l : lines) {
        if (out.find(l + "\n") != std::string::npos) return l;
      }
      std::string more;
      const bool ended = read_until(std::min(deadline, Clock::now() + std::chrono::milliseconds(50)), more);
      out += more;
      if (ended) {
        for (const std::string& l : lines) {
          if (out.find(l + "\n") != std::string::npos) return l;
        }
        return "";
      }
      if (Clock::now() >= deadline) return "";
    }
  }

  // Kills (SIGKILL) the child if it still runs and reaps it, waiting at most kWait. Result: the wait status.
  int kill_and_reap() {
    ::kill(pid_, SIGKILL);
    return reap();
  }
  // Waits at most kWait for the child to end by itself and reaps it. Result: the wait status, or nullopt.
  std::optional<int> wait_exit() {
    pollfd pfd{pidfd_, POLLIN, 0};
    if (::poll(&pfd, 1, static_cast<int>(std::chrono::milliseconds(kWait).count())) != 1) return std::nullopt;
    return reap();
  }

 private:
  int reap() {
    if (reaped_) return status_;
    if (pidfd_ >= 0) {
      pollfd pfd{pidfd_, POLLIN, 0};
      if (::poll(&pfd, 1, static_cast<int>(std::chrono::milliseconds(kWait).count())) != 1)
        ADD_FAILURE() << "child " << pid_ << " did not die within " << kWait.count() << " s of SIGKILL";
    }
    while (::waitpid(pid_, &status_, 0) < 0 && errno == EINTR) {
    }
    reaped_ = true;
    return status_;
  }

  pid_t pid_ = -1;
  int pidfd_ = -1;
  int read_end_ = -1;
  bool reaped_ = false;
  int status_ = 0;
};

std::string describe(int status) {
  std::ostringstream s;
  if (WIFSIGNALED(status)) {
    s << "killed by signal " << WTERMSIG(status);
  } else if (WIFEXITED(status)) {
    s << "exit status " << WEXITSTATUS(status);
  } else {
    s << "status " << status;
  }
  return s.str();
}

// Waits (at most kWait) until no process holds the image files in dir any more. A killed child is reaped
// before its io_uring instance has let go of its files (the ring is torn down asynchronously after the
// process is gone), and until then its I/O may still be completing and the files are still locked (OFD
// locks: FileDevice's exclusive open would refuse them). Taking the same lock, blocking, waits for exactly
// that.
void wait_until_released(const TempDir& dir) {
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    const std::string path = entry.path().string();
    run_bounded(
        [&] {
          const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
          ASSERT_GE(fd, 0) << path;
          struct flock lk {};
          lk.l_type = F_WRLCK;
          lk.l_whence = SEEK_SET;
          while (::fcntl(fd, F_OFD_SETLKW, &lk) != 0 && errno == EINTR) {
          }
          ::close(fd);  // drops the lock
        },
        "waiting for a dead child's files to be released");
  }
}

std::unique_ptr<Origin> open_origin(const std::string& path) {
  auto o = Origin::create(open_file(path));
  if (!o) throw std::runtime_error(o.error().message());
  return std::move(o).value();
}

// A view's expected content, plus ranges written by the step in flight at the kill: each sector in them may
// hold the old or the new data.
struct Expected {
  std::vector<std::byte> image;
  std::vector<std::pair<uint64_t, std::vector<std::byte>>> maybe;
};

::testing::AssertionResult matches(const std::vector<std::byte>& got, const Expected& e) {
  if (got.size() != e.image.size()) return ::testing::AssertionFailure() << "size " << got.size();
  for (uint64_t off = 0; off < got.size(); off += 512) {
    auto g = got.begin() + static_cast<long>(off);
    if (std::equal(g, g + 512, e.image.begin() + static_cast<long>(off))) continue;
    bool alternative = false;
    for (const auto& [start, data] : e.maybe) {
      if (off >= start && off < start + data.size()) {
        alternative |= std::equal(g, g + 512, data.begin() + static_cast<long>(off - start));
      }
    }
    if (!alternative) {
      return ::testing::AssertionFailure() << "sector " << off / 512 << " (byte " << off
                                           << ") is neither the expected data nor that of a write in flight";
    }
  }
  return ::testing::AssertionSuccess();
}

std::string workload_path() { return KCOPYFS_CRASH_WORKLOAD; }

std::vector<uint64_t> crash_seeds() {
  if (const char* s = std::getenv("KCOPYFS_CRASH_SEED")) return {std::strtoull(s, nullptr, 10)};
  uint64_t n = 30;
  if (const char* s = std::getenv("KCOPYFS_CRASH_SEEDS")) n = std::strtoull(s, nullptr, 10);
  std::vector<uint64_t> seeds;
  for (uint64_t i = 1; i <= n; ++i) seeds.push_back(i);
  return seeds;
}

// Checks the files the random workload of `seed` left after completing `completed` steps (the next one may
// be half done).
void verify_random(const TempDir& dir, uint64_t seed, int completed, bool wsnap) {
  crash::Workload workload(seed, wsnap);
  Expected origin{pattern(seed, 0, crash::kOriginBytes), {}};
  struct Snap {
    crash::SnapSpec spec;
    Expected view;
  };
  std::vector<Snap> snaps;
  std::optional<Snap> maybe_created;
  // Completed writes not flushed yet, per view (-1: the origin), in order: any of them may be lost.
  std::map<int, std::vector<std::pair<uint64_t, std::vector<std::byte>>>> unflushed;
  for (int i = 0; i <= completed; ++i) {
    const crash::Step step = workload.next();
    const bool done = i < completed;
    switch (step.kind) {
      case crash::Step::Kind::create:
        if (done) {
          snaps.push_back(Snap{step.snap, Expected{origin.image, {}}});
        } else {
          maybe_created = Snap{step.snap, Expected{origin.image, {}}};
        }
        break;
      case crash::Step::Kind::reopen:
        break;
      case crash::Step::Kind::write:
        for (const crash::WriteOp& w : step.writes) {
          Expected& view = w.view < 0 ? origin : snaps[w.view].view;
          auto data = pattern(w.data_seed, 0, w.length);
          if (!done) {
            view.maybe.emplace_back(w.offset, std::move(data));
          } else if (step.flush) {
            // The flush makes the view's earlier unflushed writes durable too.
            for (auto& [offset, earlier] : unflushed[w.view]) put(view.image, offset, earlier);
            unflushed[w.view].clear();
            put(view.image, w.offset, data);
          } else {
            unflushed[w.view].emplace_back(w.offset, std::move(data));
          }
        }
        break;
    }
  }
  for (auto& [v, writes] : unflushed) {
    Expected& view = v < 0 ? origin : snaps[v].view;
    for (auto& w : writes) view.maybe.push_back(std::move(w));
  }
  auto cow_path = [&](const crash::SnapSpec& s) { return dir.file(s.name + ".cow"); };
  // A snapshot being created at the kill exists if its COW has a header (else it holds what the child filled
  // it with, or nothing); it is then empty (an exact copy).
  if (maybe_created && std::filesystem::exists(cow_path(maybe_created->spec))) {
    auto cow = open_file(cow_path(maybe_created->spec));
    if (PersistentStore::read_header(*cow).ok()) snaps.push_back(*maybe_created);
  }
  // No other COW file may exist.
  size_t cow_files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    cow_files += entry.path().extension() == ".cow";
  }
  EXPECT_LE(cow_files, snaps.size() + 1);

  std::unique_ptr<Origin> o = open_origin(dir.file("origin.img"));
  for (const Snap& s : snaps) {
    auto snap = o->attach_snapshot(s.spec.name, open_file(cow_path(s.spec)), s.spec.writable);
    ASSERT_TRUE(snap.ok()) << s.spec.name << ": " << snap.error().message();
    EXPECT_TRUE(snap.value()->status().valid) << s.spec.name;
  }
  EXPECT_TRUE(matches(read_all(*o), origin)) << "origin";
  std::vector<std::vector<std::byte>> contents;
  for (const Snap& s : snaps) {
    contents.push_back(read_all(*o->find_snapshot(s.spec.name)));
    EXPECT_TRUE(matches(contents.back(), s.view))
        << s.spec.name << " (chunk " << s.spec.chunk_sectors << (s.spec.writable ? ", writable" : "") << ")";
  }
  // The reattached stores go on working: an origin write is copied into all of them and they read the same.
  ASSERT_FALSE(write_at(*o, 0, pattern(seed + 99, 0, 256 << 10)));
  for (size_t i = 0; i < snaps.size(); ++i) {
    EXPECT_TRUE(same_bytes(read_all(*o->find_snapshot(snaps[i].spec.name)), contents[i]))
        << snaps[i].spec.name << " after a new origin write";
  }
}

void random_kills(bool wsnap) {
  int killed_mid_run = 0;
  for (const uint64_t seed : crash_seeds()) {
    std::ostringstream trace;
    trace << "crash seed " << seed << " (rerun: KCOPYFS_CRASH_SEED=" << seed << ")";
    SCOPED_TRACE(trace.str());
    TempDir dir;
    write_pattern_file(dir.file("origin.img"), crash::kOriginBytes, seed);
    // The kill time is random (and not reproducible to the microsecond); everything else follows the seed.
    std::mt19937_64 rng(seed * 7919);
    const auto delay = std::chrono::milliseconds(5 + rng() % 600);
    std::string log;
    int status = 0;
    {
      Child child(
          {workload_path(), wsnap ? "random-wsnap" : "random", dir.path().string(), std::to_string(seed)});
      const bool ended = child.read_until(Clock::now() + delay, log);
      status = child.kill_and_reap();
      std::string rest;
      child.read_until(Clock::now() + kWait, rest);
      log += rest;
      if (ended || !WIFSIGNALED(status)) {
        // The child ended by itself: only after all its steps, successfully.
        ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
            << "the workload failed: " << describe(status);
      }
    }
    // The reports: "0\n1\n...\n(n-1)\n", possibly with a torn last line if the kill hit a write (it cannot:
    // a pipe write of a few bytes is atomic), so every complete line is a step number in order.
    int completed = 0;
    size_t pos = 0;
    while (pos < log.size()) {
      const size_t nl = log.find('\n', pos);
      ASSERT_NE(nl, std::string::npos) << "torn report";
      ASSERT_EQ(log.substr(pos, nl - pos), std::to_string(completed)) << "reports out of order";
      ++completed;
      pos = nl + 1;
    }
    killed_mid_run += WIFSIGNALED(status) ? 1 : 0;
    wait_until_released(dir);
    std::printf("crash seed %llu: killed after %lld ms, %d steps done\n",
                static_cast<unsigned long long>(seed), static_cast<long long>(delay.count()), completed);
    std::fflush(stdout);
    ASSERT_NO_FATAL_FAILURE(verify_random(dir, seed, completed, wsnap));
  }
  EXPECT_GT(killed_mid_run, 0);
}

TEST(SnapshotCrash, RandomKillLeavesEverySnapshotAndEveryFlushedWrite) { random_kills(false); }

// Writable snapshots acknowledge first writes before their exceptions are durable (deferred commit): a kill
// at any time must still find every flushed write, and every sector old or new data, never garbage.
TEST(SnapshotCrash, RandomKillDuringWritableSnapshotWritesKeepsEveryFlushedWrite) { random_kills(true); }

// ---- Crash points ----

std::vector<std::byte> with_chunks(std::vector<std::byte> image, std::initializer_list<uint64_t> chunks) {
  for (uint64_t c : chunks) put(image, c * k4K, crash::origin_data(c));
  return image;
}

class CrashPointTest : public ::testing::TestWithParam<crash::CrashPoint> {};

TEST_P(CrashPointTest, StateAfterTheCrashIsConsistent) {
  const crash::CrashPoint& p = GetParam();
  const std::string scenario = p.scenario;
  TempDir dir;
  write_pattern_file(dir.file("origin.img"), crash::kPointOriginBytes, crash::kPointSeed);
  const std::vector<std::byte> original = pattern(crash::kPointSeed, 0, crash::kPointOriginBytes);
  {
    Child child({workload_path(), "point", dir.path().string(), p.name});
    std::string log;
    const std::string got = child.wait_line({"hook", "completed"}, log);
    const auto status = child.wait_exit();
    ASSERT_TRUE(status.has_value()) << "the child did not end";
    ASSERT_EQ(got, "hook") << "the crash point was never reached (" << describe(*status)
                           << "); reports: " << log;
    ASSERT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << describe(*status);
  }
  wait_until_released(dir);

  std::unique_ptr<Origin> o = open_origin(dir.file("origin.img"));
  auto s = o->attach_snapshot("s", open_file(dir.file("s.cow")), true);
  ASSERT_TRUE(s.ok()) << s.error().message();
  Snapshot* snap = s.value();
  EXPECT_TRUE(snap->status().valid);
  EXPECT_EQ(snap->status().exceptions, p.expected_exceptions);

  if (scenario == "commit" || scenario == "snapshot_write" || scenario == "fill") {
    // The origin write (or snapshot write) that waited for the commit did not happen; the snapshot is the
    // original either way, except that a committed whole-chunk snapshot write is in it.
    std::vector<std::byte> origin_image = original;
    uint64_t next_chunk = 0;
    if (scenario == "fill") {
      for (uint64_t c = 0; c < crash::kFillPrefill; ++c) put(origin_image, c * k4K, crash::origin_data(c));
      next_chunk = 300;
    } else {
      origin_image = with_chunks(original, {0, 1, 2});
      next_chunk = 9;
    }
    std::vector<std::byte> snap_image = original;
    if (scenario == "snapshot_write" && p.expected_exceptions == 4)
      put(snap_image, crash::kCommitSnapshotTarget * k4K, crash::commit_snapshot_data());
    EXPECT_TRUE(same_bytes(read_all(*o), origin_image)) << "origin: the write waiting on the commit must not "
                                                           "have reached it";
    EXPECT_TRUE(same_bytes(read_all(*snap), snap_image)) << "snapshot";
    // The store goes on where it stopped: one more exception, then a reload.
    ASSERT_FALSE(write_at(*o, next_chunk * k4K, crash::origin_data(next_chunk)));
    put(origin_image, next_chunk * k4K, crash::origin_data(next_chunk));
    o.reset();
    o = open_origin(dir.file("origin.img"));
    s = o->attach_snapshot("s", open_file(dir.file("s.cow")), true);
    ASSERT_TRUE(s.ok()) << s.error().message();
    EXPECT_EQ(s.value()->status().exceptions, p.expected_exceptions + 1);
    EXPECT_TRUE(same_bytes(read_all(*s.value()), snap_image))
        << "snapshot after one more exception and a reload";
    EXPECT_TRUE(same_bytes(read_all(*o), origin_image));
    return;
  }

  ASSERT_EQ(scenario, "merge");
  const std::vector<std::byte> before_t = with_chunks(original, {10, 3, 20, 21, 22, 7});
  const std::vector<std::byte> origin_before = with_chunks(before_t, {crash::kMergeLateWrite});
  std::vector<std::byte> image = original;  // S's
  put(image, crash::kMergeSnapPartialOffset, crash::merge_snap_partial());
  put(image, crash::kMergeSnapFullChunk * k4K, crash::merge_snap_full());
  auto t = o->attach_snapshot("t", open_file(dir.file("t.cow")), false);
  ASSERT_TRUE(t.ok()) << t.error().message();
  EXPECT_TRUE(same_bytes(read_all(*snap), image)) << "the merging snapshot's view after the crash";
  EXPECT_TRUE(same_bytes(read_all(*t.value()), before_t)) << "another snapshot after the crash";
  const std::vector<std::byte> dev = read_all(*o);
  for (uint64_t c = 0; c < crash::kPointOriginBytes / k4K; ++c) {
    auto at = [&](const std::vector<std::byte>& v) { return v.begin() + static_cast<long>(c * k4K); };
    EXPECT_TRUE(std::equal(at(dev), at(dev) + k4K, at(origin_before)) ||
                std::equal(at(dev), at(dev) + k4K, at(image)))
        << "origin chunk " << c << " is neither the pre-merge nor the merged data";
  }
  MergeResult merge;
  ASSERT_TRUE(o->start_merge("s", merge.callback()).ok());
  EXPECT_TRUE(same_bytes(read_all(*o), image)) << "origin view of the resumed merge";
  const Status st = merge.wait();
  ASSERT_TRUE(st.ok()) << st.error().message();
  EXPECT_EQ(o->find_snapshot("s"), nullptr);
  EXPECT_TRUE(same_bytes(read_all(*o), image)) << "origin after the resumed merge";
  EXPECT_TRUE(same_bytes(read_all(*o->find_snapshot("t")), before_t));
  o.reset();
  o = open_origin(dir.file("origin.img"));
  t = o->attach_snapshot("t", open_file(dir.file("t.cow")), false);
  ASSERT_TRUE(t.ok()) << t.error().message();
  EXPECT_TRUE(same_bytes(read_all(*o), image)) << "origin after a reload";
  EXPECT_TRUE(same_bytes(read_all(*t.value()), before_t));
}

INSTANTIATE_TEST_SUITE_P(Points, CrashPointTest, ::testing::ValuesIn(crash::crash_points()),
                         [](const ::testing::TestParamInfo<crash::CrashPoint>& info) {
                           return info.param.name;
                         });

// The invalidation of a full store must reach the disk before the origin write that caused it is
// acknowledged: here the header write is held back 1 s; the child writes the origin, flushes, reports and is
// killed. A snapshot found valid afterwards would have lost the old data of chunk 5.
TEST(SnapshotCrash, OverflowInvalidationSurvivesAKillAfterTheOriginWrite) {
  TempDir dir;
  write_pattern_file(dir.file("origin.img"), crash::kPointOriginBytes, crash::kPointSeed);
  const std::vector<std::byte> original = pattern(crash::kPointSeed, 0, crash::kPointOriginBytes);
  {
    Child child({workload_path(), "overflow", dir.path().string()});
    std::string log;
    ASSERT_EQ(child.wait_line({"acked"}, log), "acked") << "reports: " << log;
    child.kill_and_reap();
  }
  wait_until_released(dir);
  std::unique_ptr<Origin> o = open_origin(dir.file("origin.img"));
  EXPECT_TRUE(same_bytes(read_all(*o), with_chunks(original, {0, 1, crash::kOverflowTarget})))
      << "the acknowledged, flushed origin writes";
  auto s = o->attach_snapshot("s", open_file(dir.file("s.cow")), false);
  ASSERT_TRUE(s.ok()) << s.error().message();
  if (s.value()->status().valid) {
    EXPECT_TRUE(same_bytes(read_all(*s.value()), original))
        << "the snapshot came back valid but without the old data of the chunk that overflowed it";
  } else {
    EXPECT_EQ(s.value()->status().kernel_status(), "Invalid");
  }
}

}  // namespace
}  // namespace kcopyfs::test
