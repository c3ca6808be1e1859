// End-to-end scenarios of the kcopyfs daemon as users run it (interface.md, "The daemon and the mount"):
// a live ext4 frozen with fsfreeze and snapshotted, then opened by loop mount and fuse2fs; persistence across
// umount/mount; SIGKILL of the daemon during fsync'd writes; many processes at once; a mirror leg (nbdkit's
// error filter behind nbdfuse) that starts failing mid-write, then replaced; fsx through every kind of view.
//
// Every test runs as root (it skips otherwise, or when a tool it drives is missing), bounds every wait, and
// tears down what it set up (fuse2fs, loop mounts, loop devices, helper processes, the kcopyfs mount) even
// when it fails. Random choices come from seeds printed in the output; KCOPYFS_SCENARIO_SEED=N repeats a run.
#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "tests/support/forked.h"
#include "tests/tools/mount_fixture.h"

#ifndef KCOPYFS_FSX
#error "KCOPYFS_FSX must be defined as the path of the built kcopyfs_fsx"
#endif

namespace kcopyfs {
namespace {

using namespace std::chrono_literals;
using test::CommandResult;
using test::describe_status;
using test::Forked;
using test::KcopyfsMount;
using test::run_command;
using test::wait_child;
using test::wait_gone;
using test::wait_until;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;

// ---------------------------------------------------------------------------------------------------------
// Helpers

// The run's base seed: KCOPYFS_SCENARIO_SEED, else from the clock. Printed by every test that uses it.
uint64_t base_seed() {
  static const uint64_t seed = [] {
    if (const char* s = std::getenv("KCOPYFS_SCENARIO_SEED"); s != nullptr && *s != '\0')
      return static_cast<uint64_t>(std::strtoull(s, nullptr, 0));
    return static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count()) % 1000000;
  }();
  return seed;
}

std::string pattern_bytes(uint64_t seed, uint64_t offset, uint64_t length) {
  const auto bytes = test::pattern(seed, offset, length);
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

bool have_tool(const std::string& name) {
  for (const char* dir : {"/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/bin", "/usr/local/sbin"}) {
    if (::access((std::string(dir) + "/" + name).c_str(), X_OK) == 0) return true;
  }
  return false;
}

#define REQUIRE_ROOT_AND_TOOLS(...)                                                    \
  do {                                                                                 \
    if (!test::running_as_root()) GTEST_SKIP() << "needs root (mounts, loop devices)"; \
    for (const std::string& tool_ : std::vector<std::string>{__VA_ARGS__}) {           \
      if (!have_tool(tool_)) GTEST_SKIP() << "needs " << tool_ << " (not installed)";  \
    }                                                                                  \
  } while (0)

bool write_text(const std::string& path, const std::string& text) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd.valid()) return false;
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd.get(), text.data() + done, text.size() - done);
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return ::fsync(fd.get()) == 0;
}

// pread/pwrite of all of data; false on an error or a short transfer.
bool pwrite_all(int fd, const std::string& data, uint64_t offset) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::pwrite(fd, data.data() + done, data.size() - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}
bool pread_all(int fd, std::string& data, uint64_t offset, uint64_t length) {
  data.assign(length, '\0');
  size_t done = 0;
  while (done < length) {
    const ssize_t n = ::pread(fd, data.data() + done, length - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

std::string read_file_range(const std::string& path, uint64_t offset, uint64_t length) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  std::string data;
  if (!fd.valid() || !pread_all(fd.get(), data, offset, length)) return "<cannot read " + path + ">";
  return data;
}

bool copy_file(const std::string& from, const std::string& to) {
  std::error_code ec;
  std::filesystem::copy_file(from, to, std::filesystem::copy_options::overwrite_existing, ec);
  return !ec;
}

std::string hex(uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

// How many mounts sit at exactly path (a dead mount under a live one counts twice).
int mounts_at(const std::string& path) {
  std::ifstream in("/proc/self/mountinfo");
  int count = 0;
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    std::string id, parent, devno, root, mount_point;
    fields >> id >> parent >> devno >> root >> mount_point;
    if (test::unescape_mount_field(mount_point) == path) ++count;
  }
  return count;
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

bool exited_ok(const std::optional<int>& status) {
  return status && WIFEXITED(*status) && WEXITSTATUS(*status) == 0;
}

// A program run in the background (fuse2fs -f, nbdfuse), its stdout and stderr in a log file. The destructor
// kills and reaps it if it still runs.
class Background {
 public:
  Background(const std::vector<std::string>& args, const std::string& log) : log_(log) {
    for (const auto& a : args) command_ += (command_.empty() ? "" : " ") + a;
    UniqueFd log_fd(::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
    if (!log_fd.valid() || test::spawn_program(args, log_fd.get(), log_fd.get(), &pid_) != 0) pid_ = -1;
  }
  ~Background() {
    if (pid_ > 0) wait(0ms);
  }
  Background(const Background&) = delete;
  Background& operator=(const Background&) = delete;
  bool started() const { return pid_ > 0; }
  bool running() {
    if (pid_ <= 0) return false;
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      status_ = status;
      pid_ = -1;
      return false;
    }
    return true;
  }
  std::optional<int> wait(std::chrono::milliseconds timeout) {
    if (pid_ > 0) {
      status_ = wait_child(pid_, timeout);
      pid_ = -1;
    }
    return status_;
  }
  std::string log() const { return test::read_all(log_); }
  const std::string& command() const { return command_; }

 private:
  std::string command_;
  std::string log_;
  pid_t pid_ = -1;
  std::optional<int> status_;
};

// Undo actions run in reverse order on destruction (or by run()), so a failing test leaves nothing mounted.
// Declare it after the KcopyfsMount: it is destroyed first, releasing the views before the kcopyfs umount.
class Teardown {
 public:
  ~Teardown() { run(); }
  void add(const std::string& what, std::function<void()> fn) { steps_.emplace_back(what, std::move(fn)); }
  void run() {
    while (!steps_.empty()) {
      auto step = std::move(steps_.back());
      steps_.pop_back();
      step.second();
    }
  }

 private:
  std::vector<std::pair<std::string, std::function<void()>>> steps_;
};

CommandResult run_tool(const std::vector<std::string>& args, std::chrono::milliseconds timeout = 60s) {
  return run_command(args, timeout);
}

// The mount after a SIGKILL of the daemon, its dead mount still in place: kcopyfs mount clears that by
// itself, leaving one mount on the mountpoint. When it does not (reported), the dead mount is cleared by hand
// so the test can still check the data; a failure then is fatal (call it in ASSERT_NO_FATAL_FAILURE).
void remount_after_kill(KcopyfsMount& m) {
  const CommandResult mount = m.mount();
  EXPECT_TRUE(mount.ok()) << "mount after the SIGKILL: " << mount;
  if (!mount.ok()) {
    const CommandResult clear = m.umount();
    const CommandResult again = m.mount();
    ASSERT_TRUE(again.ok()) << clear << "\n" << again;
  }
  EXPECT_EQ(mounts_at(m.mnt()), 1) << "the dead mount of the killed daemon is still there under the new one";
}

// The last umount of a test: it succeeds and leaves nothing mounted on the mountpoint.
void expect_clean_umount(KcopyfsMount& m) {
  const CommandResult umount = m.umount();
  EXPECT_TRUE(umount.ok()) << umount;
  EXPECT_EQ(mounts_at(m.mnt()), 0);
}

// Unmounts dir if it is mounted (bounded; lazily as a last resort).
void unmount_dir(const std::string& dir) {
  if (!test::is_mounted(dir)) return;
  const CommandResult r = run_tool({"umount", dir}, 30s);
  if (!r.ok() && test::is_mounted(dir)) {
    std::cerr << "cli_scenario_tests: " << r.describe() << "\n";
    run_tool({"umount", "-l", dir}, 30s);
  }
}

// A FUSE filesystem served by a foreground child (fuse2fs -f, nbdfuse): waits for the mount, and on
// destruction unmounts it with fusermount3 -u and reaps the child (bounded).
class FuseChild {
 public:
  FuseChild(const std::vector<std::string>& args, const std::string& mountpoint, const std::string& log,
            const std::function<bool()>& ready)
      : mountpoint_(mountpoint), child_(args, log) {
    ready_ = child_.started() && wait_until([&] { return ready() || !child_.running(); }, 30s) && ready();
  }
  ~FuseChild() { stop(); }
  bool ready() const { return ready_; }
  std::string describe() { return "`" + child_.command() + "`: " + child_.log(); }
  // Result: whether it unmounted and the child exited 0 in time.
  bool stop() {
    if (stopped_) return true;
    stopped_ = true;
    bool ok = true;
    if (test::is_mounted(mountpoint_)) {
      const CommandResult r = run_tool({"fusermount3", "-u", mountpoint_}, 30s);
      if (!r.ok()) {
        std::cerr << "cli_scenario_tests: " << r.describe() << "\n";
        ok = false;
        run_tool({"fusermount3", "-u", "-z", mountpoint_}, 30s);
      }
    }
    const auto status = child_.wait(30s);
    if (!exited_ok(status)) ok = false;
    return ok;
  }

 private:
  std::string mountpoint_;
  Background child_;
  bool ready_ = false;
  bool stopped_ = false;
};

// A loop device over a file, from `losetup -f --show`; detached by the Teardown.
std::string attach_loop(Teardown& teardown, const std::string& file, bool read_only) {
  std::vector<std::string> args{"losetup", "-f", "--show"};
  if (read_only) args.push_back("-r");
  args.push_back(file);
  const CommandResult r = run_tool(args);
  if (!r.ok()) {
    ADD_FAILURE() << r;
    return "";
  }
  const std::string dev = trim(r.out);
  teardown.add("losetup -d " + dev, [dev] {
    const CommandResult d = run_tool({"losetup", "-d", dev}, 30s);
    if (!d.ok()) std::cerr << "cli_scenario_tests: " << d.describe() << "\n";
  });
  return dev;
}

// The state of one target's status object, "" when it has none.
std::string state_of(const nlohmann::json& t) {
  return t.is_object() && t.contains("state") && t["state"].is_string() ? t["state"].get<std::string>() : "";
}

// Whether a mirror is in sync: state active, every region in sync, every leg alive.
bool mirror_in_sync(const nlohmann::json& t) {
  if (!t.is_object() || !t.contains("legs")) return false;
  for (const auto& leg : t["legs"]) {
    if (leg.value("health", "") != "A") return false;
  }
  return state_of(t) == "active" && t.value("regions_in_sync", -1) == t.value("regions_total", -2);
}

// A file's checksum (FNV-1a 64 of its whole content).
uint64_t sum(const std::string& path) { return test::checksum(path); }

std::string make_dir(const KcopyfsMount& m, const std::string& name) {
  const std::string dir = m.file(name);
  ::mkdir(dir.c_str(), 0755);
  return dir;
}

// ---------------------------------------------------------------------------------------------------------
// 1. A live ext4 on the origin (loop device over origins/NAME), frozen with fsfreeze while the snapshot is
// taken: the snapshot, loop-mounted read-only and opened with fuse2fs, shows the files as they were.

TEST(Scenario, FrozenExt4SnapshotReadsByLoopMountAndFuse2fs) {
  REQUIRE_ROOT_AND_TOOLS("mkfs.ext4", "fsfreeze", "losetup", "fuse2fs", "fusermount3", "e2fsck");
  KcopyfsMount m;
  ASSERT_TRUE(m.mount_result().ok()) << m.mount_result();
  Teardown teardown;

  // The filesystem's first content, from a directory.
  const std::string src = make_dir(m, "src");
  ::mkdir((src + "/sub").c_str(), 0755);
  const std::string b_content = pattern_bytes(101, 0, 300 * kKiB);
  const std::string big_content = pattern_bytes(102, 0, 2 * kMiB);
  ASSERT_TRUE(write_text(src + "/a.txt", "alpha v1\n"));
  ASSERT_TRUE(write_text(src + "/b.bin", b_content));
  ASSERT_TRUE(write_text(src + "/sub/c.txt", "gamma, in a subdirectory\n"));
  ASSERT_TRUE(write_text(src + "/big.bin", big_content));
  const std::string image = m.file("fs.img");
  const CommandResult mkfs = run_tool({"mkfs.ext4", "-q", "-F", "-d", src, image, "64M"});
  ASSERT_TRUE(mkfs.ok()) << mkfs;
  ASSERT_TRUE(m.origin_add("fs", image).ok());

  // Mount the origin view's filesystem read-write and change it while it is live.
  const std::string loop = attach_loop(teardown, m.origin_view("fs"), false);
  ASSERT_FALSE(loop.empty());
  const std::string live = make_dir(m, "live");
  const CommandResult mount_live = run_tool({"mount", "-t", "ext4", loop, live});
  ASSERT_TRUE(mount_live.ok()) << mount_live;
  teardown.add("umount live", [live] { unmount_dir(live); });
  ASSERT_EQ(test::read_all(live + "/a.txt"), "alpha v1\n");
  const std::string d_content = pattern_bytes(103, 0, 700 * kKiB);
  ASSERT_TRUE(write_text(live + "/a.txt", "alpha v2, written on the live filesystem\n"));
  ASSERT_TRUE(write_text(live + "/d.bin", d_content));

  // Freeze, snapshot, thaw.
  const CommandResult freeze = run_tool({"fsfreeze", "-f", live});
  ASSERT_TRUE(freeze.ok()) << freeze;
  auto frozen = std::make_shared<bool>(true);
  teardown.add("thaw", [frozen, live] {
    if (*frozen) run_tool({"fsfreeze", "-u", live});
  });
  const CommandResult snap = m.snapshot_create("fs", "frozen");
  const CommandResult thaw = run_tool({"fsfreeze", "-u", live});
  *frozen = !thaw.ok();
  ASSERT_TRUE(snap.ok()) << snap;
  ASSERT_TRUE(thaw.ok()) << thaw;

  // Change and delete files after the snapshot, in place where ext4 allows it, and make it durable.
  ASSERT_TRUE(write_text(live + "/a.txt", "alpha v3, after the snapshot\n"));
  ASSERT_EQ(::unlink((live + "/b.bin").c_str()), 0);
  ASSERT_EQ(::unlink((live + "/d.bin").c_str()), 0);
  ASSERT_TRUE(write_text(live + "/e.txt", "epsilon, after the snapshot\n"));
  {
    UniqueFd fd(::open((live + "/big.bin").c_str(), O_WRONLY | O_CLOEXEC));
    ASSERT_TRUE(fd.valid());
    ASSERT_TRUE(pwrite_all(fd.get(), pattern_bytes(104, 0, 2 * kMiB), 0));
    ASSERT_EQ(::fsync(fd.get()), 0);
  }
  const CommandResult sync = run_tool({"sync", "-f", live + "/a.txt"});
  ASSERT_TRUE(sync.ok()) << sync;
  // The later changes reached the origin, so the snapshot is not trivially equal to it.
  ASSERT_NE(sum(m.origin_view("fs")), sum(m.snapshot_view("frozen")));

  // The snapshot's filesystem is clean (a frozen filesystem needs no journal replay) and holds the old files.
  auto check_old_files = [&](const std::string& dir, const std::string& how) {
    SCOPED_TRACE(how);
    EXPECT_EQ(test::read_all(dir + "/a.txt"), "alpha v2, written on the live filesystem\n");
    EXPECT_TRUE(test::read_all(dir + "/b.bin") == b_content) << dir << "/b.bin differs";
    EXPECT_TRUE(test::read_all(dir + "/d.bin") == d_content) << dir << "/d.bin differs";
    EXPECT_TRUE(test::read_all(dir + "/big.bin") == big_content) << dir << "/big.bin differs";
    EXPECT_EQ(test::read_all(dir + "/sub/c.txt"), "gamma, in a subdirectory\n");
    EXPECT_FALSE(test::path_exists(dir + "/e.txt"));
  };
  const std::string snap_loop = make_dir(m, "snap-loop");
  CommandResult mount_snap =
      run_tool({"mount", "-t", "ext4", "-o", "loop,ro", m.snapshot_view("frozen"), snap_loop});
  if (!mount_snap.ok()) {
    std::cout << "mount -o loop,ro failed, retrying with ro,noload: " << mount_snap.err << std::endl;
    mount_snap =
        run_tool({"mount", "-t", "ext4", "-o", "loop,ro,noload", m.snapshot_view("frozen"), snap_loop});
  }
  ASSERT_TRUE(mount_snap.ok()) << mount_snap;
  teardown.add("umount snap-loop", [snap_loop] { unmount_dir(snap_loop); });
  check_old_files(snap_loop, "loop mount of snapshots/frozen");

  const std::string snap_fuse = make_dir(m, "snap-fuse2fs");
  {
    FuseChild fuse2fs({"fuse2fs", "-f", "-o", "ro,fakeroot", m.snapshot_view("frozen"), snap_fuse}, snap_fuse,
                      m.file("fuse2fs.log"),
                      [&] { return test::mount_type_at(snap_fuse).rfind("fuse", 0) == 0; });
    ASSERT_TRUE(fuse2fs.ready()) << fuse2fs.describe();
    check_old_files(snap_fuse, "fuse2fs of snapshots/frozen");
    EXPECT_TRUE(fuse2fs.stop()) << fuse2fs.describe();
  }
  unmount_dir(snap_loop);
  EXPECT_FALSE(test::is_mounted(snap_loop));
  const CommandResult fsck = run_tool({"e2fsck", "-f", "-n", m.snapshot_view("frozen")});
  EXPECT_TRUE(fsck.ok()) << fsck;

  // The origin's filesystem has the later state.
  EXPECT_EQ(test::read_all(live + "/a.txt"), "alpha v3, after the snapshot\n");
  EXPECT_FALSE(test::path_exists(live + "/b.bin"));

  teardown.run();  // umount live, losetup -d
  const CommandResult umount = m.umount();
  EXPECT_TRUE(umount.ok()) << umount;
  EXPECT_FALSE(m.mounted());
}

// ---------------------------------------------------------------------------------------------------------
// 2. Every target and its content survive `kcopyfs umount` and the next `kcopyfs mount`.

TEST(Scenario, ContentSurvivesUmountAndMount) {
  REQUIRE_ROOT_AND_TOOLS("fusermount3");
  const uint64_t seed = base_seed() + 200;
  std::cout << "seed " << seed << std::endl;
  std::mt19937_64 rng(seed);
  KcopyfsMount m;
  ASSERT_TRUE(m.mount_result().ok()) << m.mount_result();
  constexpr uint64_t kSize = 16 * kMiB;
  const std::string origin = m.file("origin.img"), leg0 = m.file("leg0.img"), leg1 = m.file("leg1.img");
  test::write_pattern_file(origin, kSize, seed);
  test::write_pattern_file(leg0, kSize, seed + 1);
  test::make_sparse_file(leg1, kSize);
  const uint64_t origin_before = sum(origin);
  ASSERT_TRUE(m.origin_add("o", origin).ok());
  ASSERT_TRUE(m.snapshot_create("o", "s1").ok());
  ASSERT_TRUE(m.snapshot_create("o", "s64k", {"--chunk-size", "64K"}).ok());
  ASSERT_TRUE(m.snapshot_create("o", "w1", {"--writable"}).ok());
  ASSERT_TRUE(m.mirror_create("m", {leg0, leg1}).ok());
  ASSERT_TRUE(m.wait_for_target("m", mirror_in_sync, 60s)) << m.target("m").dump();

  // Random writes to the origin (copied out to three snapshots first), the writable snapshot and the mirror.
  auto scribble = [&](const std::string& view, uint64_t data_seed) {
    UniqueFd fd(::open(view.c_str(), O_RDWR | O_CLOEXEC));
    ASSERT_TRUE(fd.valid()) << view;
    for (int i = 0; i < 40; ++i) {
      const uint64_t len = 1 + rng() % (96 * kKiB);
      const uint64_t off = rng() % (kSize - len);
      ASSERT_TRUE(pwrite_all(fd.get(), pattern_bytes(data_seed + i, off, len), off)) << view;
    }
    ASSERT_EQ(::fsync(fd.get()), 0) << view;
  };
  scribble(m.origin_view("o"), seed + 10);
  scribble(m.snapshot_view("w1"), seed + 100);
  scribble(m.mirror_view("m"), seed + 1000);

  std::map<std::string, uint64_t> before;
  for (const auto& view : {m.origin_view("o"), m.snapshot_view("s1"), m.snapshot_view("s64k"),
                           m.snapshot_view("w1"), m.mirror_view("m")})
    before[view] = sum(view);
  ASSERT_EQ(before[m.snapshot_view("s1")], origin_before);
  ASSERT_EQ(before[m.snapshot_view("s64k")], origin_before);
  ASSERT_NE(before[m.origin_view("o")], origin_before);
  ASSERT_NE(before[m.snapshot_view("w1")], origin_before);
  const nlohmann::json s1_before = m.target("s1");

  for (int cycle = 1; cycle <= 2; ++cycle) {
    SCOPED_TRACE("remount " + std::to_string(cycle));
    const pid_t daemon = m.daemon_pid();
    const CommandResult umount = m.umount();
    ASSERT_TRUE(umount.ok()) << umount;
    EXPECT_FALSE(m.mounted());
    EXPECT_TRUE(wait_gone(daemon, 20s)) << "the daemon did not exit after umount";
    EXPECT_TRUE(test::path_exists(m.state_dir() + "/s1.cow"));
    const CommandResult mount = m.mount();
    ASSERT_TRUE(mount.ok()) << mount;
    for (const auto& [view, expected] : before) {
      EXPECT_EQ(hex(sum(view)), hex(expected)) << view;
    }
    for (const char* name : {"o", "s1", "s64k", "w1"}) EXPECT_EQ(state_of(m.target(name)), "active") << name;
    const nlohmann::json s1 = m.target("s1");
    EXPECT_EQ(s1.value("cow_used", -1), s1_before.value("cow_used", -2)) << s1.dump();
    EXPECT_EQ(s1.value("persistent", false), true);
    EXPECT_TRUE(m.wait_for_target("m", mirror_in_sync, 60s)) << m.target("m").dump();
  }
  const CommandResult umount = m.umount();
  ASSERT_TRUE(umount.ok()) << umount;
  // Both legs hold the mirror's content.
  EXPECT_EQ(hex(sum(leg0)), hex(before[m.mirror_view("m")]));
  EXPECT_EQ(hex(sum(leg1)), hex(before[m.mirror_view("m")]));
}

// ---------------------------------------------------------------------------------------------------------
// 3. SIGKILL of the daemon while a process writes with an fsync after every block: after the next mount
// (which must clear the dead mount by itself), every block whose fsync returned is there, and every snapshot
// taken before still shows its point in time.

TEST(Scenario, SigkillDuringFsyncedWritesLosesNoAcknowledgedBlock) {
  REQUIRE_ROOT_AND_TOOLS("fusermount3");
  constexpr uint64_t kSize = 32 * kMiB;
  constexpr uint64_t kBlock = 4 * kKiB;
  constexpr int kRounds = 5;
  KcopyfsMount m;
  ASSERT_TRUE(m.mount_result().ok()) << m.mount_result();
  const std::string origin = m.file("origin.img");
  test::write_pattern_file(origin, kSize, base_seed() + 300);
  ASSERT_TRUE(m.origin_add("o", origin).ok());

  std::map<std::string, uint64_t> snapshots;  // name -> point-in-time checksum
  int missing_blocks = 0;
  bool snapshots_moved = false;
  for (int round = 0; round < kRounds; ++round) {
    const uint64_t seed = base_seed() + 310 + round;
    std::mt19937_64 rng(seed);
    const uint64_t kill_after = 1 + rng() % 120;
    const bool direct = round % 2 == 1;
    SCOPED_TRACE("round " + std::to_string(round) + " seed " + std::to_string(seed) + " kill after " +
                 std::to_string(kill_after) + " acknowledged fsyncs" + (direct ? ", O_DIRECT" : ""));
    std::cout << "round " << round << ": seed " << seed << ", kill after " << kill_after
              << " acknowledged fsyncs" << (direct ? ", O_DIRECT" : "") << std::endl;

    // A snapshot of the quiet origin: its point in time.
    const std::string snap = "before" + std::to_string(round);
    const uint64_t point_in_time = sum(m.origin_view("o"));
    ASSERT_TRUE(m.snapshot_create("o", snap).ok());
    snapshots[snap] = point_in_time;

    // The blocks' places: distinct, random, all over the origin. Block i holds pattern (seed, i).
    std::vector<uint64_t> order(kSize / kBlock);
    for (uint64_t i = 0; i < order.size(); ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), rng);
    order.resize(2000);
    auto block = [&](uint64_t i) { return pattern_bytes(seed * 100000 + i, 0, kBlock); };

    // The writer reports each acknowledged block on a pipe (and in a file on /var/tmp, fsync'd).
    int acks[2];
    ASSERT_EQ(::pipe2(acks, O_CLOEXEC), 0);
    UniqueFd ack_read(acks[0]), ack_write(acks[1]);
    const std::string record = m.file("acked-" + std::to_string(round));
    const std::string view = m.origin_view("o");
    Forked writer([&]() -> int {
      ack_read.reset();
      UniqueFd fd(::open(view.c_str(), O_RDWR | O_CLOEXEC | (direct ? O_DIRECT : 0)));
      UniqueFd rec(::open(record.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
      if (!fd.valid() || !rec.valid()) return 2;
      void* buf = nullptr;
      if (::posix_memalign(&buf, 4096, kBlock) != 0) return 2;
      for (uint64_t i = 0; i < order.size(); ++i) {
        const std::string data = block(i);
        std::memcpy(buf, data.data(), kBlock);
        if (::pwrite(fd.get(), buf, kBlock, static_cast<off_t>(order[i] * kBlock)) !=
            static_cast<ssize_t>(kBlock))
          return 0;  // the daemon is gone
        if (::fsync(fd.get()) != 0) return 0;
        const std::string line = std::to_string(i) + "\n";
        if (::write(rec.get(), line.data(), line.size()) < 0 || ::fsync(rec.get()) != 0) return 2;
        const uint32_t n = static_cast<uint32_t>(i);
        if (::write(ack_write.get(), &n, sizeof n) != sizeof n) return 2;
      }
      return 1;  // never killed
    });
    ASSERT_TRUE(writer.started());
    ack_write.reset();

    // Read acknowledgements; at kill_after of them, SIGKILL the daemon.
    std::set<uint32_t> acked;
    const pid_t daemon = m.daemon_pid();
    ASSERT_GT(daemon, 0);
    UniqueFd daemon_fd(static_cast<int>(::syscall(SYS_pidfd_open, daemon, 0)));
    bool killed = false;
    const auto deadline = test::Clock::now() + 60s;
    for (;;) {
      if (!killed && acked.size() >= kill_after) {
        ASSERT_EQ(::kill(daemon, SIGKILL), 0);
        killed = true;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - test::Clock::now());
      ASSERT_GT(left.count(), 0) << "the writer neither finished nor failed in time (" << acked.size()
                                 << " blocks acknowledged)";
      pollfd p{ack_read.get(), POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      uint32_t n = 0;
      const ssize_t got = ::read(ack_read.get(), &n, sizeof n);
      if (got == sizeof n) {
        acked.insert(n);
        continue;
      }
      if (got < 0 && errno == EINTR) continue;
      break;  // EOF: the writer is done
    }
    const auto writer_status = writer.wait(30s);
    ASSERT_TRUE(killed) << "the writer stopped after " << acked.size()
                        << " blocks, before the kill: " << describe_status(writer_status);
    ASSERT_TRUE(exited_ok(writer_status)) << "writer: " << describe_status(writer_status);
    pollfd gone{daemon_fd.get(), POLLIN, 0};
    ASSERT_EQ(::poll(&gone, 1, 20000), 1) << "the daemon " << daemon << " is still there after SIGKILL";
    std::cout << "  killed the daemon after " << acked.size() << " acknowledged blocks" << std::endl;

    // The mount is dead now (statvfs always reaches the FUSE connection) ...
    struct statvfs vfs {};
    const int vfs_rc = ::statvfs(m.mnt().c_str(), &vfs);
    const int vfs_errno = errno;
    EXPECT_TRUE(vfs_rc != 0 && vfs_errno == ENOTCONN)
        << "statvfs of the dead mount: " << (vfs_rc == 0 ? "succeeded" : std::strerror(vfs_errno));
    // ... and the next mount, with the dead mount still in place, clears it by itself.
    ASSERT_NO_FATAL_FAILURE(remount_after_kill(m));
    ASSERT_NE(m.daemon_pid(), daemon);

    // Every acknowledged block is there.
    {
      UniqueFd fd(::open(view.c_str(), O_RDONLY | O_CLOEXEC));
      ASSERT_TRUE(fd.valid());
      int missing = 0;
      std::string got;
      for (uint32_t i : acked) {
        ASSERT_TRUE(pread_all(fd.get(), got, order[i] * kBlock, kBlock));
        if (got != block(i) && ++missing <= 5)
          ADD_FAILURE() << "acknowledged block " << i << " at offset " << order[i] * kBlock << " is lost";
      }
      EXPECT_EQ(missing, 0) << "of " << acked.size() << " acknowledged blocks";
      missing_blocks = missing;
      std::set<uint32_t> recorded;
      std::ifstream rec(record);
      for (uint32_t i; rec >> i;) recorded.insert(i);
      EXPECT_EQ(recorded, acked);
    }
    // Every snapshot taken so far still shows its point in time.
    for (const auto& [name, expected] : snapshots) {
      EXPECT_EQ(state_of(m.target(name)), "active") << name;
      const uint64_t got = sum(m.snapshot_view(name));
      EXPECT_EQ(hex(got), hex(expected)) << "snapshots/" << name;
      snapshots_moved = snapshots_moved || got != expected;
    }
    // A stacked dead mount (reported above) does not stop the rounds; lost data does.
    if (missing_blocks > 0 || snapshots_moved) break;
  }
  expect_clean_umount(m);
}

// A mount long after the SIGKILL, once the kernel's cached attributes of the dead mount have expired (so a
// stat of the mountpoint fails with ENOTCONN), also clears the dead mount by itself. The wait is for that
// condition (bounded), not a fixed sleep. Disabled in CI: the kernel keeps those attributes for 60 s (run it
// with --gtest_also_run_disabled_tests); the prompt remount of the test above goes through the same path.
TEST(Scenario, DISABLED_MountLongAfterSigkillDetachesTheDeadMount) {
  REQUIRE_ROOT_AND_TOOLS("fusermount3");
  constexpr uint64_t kSize = 4 * kMiB;
  KcopyfsMount m;
  ASSERT_TRUE(m.mount_result().ok()) << m.mount_result();
  const std::string origin = m.file("origin.img");
  test::write_pattern_file(origin, kSize, 700);
  ASSERT_TRUE(m.origin_add("o", origin).ok());
  {
    UniqueFd fd(::open(m.origin_view("o").c_str(), O_RDWR | O_CLOEXEC));
    ASSERT_TRUE(fd.valid());
    ASSERT_TRUE(pwrite_all(fd.get(), pattern_bytes(701, 0, 64 * kKiB), kMiB));
    ASSERT_EQ(::fsync(fd.get()), 0);
  }
  const pid_t daemon = m.daemon_pid();
  ASSERT_GT(daemon, 0);
  ASSERT_EQ(::kill(daemon, SIGKILL), 0);
  ASSERT_TRUE(wait_gone(daemon, 20s));
  struct stat st {};
  ASSERT_TRUE(wait_until([&] { return ::stat(m.mnt().c_str(), &st) != 0 && errno == ENOTCONN; }, 100s))
      << "stat of the dead mount never failed with ENOTCONN";
  ASSERT_NO_FATAL_FAILURE(remount_after_kill(m));
  EXPECT_TRUE(read_file_range(m.origin_view("o"), kMiB, 64 * kKiB) == pattern_bytes(701, 0, 64 * kKiB));
  expect_clean_umount(m);
}

// ---------------------------------------------------------------------------------------------------------
// 4. Four processes write and verify their own slices of an origin and of a mirror (which resyncs meanwhile)
// while a fifth reads a snapshot over and over: it never moves from its point in time.

TEST(Scenario, ManyProcessesReadAndWriteAtOnce) {
  REQUIRE_ROOT_AND_TOOLS("fusermount3");
  constexpr uint64_t kSize = 32 * kMiB;
  constexpr int kWriters = 4;
  constexpr int kOps = 600;
  const uint64_t seed = base_seed() + 400;
  std::cout << "seed " << seed << std::endl;
  KcopyfsMount m;
  ASSERT_TRUE(m.mount_result().ok()) << m.mount_result();
  const std::string origin = m.file("origin.img"), leg0 = m.file("leg0.img"), leg1 = m.file("leg1.img");
  test::write_pattern_file(origin, kSize, seed);
  test::write_pattern_file(leg0, kSize, seed + 1);
  test::make_sparse_file(leg1, kSize);
  const uint64_t point_in_time = sum(origin);
  ASSERT_TRUE(m.origin_add("o", origin).ok());
  ASSERT_TRUE(m.snapshot_create("o", "s").ok());
  ASSERT_TRUE(m.mirror_create("m", {leg0, leg1}).ok());  // resyncs leg 1 in the background

  const std::string origin_view = m.origin_view("o"), mirror_view = m.mirror_view("m");
  const std::string snap_view = m.snapshot_view("s");
  std::vector<std::unique_ptr<Forked>> writers;
  for (int w = 0; w < kWriters; ++w) {
    writers.push_back(std::make_unique<Forked>([&, w]() -> int {
      const uint64_t lo = kSize / kWriters * w, len = kSize / kWriters;
      std::mt19937_64 rng(seed * 10 + w);
      struct Target {
        std::string path;
        UniqueFd fd;
        std::string model;
      } targets[2] = {{origin_view, UniqueFd(), pattern_bytes(seed, lo, len)},
                      {mirror_view, UniqueFd(), pattern_bytes(seed + 1, lo, len)}};
      for (auto& t : targets) {
        t.fd = UniqueFd(::open(t.path.c_str(), O_RDWR | O_CLOEXEC));
        if (!t.fd.valid()) {
          std::fprintf(stderr, "writer %d: open %s: %s\n", w, t.path.c_str(), std::strerror(errno));
          return 1;
        }
      }
      std::string got;
      for (int op = 0; op < kOps; ++op) {
        Target& t = targets[rng() % 2];
        const uint64_t n = 1 + rng() % (64 * kKiB);
        const uint64_t off = rng() % (len - n);
        const unsigned kind = rng() % 10;
        if (kind < 5) {
          const std::string data = pattern_bytes(rng(), 0, n);
          if (!pwrite_all(t.fd.get(), data, lo + off)) {
            std::fprintf(stderr, "writer %d op %d: write %s at %llu: %s\n", w, op, t.path.c_str(),
                         static_cast<unsigned long long>(lo + off), std::strerror(errno));
            return 1;
          }
          t.model.replace(off, n, data);
        } else if (kind < 9) {
          if (!pread_all(t.fd.get(), got, lo + off, n) || got != t.model.substr(off, n)) {
            std::fprintf(stderr, "writer %d op %d: read %s at %llu+%llu: wrong data\n", w, op, t.path.c_str(),
                         static_cast<unsigned long long>(lo + off), static_cast<unsigned long long>(n));
            return 1;
          }
        } else if (::fsync(t.fd.get()) != 0) {
          std::fprintf(stderr, "writer %d: fsync %s: %s\n", w, t.path.c_str(), std::strerror(errno));
          return 1;
        }
      }
      for (auto& t : targets) {
        if (!pread_all(t.fd.get(), got, lo, len) || got != t.model) {
          std::fprintf(stderr, "writer %d: final read of its slice of %s: wrong data\n", w, t.path.c_str());
          return 1;
        }
        if (::fsync(t.fd.get()) != 0) return 1;
      }
      return 0;
    }));
    ASSERT_TRUE(writers.back()->started());
  }
  // The reader reads the snapshot whole until the writers are done (its stop pipe closes), at least twice.
  int stop[2];
  ASSERT_EQ(::pipe2(stop, O_CLOEXEC), 0);
  UniqueFd stop_read(stop[0]), stop_write(stop[1]);
  Forked reader([&]() -> int {
    stop_write.reset();
    for (int pass = 0;; ++pass) {
      const uint64_t got = sum(snap_view);
      if (got != point_in_time) {
        std::fprintf(stderr, "reader pass %d: snapshots/s checksum %s, expected %s\n", pass, hex(got).c_str(),
                     hex(point_in_time).c_str());
        return 1;
      }
      pollfd p{stop_read.get(), POLLIN, 0};
      if (pass >= 1 && ::poll(&p, 1, 0) == 1) return 0;
    }
  });
  ASSERT_TRUE(reader.started());
  stop_read.reset();

  for (int w = 0; w < kWriters; ++w) {
    const auto status = writers[w]->wait(150s);
    EXPECT_TRUE(exited_ok(status)) << "writer " << w << ": " << describe_status(status);
  }
  stop_write.reset();
  const auto reader_status = reader.wait(60s);
  EXPECT_TRUE(exited_ok(reader_status)) << "reader: " << describe_status(reader_status);
  EXPECT_EQ(hex(sum(snap_view)), hex(point_in_time));
  EXPECT_NE(sum(origin_view), point_in_time);
  EXPECT_TRUE(m.wait_for_target("m", mirror_in_sync, 60s)) << m.target("m").dump();
  const uint64_t mirror_sum = sum(mirror_view);
  const CommandResult umount = m.umount();
  ASSERT_TRUE(umount.ok()) << umount;
  EXPECT_EQ(hex(sum(leg0)), hex(mirror_sum));
  EXPECT_EQ(hex(sum(leg1)), hex(mirror_sum));
}

// ---------------------------------------------------------------------------------------------------------
// 5. A mirror leg that starts failing writes mid-way (nbdkit's error filter, exposed as a file by nbdfuse):
// writes through the mirror keep succeeding, the leg shows D, and `mirror replace` resyncs a new image.

TEST(Scenario, MirrorLegFailingMidWriteIsReplaced) {
  REQUIRE_ROOT_AND_TOOLS("nbdkit", "nbdfuse", "fusermount3");
  constexpr uint64_t kSize = 16 * kMiB;
  const uint64_t seed = base_seed() + 500;
  std::cout << "seed " << seed << std::endl;
  std::mt19937_64 rng(seed);
  KcopyfsMount m;
  ASSERT_TRUE(m.mount_result().ok()) << m.mount_result();
  // On a failure, the kcopyfs mount goes first (it holds the nbdfuse leg open), then nbdfuse.
  std::unique_ptr<FuseChild> nbdfuse;
  Teardown teardown;
  teardown.add("kcopyfs umount", [&m] { m.cleanup(); });

  const std::string good = m.file("good.img"), bad = m.file("bad.img"), fresh = m.file("new.img");
  const std::string trigger = m.file("fail-now");
  test::write_pattern_file(good, kSize, seed);
  test::write_pattern_file(bad, kSize, seed);
  test::make_sparse_file(fresh, kSize);
  // bad.img behind nbdkit, every write (and zero, trim) failing with EIO once the trigger file exists.
  const std::string nbd_dir = make_dir(m, "nbd");
  const std::string failing = nbd_dir + "/leg";
  const std::string pidfile = m.file("nbdfuse.pid");
  nbdfuse = std::make_unique<FuseChild>(
      std::vector<std::string>{"nbdfuse", "-P", pidfile, failing, "--command", "nbdkit", "-s",
                               "--exit-with-parent", "--filter=error", "file", bad, "error=EIO",
                               "error-pwrite-rate=100%", "error-pwrite-file=" + trigger,
                               "error-zero-rate=100%", "error-zero-file=" + trigger, "error-trim-rate=100%",
                               "error-trim-file=" + trigger},
      nbd_dir, m.file("nbdfuse.log"),
      [&] { return test::file_size(pidfile) > 0 && test::path_exists(failing); });
  ASSERT_TRUE(nbdfuse->ready()) << nbdfuse->describe();
  ASSERT_EQ(test::file_size(failing), kSize);

  std::string model = pattern_bytes(seed, 0, kSize);
  ASSERT_TRUE(m.mirror_create("m", {good, failing}, {"--nosync"}).ok());
  {
    UniqueFd fd(::open(m.mirror_view("m").c_str(), O_RDWR | O_CLOEXEC));
    ASSERT_TRUE(fd.valid());
    for (int i = 0; i < 60; ++i) {
      if (i == 20) {
        ASSERT_TRUE(write_text(trigger, "on\n"));  // the leg fails from here on
      }
      const uint64_t len = 1 + rng() % (128 * kKiB);
      const uint64_t off = rng() % (kSize - len);
      const std::string data = pattern_bytes(seed + 1 + i, off, len);
      ASSERT_TRUE(pwrite_all(fd.get(), data, off))
          << "write " << i << " at " << off << ": " << std::strerror(errno);
      model.replace(off, len, data);
      ASSERT_EQ(::fsync(fd.get()), 0) << "fsync after write " << i << ": " << std::strerror(errno);
    }
    std::string got;
    ASSERT_TRUE(pread_all(fd.get(), got, 0, kSize));
    EXPECT_TRUE(got == model) << "the mirror's content differs from the model";
  }
  ASSERT_TRUE(test::read_all(good) == model) << "the good leg differs from the model";
  ASSERT_TRUE(m.wait_for_target(
      "m",
      [&](const nlohmann::json& t) {
        return t.is_object() && t.contains("legs") && t["legs"].size() == 2 &&
               t["legs"][1].value("health", "") == "D" && t["legs"][0].value("health", "") == "A";
      },
      10s))
      << m.target("m").dump();

  const CommandResult replace = m.verb({"mirror", "replace"}, {"m", failing, fresh});
  ASSERT_TRUE(replace.ok()) << replace;
  ASSERT_TRUE(m.wait_for_target("m", mirror_in_sync, 60s)) << m.target("m").dump();
  const nlohmann::json t = m.target("m");
  ASSERT_EQ(t["legs"].size(), 2u) << t.dump();
  EXPECT_EQ(t["legs"][1].value("device", ""), fresh) << t.dump();
  // The failing leg is free again: nbdfuse can go.
  EXPECT_TRUE(nbdfuse->stop()) << nbdfuse->describe();
  nbdfuse.reset();
  EXPECT_TRUE(test::read_all(m.mirror_view("m")) == model);
  const CommandResult umount = m.umount();
  ASSERT_TRUE(umount.ok()) << umount;
  EXPECT_TRUE(test::read_all(fresh) == model) << "the new leg differs from the model";
  EXPECT_TRUE(test::read_all(good) == model) << "the good leg differs from the model";
}

// ---------------------------------------------------------------------------------------------------------
// 6. fsx through every kind of view, buffered and O_DIRECT. A view's model is carried across other views'
// activity with --initial-model: a copy of what the view must still hold.

constexpr uint64_t kFsxSize = 16 * kMiB;

// Runs kcopyfs_fsx on view (seed printed); a failure is a test failure. Result: whether it passed.
bool run_fsx(const std::string& view, uint64_t seed, uint64_t ops, const std::vector<std::string>& options) {
  std::vector<std::string> args{KCOPYFS_FSX, "--ops", std::to_string(ops), "--seed", std::to_string(seed)};
  args.insert(args.end(), options.begin(), options.end());
  args.push_back(view);
  std::string line;
  for (const auto& a : args) line += (line.empty() ? "" : " ") + a;
  std::cout << line << std::endl;
  const CommandResult r = run_command(args, 100s);
  EXPECT_TRUE(r.ok()) << r;
  if (!r.ok()) return false;
  const std::string out = trim(r.out);
  const size_t last = out.rfind('\n');
  std::cout << "  " << out.substr(last == std::string::npos ? 0 : last + 1) << std::endl;
  return true;
}

// A mount with origin "o" (pattern content; a copy of it in origin.model) and a read-only snapshot "pit".
struct FsxSetup {
  KcopyfsMount m;
  uint64_t seed = base_seed() + 600;
  std::string origin = m.file("origin.img");
  std::string origin_model = m.file("origin.model");

  bool start() {
    std::cout << "seed " << seed << std::endl;
    if (!m.mount_result().ok()) {
      ADD_FAILURE() << m.mount_result();
      return false;
    }
    test::write_pattern_file(origin, kFsxSize, seed);
    if (!copy_file(origin, origin_model)) return false;
    const CommandResult add = m.origin_add("o", origin);
    const CommandResult snap = m.snapshot_create("o", "pit");
    EXPECT_TRUE(add.ok()) << add;
    EXPECT_TRUE(snap.ok()) << snap;
    return add.ok() && snap.ok();
  }
  // The point-in-time snapshot still holds the origin's first content.
  void check_point_in_time() { EXPECT_EQ(hex(sum(m.snapshot_view("pit"))), hex(sum(origin_model))); }
};

TEST(Scenario, FsxOnOrigin) {
  REQUIRE_ROOT_AND_TOOLS("fusermount3");
  FsxSetup f;
  ASSERT_TRUE(f.start());
  const std::string view = f.m.origin_view("o");
  ASSERT_TRUE(run_fsx(view, f.seed + 1, 3000, {"--initial-model", f.origin_model}));
  ASSERT_TRUE(run_fsx(view, f.seed + 2, 3000, {"--direct"}));
  ASSERT_TRUE(run_fsx(view, f.seed + 3, 3000, {"--direct", "--threads", "4"}));
  ASSERT_TRUE(run_fsx(view, f.seed + 4, 2000, {"--threads", "4", "--max-io", "64K"}));
  f.check_point_in_time();
  const CommandResult umount = f.m.umount();
  EXPECT_TRUE(umount.ok()) << umount;
}

TEST(Scenario, FsxOnReadOnlySnapshot) {
  REQUIRE_ROOT_AND_TOOLS("fusermount3");
  FsxSetup f;
  ASSERT_TRUE(f.start());
  // The origin changes first: the snapshot must not.
  ASSERT_TRUE(run_fsx(f.m.origin_view("o"), f.seed + 11, 1500, {}));
  ASSERT_NE(sum(f.m.origin_view("o")), sum(f.origin_model));
  const std::string view = f.m.snapshot_view("pit");
  ASSERT_TRUE(run_fsx(view, f.seed + 12, 3000, {"--read-only", "--initial-model", f.origin_model}));
  ASSERT_TRUE(
      run_fsx(view, f.seed + 13, 3000, {"--read-only", "--direct", "--initial-model", f.origin_model}));
  ASSERT_TRUE(
      run_fsx(view, f.seed + 14, 2000, {"--read-only", "--threads", "4", "--initial-model", f.origin_model}));
  const CommandResult umount = f.m.umount();
  EXPECT_TRUE(umount.ok()) << umount;
}

TEST(Scenario, FsxOnWritableSnapshot) {
  REQUIRE_ROOT_AND_TOOLS("fusermount3");
  FsxSetup f;
  ASSERT_TRUE(f.start());
  ASSERT_TRUE(f.m.snapshot_create("o", "rw", {"--writable"}).ok());
  const std::string view = f.m.snapshot_view("rw"), rw_model = f.m.file("rw.model");
  ASSERT_TRUE(run_fsx(view, f.seed + 21, 3000, {"--initial-model", f.origin_model}));
  // Writes to the origin in between leave the writable snapshot as it was.
  ASSERT_TRUE(copy_file(view, rw_model));
  ASSERT_TRUE(run_fsx(f.m.origin_view("o"), f.seed + 22, 1500, {}));
  ASSERT_TRUE(run_fsx(view, f.seed + 23, 3000, {"--direct", "--initial-model", rw_model}));
  ASSERT_TRUE(run_fsx(view, f.seed + 24, 2000, {"--direct", "--threads", "4"}));
  f.check_point_in_time();
  const CommandResult umount = f.m.umount();
  EXPECT_TRUE(umount.ok()) << umount;
}

TEST(Scenario, FsxOnMirror) {
  REQUIRE_ROOT_AND_TOOLS("fusermount3");
  FsxSetup f;
  ASSERT_TRUE(f.start());
  const std::string leg0 = f.m.file("leg0.img"), leg1 = f.m.file("leg1.img"),
                    leg0_model = f.m.file("leg0.model");
  test::write_pattern_file(leg0, kFsxSize, f.seed + 30);
  test::make_sparse_file(leg1, kFsxSize);
  ASSERT_TRUE(copy_file(leg0, leg0_model));
  ASSERT_TRUE(f.m.mirror_create("m", {leg0, leg1}).ok());  // fsx starts while leg 1 resyncs
  const std::string view = f.m.mirror_view("m");
  ASSERT_TRUE(run_fsx(view, f.seed + 31, 3000, {"--initial-model", leg0_model}));
  ASSERT_TRUE(run_fsx(view, f.seed + 32, 3000, {"--direct"}));
  ASSERT_TRUE(run_fsx(view, f.seed + 33, 2000, {"--threads", "4"}));
  ASSERT_TRUE(f.m.wait_for_target("m", mirror_in_sync, 60s)) << f.m.target("m").dump();
  const uint64_t mirror_sum = sum(view);
  const CommandResult umount = f.m.umount();
  ASSERT_TRUE(umount.ok()) << umount;
  EXPECT_EQ(hex(sum(leg0)), hex(mirror_sum));
  EXPECT_EQ(hex(sum(leg1)), hex(mirror_sum));
}

}  // namespace
}  // namespace kcopyfs
