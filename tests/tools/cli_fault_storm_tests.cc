// Fault storms through the mount (reliability issue, "fault storms"): devices behind nbdkit's error filter
// (intermittent: a rate of the requests fail with EIO or ENOSPC while a trigger file exists) and its delay
// filter, served as files by nbdfuse, under random O_DIRECT writes, fsyncs and reads through the views,
// checked against a model.
//   1. A mirror whose second leg storms: every write, fsync and read through the view succeeds and reads the
//      model; the good leg holds every fsync'd write; the daemon stays up; `status --json` and the text
//      status show the leg's health (not A) and the good leg A; once the storm stops, `mirror replace` of the
//      bad leg gives an in-sync mirror of A legs whose every leg is the model.
//   2. A mirror leg behind the delay filter only: slower, nothing else (both legs A, in sync, the model).
//   3. A snapshot whose COW device storms, next to one on a healthy COW: every origin write and fsync
//      succeeds and the origin reads the model; the healthy snapshot reads its image exactly; the stormy one
//      reads its image or fails with EIO, and once invalid, `status` says "invalid" / "Invalid" and every
//      read fails.
// Every wait is bounded; the kcopyfs mount is torn down before nbdfuse (it holds the nbdfuse file open). Runs
// as root with nbdkit and nbdfuse (it skips, saying which is missing, otherwise). Seeds are printed;
// KCOPYFS_STORM_SEED=N repeats one.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "tests/tools/mount_fixture.h"

namespace kcopyfs::test {
namespace {

using namespace std::chrono_literals;

constexpr uint64_t kMiB = 1024 * 1024;
constexpr uint64_t kBlock = 4096;

// The test's seed (printed, so that a failure can be repeated).
uint64_t storm_seed(uint64_t salt) {
  uint64_t seed =
      static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count()) % 1000000 +
      salt * 1000000;
  if (const char* s = std::getenv("KCOPYFS_STORM_SEED"); s != nullptr && *s != '\0')
    seed = static_cast<uint64_t>(std::strtoull(s, nullptr, 0));
  std::cout << "seed " << seed << " (KCOPYFS_STORM_SEED=" << seed << ")" << std::endl;
  return seed;
}

bool have_tool(const std::string& name) {
  for (const char* dir : {"/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/bin", "/usr/local/sbin"}) {
    if (::access((std::string(dir) + "/" + name).c_str(), X_OK) == 0) return true;
  }
  return false;
}

#define REQUIRE_ROOT_AND_NBD()                                                                            \
  do {                                                                                                    \
    if (!running_as_root()) GTEST_SKIP() << "needs root (FUSE mounts)";                                   \
    for (const char* tool_ : {"nbdkit", "nbdfuse", "fusermount3"}) {                                      \
      if (!have_tool(tool_)) GTEST_SKIP() << "needs " << tool_ << " (not installed; tools/lib/setup.sh)"; \
    }                                                                                                     \
  } while (0)

// A page-aligned buffer for O_DIRECT.
struct Aligned {
  explicit Aligned(size_t n) : size(n), p(static_cast<char*>(std::aligned_alloc(kBlock, n))) {}
  ~Aligned() { std::free(p); }
  Aligned(const Aligned&) = delete;
  Aligned& operator=(const Aligned&) = delete;
  size_t size;
  char* p;
};

std::string bytes_of(uint64_t seed, uint64_t offset, uint64_t length) {
  const auto b = pattern(seed, offset, length);
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

// pwrite/pread of exactly len bytes at off (O_DIRECT: aligned). Result: 0 or the errno.
int pwrite_full(int fd, const char* p, uint64_t len, uint64_t off) {
  uint64_t done = 0;
  while (done < len) {
    const ssize_t n = ::pwrite(fd, p + done, len - done, static_cast<off_t>(off + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return n < 0 ? errno : EIO;
    done += static_cast<uint64_t>(n);
  }
  return 0;
}
int pread_full(int fd, char* p, uint64_t len, uint64_t off) {
  uint64_t done = 0;
  while (done < len) {
    const ssize_t n = ::pread(fd, p + done, len - done, static_cast<off_t>(off + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return n < 0 ? errno : EIO;
    done += static_cast<uint64_t>(n);
  }
  return 0;
}

bool write_text(const std::string& path, const std::string& text) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  return fd.valid() && ::write(fd.get(), text.data(), text.size()) == static_cast<ssize_t>(text.size());
}

// An image file behind `nbdkit FILTERS... file IMAGE PARAMS...`, served by nbdfuse as DIR/dev. The error
// filter's requests fail only while `trigger` exists (storm_on/storm_off). stop() (or the destructor)
// unmounts it with fusermount3 and reaps nbdfuse, bounded; it must run after whatever holds the file open.
class NbdDevice {
 public:
  NbdDevice(const std::string& dir, const std::string& image, const std::vector<std::string>& nbdkit_args,
            const std::string& trigger)
      : dir_(dir), trigger_(trigger), log_(dir + ".log") {
    ::mkdir(dir_.c_str(), 0755);
    std::vector<std::string> args{"nbdfuse",   "-P",     dir_ + ".pid", path(),
                                  "--command", "nbdkit", "-s",          "--exit-with-parent"};
    // nbdkit [--filter=...]... PLUGIN [KEY=VALUE]...: the filters before the plugin, their keys after.
    for (const auto& a : nbdkit_args)
      if (a.rfind("--", 0) == 0) args.push_back(a);
    args.push_back("file");
    args.push_back(image);
    for (const auto& a : nbdkit_args)
      if (a.rfind("--", 0) != 0) args.push_back(a);
    UniqueFd log_fd(::open(log_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
    for (const auto& a : args) command_ += (command_.empty() ? "" : " ") + a;
    if (!log_fd.valid() || spawn_program(args, log_fd.get(), log_fd.get(), &pid_) != 0) {
      pid_ = -1;
      return;
    }
    ready_ = wait_until([&] { return (file_size(dir_ + ".pid") > 0 && path_exists(path())) || !running(); },
                        30s) &&
             running() && file_size(path()) == file_size(image);
  }
  ~NbdDevice() { stop(); }
  NbdDevice(const NbdDevice&) = delete;
  NbdDevice& operator=(const NbdDevice&) = delete;

  bool ready() const { return ready_; }
  std::string path() const { return dir_ + "/dev"; }
  std::string describe() const { return "`" + command_ + "`: " + read_all(log_); }
  bool storm_on() { return write_text(trigger_, "on\n"); }
  void storm_off() { ::unlink(trigger_.c_str()); }

  // Result: whether it unmounted and nbdfuse exited 0 in time.
  bool stop() {
    if (pid_ <= 0) return true;
    bool ok = true;
    if (is_mounted(dir_)) {
      const CommandResult r = run_command({"fusermount3", "-u", dir_}, 30s);
      if (!r.ok()) {
        std::cerr << "cli_fault_storm_tests: " << r.describe() << "\n";
        ok = false;
        run_command({"fusermount3", "-u", "-z", dir_}, 30s);
      }
    }
    int status = 0;
    const bool exited = wait_until(
        [&] {
          const pid_t w = ::waitpid(pid_, &status, WNOHANG);
          return w == pid_ || (w < 0 && errno != EINTR);
        },
        30s);
    if (!exited) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &status, 0);
      ok = false;
    } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      ok = false;
    }
    pid_ = -1;
    return ok;
  }

 private:
  bool running() {
    if (pid_ <= 0) return false;
    int status = 0;
    return ::waitpid(pid_, &status, WNOHANG) == 0;
  }

  std::string dir_, trigger_, log_, command_;
  pid_t pid_ = -1;
  bool ready_ = false;
};

// At scope exit, also on failure: the kcopyfs mount goes first, then nbdfuse (the daemon holds its file
// open).
struct Teardown {
  KcopyfsMount& m;
  std::unique_ptr<NbdDevice>& nbd;
  ~Teardown() {
    m.cleanup();
    nbd.reset();
  }
};

// The error filter failing `rate` of reads with EIO and of writes (and zeroes) with ENOSPC while trigger
// exists, and the delay filter adding latency to every read and write.
std::vector<std::string> storm_filters(const std::string& trigger, const std::string& rate) {
  return {"--filter=error",
          "--filter=delay",
          "error-pread=EIO",
          "error-pread-rate=" + rate,
          "error-pread-file=" + trigger,
          "error-pwrite=ENOSPC",
          "error-pwrite-rate=" + rate,
          "error-pwrite-file=" + trigger,
          "error-zero=ENOSPC",
          "error-zero-rate=" + rate,
          "error-zero-file=" + trigger,
          "delay-read=1ms",
          "delay-write=2ms"};
}

std::string health_of(const nlohmann::json& t) {
  std::string h;
  if (t.is_object() && t.contains("legs"))
    for (const auto& l : t["legs"]) h += l.value("health", "?");
  return h;
}

// The text status line of target name.
std::string text_line(const KcopyfsMount& m, const std::string& name) {
  const CommandResult r = m.verb({"status"});
  std::istringstream in(r.out);
  for (std::string line; std::getline(in, line);)
    if (line.rfind(name + " ", 0) == 0) return line;
  return "<no status line for " + name + ">: " + r.describe();
}

bool daemon_up(const KcopyfsMount& m) { return process_alive(m.daemon_pid()) && m.mounted(); }

// ---------------------------------------------------------------------------------------------------------

TEST(FaultStorm, MirrorLegStormsThenIsReplaced) {
  REQUIRE_ROOT_AND_NBD();
  constexpr uint64_t kSize = 8 * kMiB;
  const uint64_t seed = storm_seed(1);
  std::mt19937_64 rng(seed);
  KcopyfsMount m;
  ASSERT_TRUE(m.mount_result().ok()) << m.mount_result();
  const std::string good = m.file("good.img"), bad = m.file("bad.img"), fresh = m.file("new.img");
  const std::string trigger = m.file("storm");
  write_pattern_file(good, kSize, seed);
  write_pattern_file(bad, kSize, seed);
  make_sparse_file(fresh, kSize);
  // Declared after the mount, so it would be destroyed first; `teardown` puts the kcopyfs cleanup first.
  auto nbd = std::make_unique<NbdDevice>(m.file("nbd"), bad, storm_filters(trigger, "20%"), trigger);
  Teardown teardown{m, nbd};
  ASSERT_TRUE(nbd->ready()) << nbd->describe();

  std::string model = bytes_of(seed, 0, kSize);
  const CommandResult create =
      m.mirror_create("m", {good, nbd->path()}, {"--nosync", "--region-size", "64K"});
  ASSERT_TRUE(create.ok()) << create;
  ASSERT_TRUE(nbd->storm_on());
  int writes = 0, reads = 0, fsyncs = 0;
  {
    UniqueFd fd(::open(m.mirror_view("m").c_str(), O_RDWR | O_DIRECT | O_CLOEXEC));
    ASSERT_TRUE(fd.valid()) << std::strerror(errno);
    Aligned buf(128 * 1024);
    for (int i = 0; i < 150; ++i) {
      const uint64_t len = (1 + rng() % 32) * kBlock;
      const uint64_t off = (rng() % ((kSize - len) / kBlock + 1)) * kBlock;
      if (rng() % 2 == 0) {
        const std::string d = bytes_of(rng(), 0, len);
        std::memcpy(buf.p, d.data(), len);
        const int e = pwrite_full(fd.get(), buf.p, len, off);
        ASSERT_EQ(e, 0) << "write " << i << " at " << off << ": " << std::strerror(e);
        ++writes;
        model.replace(off, len, d);
        if (rng() % 4 == 0) {
          ASSERT_EQ(::fsync(fd.get()), 0) << "fsync after write " << i << ": " << std::strerror(errno);
          ++fsyncs;
        }
      } else {
        const int e = pread_full(fd.get(), buf.p, len, off);
        ASSERT_EQ(e, 0) << "read " << i << " at " << off << ": " << std::strerror(e);
        ++reads;
        ASSERT_EQ(std::memcmp(buf.p, model.data() + off, len), 0)
            << "read " << i << " at " << off << " is wrong";
      }
    }
    ASSERT_EQ(::fsync(fd.get()), 0) << std::strerror(errno);
  }
  std::cout << "mirror storm: " << writes << " writes, " << reads << " reads, " << fsyncs + 1 << " fsyncs"
            << std::endl;
  ASSERT_TRUE(daemon_up(m)) << "the daemon died in the storm";
  EXPECT_TRUE(read_all(good) == model) << "the good leg lacks fsync'd writes";
  // The status names the stormy leg (a write or flush failure: D or F; a read failure only: R).
  nlohmann::json t = m.target("m");
  std::cout << "status: " << t.dump() << "\n" << text_line(m, "m") << std::endl;
  ASSERT_TRUE(t.is_object() && t.contains("legs") && t["legs"].size() == 2) << t.dump();
  EXPECT_EQ(t["legs"][0].value("health", ""), "A") << t.dump();
  EXPECT_EQ(t["legs"][0].value("device", ""), good) << t.dump();
  EXPECT_EQ(t["legs"][1].value("device", ""), nbd->path()) << t.dump();
  const std::string h1 = t["legs"][1].value("health", "");
  EXPECT_TRUE(h1 == "D" || h1 == "F" || h1 == "R" || h1 == "S") << "the stormy leg shows " << h1;
  // The dm field, in the JSON and the text line, carries the same health letters.
  const std::string health = " 1 " + health_of(t) + " ";
  EXPECT_NE(t.value("dm_status", "").find(health), std::string::npos) << t.dump();
  EXPECT_NE(text_line(m, "m").find(health), std::string::npos) << text_line(m, "m");

  // The storm stops; the bad leg is replaced and the mirror resyncs.
  nbd->storm_off();
  const CommandResult replace = m.verb({"mirror", "replace"}, {"m", nbd->path(), fresh});
  ASSERT_TRUE(replace.ok()) << replace;
  ASSERT_TRUE(m.wait_for_target(
      "m",
      [](const nlohmann::json& x) {
        return health_of(x) == "AA" && x.value("regions_in_sync", -1) == x.value("regions_total", -2);
      },
      60s))
      << m.target("m").dump();
  t = m.target("m");
  EXPECT_EQ(t["legs"][1].value("device", ""), fresh) << t.dump();
  EXPECT_NE(text_line(m, "m").find(" 1 AA "), std::string::npos) << text_line(m, "m");
  // The stormy leg is free: nbdfuse can go.
  EXPECT_TRUE(nbd->stop()) << nbd->describe();
  EXPECT_TRUE(read_all(m.mirror_view("m")) == model) << "the mirror differs from the model";
  const CommandResult umount = m.umount();
  ASSERT_TRUE(umount.ok()) << umount;
  EXPECT_TRUE(read_all(good) == model) << "the good leg differs from the model";
  EXPECT_TRUE(read_all(fresh) == model) << "the new leg differs from the model";
}

// A leg behind the delay filter only (every read 3 ms, every write 5 ms): a latency storm only slows the
// mirror down: every operation succeeds, both legs stay A and in sync, and hold the model.
TEST(FaultStorm, MirrorLegLatencyOnlySlowsDown) {
  REQUIRE_ROOT_AND_NBD();
  constexpr uint64_t kSize = 4 * kMiB;
  const uint64_t seed = storm_seed(3);
  std::mt19937_64 rng(seed);
  KcopyfsMount m;
  ASSERT_TRUE(m.mount_result().ok()) << m.mount_result();
  const std::string good = m.file("good.img"), slow = m.file("slow.img");
  write_pattern_file(good, kSize, seed);
  write_pattern_file(slow, kSize, seed);
  auto nbd = std::make_unique<NbdDevice>(
      m.file("nbd"), slow, std::vector<std::string>{"--filter=delay", "delay-read=3ms", "delay-write=5ms"},
      m.file("unused-trigger"));
  Teardown teardown{m, nbd};
  ASSERT_TRUE(nbd->ready()) << nbd->describe();
  std::string model = bytes_of(seed, 0, kSize);
  const CommandResult create =
      m.mirror_create("m", {good, nbd->path()}, {"--nosync", "--region-size", "64K"});
  ASSERT_TRUE(create.ok()) << create;
  {
    UniqueFd fd(::open(m.mirror_view("m").c_str(), O_RDWR | O_DIRECT | O_CLOEXEC));
    ASSERT_TRUE(fd.valid()) << std::strerror(errno);
    Aligned buf(64 * 1024);
    for (int i = 0; i < 80; ++i) {
      const uint64_t len = (1 + rng() % 16) * kBlock;
      const uint64_t off = (rng() % ((kSize - len) / kBlock + 1)) * kBlock;
      if (rng() % 2 == 0) {
        const std::string d = bytes_of(rng(), 0, len);
        std::memcpy(buf.p, d.data(), len);
        const int e = pwrite_full(fd.get(), buf.p, len, off);
        ASSERT_EQ(e, 0) << "write " << i << ": " << std::strerror(e);
        model.replace(off, len, d);
        if (rng() % 4 == 0) {
          ASSERT_EQ(::fsync(fd.get()), 0) << std::strerror(errno);
        }
      } else {
        const int e = pread_full(fd.get(), buf.p, len, off);
        ASSERT_EQ(e, 0) << "read " << i << ": " << std::strerror(e);
        ASSERT_EQ(std::memcmp(buf.p, model.data() + off, len), 0) << "read " << i << " is wrong";
      }
    }
    ASSERT_EQ(::fsync(fd.get()), 0) << std::strerror(errno);
  }
  const nlohmann::json t = m.target("m");
  EXPECT_EQ(health_of(t), "AA") << t.dump();
  EXPECT_EQ(t.value("regions_in_sync", -1), t.value("regions_total", -2)) << t.dump();
  const CommandResult umount = m.umount();
  ASSERT_TRUE(umount.ok()) << umount;
  EXPECT_TRUE(nbd->stop()) << nbd->describe();
  EXPECT_TRUE(read_all(good) == model) << "the good leg differs from the model";
  EXPECT_TRUE(read_all(slow) == model) << "the slow leg differs from the model";
}

TEST(FaultStorm, SnapshotCowStormsOriginGoesOn) {
  REQUIRE_ROOT_AND_NBD();
  constexpr uint64_t kSize = 8 * kMiB;
  const uint64_t seed = storm_seed(2);
  std::mt19937_64 rng(seed);
  KcopyfsMount m;
  ASSERT_TRUE(m.mount_result().ok()) << m.mount_result();
  const std::string origin = m.file("origin.img"), cow = m.file("cow.img"), trigger = m.file("storm");
  write_pattern_file(origin, kSize, seed);
  make_sparse_file(cow, kSize + 2 * kMiB);  // never overflows: the origin's chunks and their metadata
  auto nbd = std::make_unique<NbdDevice>(m.file("nbd"), cow, storm_filters(trigger, "25%"), trigger);
  Teardown teardown{m, nbd};
  ASSERT_TRUE(nbd->ready()) << nbd->describe();

  ASSERT_TRUE(m.origin_add("o", origin).ok());
  const CommandResult healthy = m.snapshot_create("o", "healthy");
  ASSERT_TRUE(healthy.ok()) << healthy;
  const CommandResult stormy = m.snapshot_create("o", "stormy", {"--cow", nbd->path()});
  ASSERT_TRUE(stormy.ok()) << stormy;
  const std::string image = bytes_of(seed, 0, kSize);
  std::string model = image;
  ASSERT_TRUE(nbd->storm_on());
  int writes = 0, reads = 0, snap_reads = 0, snap_eio = 0;
  {
    UniqueFd fd(::open(m.origin_view("o").c_str(), O_RDWR | O_DIRECT | O_CLOEXEC));
    UniqueFd good_fd(::open(m.snapshot_view("healthy").c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC));
    UniqueFd bad_fd(::open(m.snapshot_view("stormy").c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC));
    ASSERT_TRUE(fd.valid() && good_fd.valid() && bad_fd.valid()) << std::strerror(errno);
    Aligned buf(64 * 1024);
    for (int i = 0; i < 150; ++i) {
      const uint64_t len = (1 + rng() % 16) * kBlock;
      const uint64_t off = (rng() % ((kSize - len) / kBlock + 1)) * kBlock;
      const unsigned kind = static_cast<unsigned>(rng() % 4);
      if (kind == 0 || kind == 1) {
        const std::string d = bytes_of(rng(), 0, len);
        std::memcpy(buf.p, d.data(), len);
        const int e = pwrite_full(fd.get(), buf.p, len, off);
        ASSERT_EQ(e, 0) << "origin write " << i << " at " << off << ": " << std::strerror(e);
        ++writes;
        model.replace(off, len, d);
        if (kind == 1) {
          ASSERT_EQ(::fsync(fd.get()), 0) << "fsync after origin write " << i << ": " << std::strerror(errno);
        }
      } else if (kind == 2) {
        const int e = pread_full(fd.get(), buf.p, len, off);
        ASSERT_EQ(e, 0) << "origin read " << i << ": " << std::strerror(e);
        ++reads;
        ASSERT_EQ(std::memcmp(buf.p, model.data() + off, len), 0) << "origin read " << i << " is wrong";
      } else {
        int e = pread_full(good_fd.get(), buf.p, len, off);
        ASSERT_EQ(e, 0) << "read of the healthy snapshot: " << std::strerror(e);
        ASSERT_EQ(std::memcmp(buf.p, image.data() + off, len), 0)
            << "the healthy snapshot is wrong at " << off;
        e = pread_full(bad_fd.get(), buf.p, len, off);
        snap_reads += 2;
        if (e != 0) {
          EXPECT_EQ(e, EIO) << std::strerror(e);
          ++snap_eio;
        } else {
          ASSERT_EQ(std::memcmp(buf.p, image.data() + off, len), 0)
              << "the stormy snapshot is wrong at " << off;
        }
      }
    }
    // Writes acknowledged by write-back may still be copying into the COWs: the status below is final once
    // they have landed.
    ASSERT_EQ(::fsync(fd.get()), 0) << std::strerror(errno);
  }
  std::cout << "snapshot storm: " << writes << " origin writes, " << reads << " origin reads, " << snap_reads
            << " snapshot reads (" << snap_eio << " EIO)" << std::endl;
  ASSERT_TRUE(daemon_up(m)) << "the daemon died in the storm";
  const nlohmann::json s = m.target("stormy");
  std::cout << "status: " << s.dump() << "\n" << text_line(m, "stormy") << std::endl;
  EXPECT_EQ(s.value("state", ""), "invalid") << s.dump();
  EXPECT_EQ(s.value("dm_status", ""), "Invalid") << s.dump();
  // The storm fails the copy of a chunk or the metadata write that records it, whichever comes first.
  const std::string reason = s.value("reason", "");
  EXPECT_TRUE(reason == "copying a chunk to the COW device failed" ||
              reason == "recording an exception on the COW device failed")
      << s.dump();
  EXPECT_NE(text_line(m, "stormy").find(" Invalid"), std::string::npos) << text_line(m, "stormy");
  const nlohmann::json h = m.target("healthy");
  EXPECT_EQ(h.value("state", ""), "active") << h.dump();
  nbd->storm_off();
  {
    // Invalid for good: every read fails, storm or not.
    UniqueFd bad_fd(::open(m.snapshot_view("stormy").c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC));
    ASSERT_TRUE(bad_fd.valid());
    Aligned buf(kBlock);
    EXPECT_EQ(pread_full(bad_fd.get(), buf.p, kBlock, 0), EIO);
  }
  EXPECT_TRUE(read_all(m.snapshot_view("healthy")) == image) << "the healthy snapshot differs from its image";
  EXPECT_TRUE(read_all(m.origin_view("o")) == model) << "the origin differs from the model";
  const CommandResult remove = m.remove("stormy");
  EXPECT_TRUE(remove.ok()) << remove;
  EXPECT_TRUE(nbd->stop()) << nbd->describe();
  const CommandResult umount = m.umount();
  ASSERT_TRUE(umount.ok()) << umount;
  EXPECT_TRUE(read_all(origin) == model) << "the origin device differs from the model";
}

// Every write to the COW fails, the one that would mark its header invalid too: the daemon keeps the
// invalidation in STATE/NAME.invalid before the origin write goes on, and a remount (the COW healthy again)
// attaches the snapshot as invalid and writes its header at last. Without the mark it would come back valid,
// missing the chunk the origin has since overwritten.
TEST(FaultStorm, InvalidationOutlivesAFailedHeaderWrite) {
  REQUIRE_ROOT_AND_NBD();
  constexpr uint64_t kSize = 4 * kMiB;
  const uint64_t seed = storm_seed(4);
  KcopyfsMount m;
  ASSERT_TRUE(m.mount_result().ok()) << m.mount_result();
  const std::string origin = m.file("origin.img"), cow = m.file("cow.img"), trigger = m.file("storm");
  write_pattern_file(origin, kSize, seed);
  make_sparse_file(cow, kSize + 2 * kMiB);
  auto nbd = std::make_unique<NbdDevice>(m.file("nbd"), cow, storm_filters(trigger, "100%"), trigger);
  Teardown teardown{m, nbd};
  ASSERT_TRUE(nbd->ready()) << nbd->describe();
  ASSERT_TRUE(m.origin_add("o", origin).ok());
  const CommandResult create = m.snapshot_create("o", "dead", {"--cow", nbd->path()});
  ASSERT_TRUE(create.ok()) << create;

  ASSERT_TRUE(nbd->storm_on());
  const std::string data = bytes_of(seed + 1, 0, kBlock);
  {
    UniqueFd fd(::open(m.origin_view("o").c_str(), O_RDWR | O_DIRECT | O_CLOEXEC));
    ASSERT_TRUE(fd.valid()) << std::strerror(errno);
    Aligned buf(kBlock);
    std::memcpy(buf.p, data.data(), kBlock);
    ASSERT_EQ(pwrite_full(fd.get(), buf.p, kBlock, 0), 0);
    ASSERT_EQ(::fsync(fd.get()), 0) << std::strerror(errno);
  }
  EXPECT_EQ(m.target("dead").value("state", ""), "invalid");
  EXPECT_TRUE(path_exists(m.state_dir() + "/dead.invalid")) << "the failed header write left no mark";
  nbd->storm_off();

  const CommandResult umount = m.umount();
  ASSERT_TRUE(umount.ok()) << umount;
  const CommandResult mount = m.mount();
  ASSERT_TRUE(mount.ok()) << mount;
  const nlohmann::json t = m.target("dead");
  EXPECT_EQ(t.value("state", ""), "invalid") << t.dump();
  EXPECT_EQ(t.value("dm_status", ""), "Invalid") << t.dump();
  EXPECT_NE(t.value("reason", "").find("its COW header could not record it"), std::string::npos) << t.dump();
  {
    UniqueFd fd(::open(m.snapshot_view("dead").c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC));
    ASSERT_TRUE(fd.valid()) << std::strerror(errno);
    Aligned buf(kBlock);
    EXPECT_EQ(pread_full(fd.get(), buf.p, kBlock, 0), EIO) << "an invalid snapshot read its old chunk";
  }
  const CommandResult remove = m.remove("dead");
  EXPECT_TRUE(remove.ok()) << remove;
  EXPECT_FALSE(path_exists(m.state_dir() + "/dead.invalid")) << "remove left the mark";
  // The header was written at the remount: the COW is invalid on its own now (kernel-readable).
  EXPECT_EQ(read_all(cow).substr(4, 4), std::string(4, '\0')) << "the header still says valid";
  EXPECT_TRUE(nbd->stop()) << nbd->describe();
  const CommandResult last = m.umount();
  EXPECT_TRUE(last.ok()) << last;
  std::string want = bytes_of(seed, 0, kSize);
  want.replace(0, kBlock, data);
  EXPECT_TRUE(read_all(origin) == want) << "the origin lost its write";
}

// An origin write acknowledged by write-back (it waits for copy-on-write) whose write to the origin device
// then fails: the next fsync fails with EIO, the daemon's log names the write, the snapshot keeps its image,
// and the origin keeps its old data (the write was lost whole, as a disk cache's would be).
TEST(FaultStorm, AnAcknowledgedOriginWriteThatFailsToLandFailsFsyncAndIsLogged) {
  REQUIRE_ROOT_AND_NBD();
  constexpr uint64_t kSize = 4 * kMiB;
  const uint64_t seed = storm_seed(5);
  KcopyfsMount m;
  ASSERT_TRUE(m.mount_result().ok()) << m.mount_result();
  const std::string origin = m.file("origin.img"), trigger = m.file("storm");
  write_pattern_file(origin, kSize, seed);
  const std::vector<std::string> fail_writes = {"--filter=error", "error-pwrite=EIO",
                                                "error-pwrite-rate=100%", "error-pwrite-file=" + trigger};
  auto nbd = std::make_unique<NbdDevice>(m.file("nbd"), origin, fail_writes, trigger);
  Teardown teardown{m, nbd};
  ASSERT_TRUE(nbd->ready()) << nbd->describe();
  ASSERT_TRUE(m.origin_add("o", nbd->path()).ok());
  const CommandResult create = m.snapshot_create("o", "s");
  ASSERT_TRUE(create.ok()) << create;
  const std::string image = bytes_of(seed, 0, kSize);

  ASSERT_TRUE(nbd->storm_on());
  {
    UniqueFd fd(::open(m.origin_view("o").c_str(), O_RDWR | O_DIRECT | O_CLOEXEC));
    ASSERT_TRUE(fd.valid()) << std::strerror(errno);
    Aligned buf(kBlock);
    std::memcpy(buf.p, bytes_of(seed + 1, 0, kBlock).data(), kBlock);
    ASSERT_EQ(pwrite_full(fd.get(), buf.p, kBlock, 3 * kBlock), 0) << "write-back acknowledges the write";
    EXPECT_EQ(::fsync(fd.get()), -1) << "fsync hid a write that never reached the device";
    EXPECT_EQ(errno, EIO) << std::strerror(errno);
    nbd->storm_off();
    EXPECT_EQ(::fsync(fd.get()), 0) << "the failure is reported once: " << std::strerror(errno);
    ASSERT_EQ(pread_full(fd.get(), buf.p, kBlock, 3 * kBlock), 0);
    EXPECT_EQ(std::memcmp(buf.p, image.data() + 3 * kBlock, kBlock), 0)
        << "the lost write left a part behind";
  }
  const std::string log = read_all(m.state_dir() + "/kcopyfs.log");
  EXPECT_NE(log.find("origin o: a write of 4096 bytes at byte 12288, already acknowledged, failed to reach " +
                     nbd->path()),
            std::string::npos)
      << log;
  EXPECT_TRUE(read_all(m.snapshot_view("s")) == image) << "the snapshot lost its image";
  EXPECT_EQ(m.target("s").value("state", ""), "active");
}

}  // namespace
}  // namespace kcopyfs::test
