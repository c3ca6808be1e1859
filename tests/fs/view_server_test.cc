// ViewServer through a real FUSE mount in the test process: the test does ordinary file I/O on
// MOUNTPOINT/<dir>/<name> while the server's threads answer it.
#include "fs/view_server.h"

#include <fcntl.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <set>
#include <thread>

#include "engine/fault_device.h"
#include "engine/unique_fd.h"
#include "tests/fs/fs_test_util.h"
#include "tests/support/test_support.h"

namespace kcopyfs::fs {
namespace {

using kcopyfs::test::pattern;
using kcopyfs::test::read_file;
using kcopyfs::test::TempDir;
using kcopyfs::test::write_pattern_file;
using test::open_image;

constexpr uint64_t kSize = 8 << 20;

bool is_mounted(const std::string& mountpoint) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string id, parent, devno, root, point;
    fields >> id >> parent >> devno >> root >> point;
    if (point == mountpoint) return true;
  }
  return false;
}

std::set<std::string> list_dir(const std::string& path) {
  std::set<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(path)) names.insert(e.path().filename().string());
  return names;
}

// Aligned memory for O_DIRECT.
struct DirectBuffer {
  explicit DirectBuffer(size_t n) : size(n) {
    if (posix_memalign(&p, 4096, n) != 0) throw std::bad_alloc();
  }
  ~DirectBuffer() { std::free(p); }
  std::byte* data() const { return static_cast<std::byte*>(p); }
  void* p = nullptr;
  size_t size;
};

ssize_t pwrite_all(int fd, const void* data, size_t len, uint64_t off) {
  return ::pwrite(fd, data, len, static_cast<off_t>(off));
}

class ViewServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::access("/dev/fuse", R_OK | W_OK) != 0) GTEST_SKIP() << "/dev/fuse is not usable";
    mountpoint_ = dir_.file("mnt");
    ASSERT_EQ(::mkdir(mountpoint_.c_str(), 0700), 0);
    MountOptions options;
    options.mountpoint = mountpoint_;
    options.on_unmounted = [this] { unmounted_callbacks_++; };
    auto server = ViewServer::mount(options);
    ASSERT_TRUE(server.ok()) << server.error().message();
    server_ = std::move(server).value();
    ASSERT_TRUE(is_mounted(mountpoint_));
  }

  void TearDown() override {
    if (!server_) return;
    server_.reset();
    // RAII: destroying the server leaves no mount behind, whatever the test did.
    EXPECT_FALSE(is_mounted(mountpoint_));
  }

  // An image of kSize bytes with pattern(seed) shown as DIR/name.
  std::string add_image(VolumeKind kind, const std::string& name, uint64_t seed, ViewOptions options = {},
                        uint64_t size = kSize) {
    const std::string image = dir_.file(name + ".img");
    write_pattern_file(image, size, seed);
    auto status = server_->add_volume(kind, name, open_image(image), options);
    EXPECT_TRUE(status.ok()) << status.error().message();
    return image;
  }
  std::string view(VolumeKind kind, const std::string& name) const {
    return mountpoint_ + "/" + directory_name(kind) + "/" + name;
  }

  TempDir dir_;
  std::string mountpoint_;
  std::unique_ptr<ViewServer> server_;
  std::atomic<int> unmounted_callbacks_{0};
};

TEST_F(ViewServerTest, LayoutAttributesAndStatfs) {
  EXPECT_EQ(list_dir(mountpoint_), (std::set<std::string>{"origins", "snapshots", "mirrors"}));
  EXPECT_TRUE(list_dir(mountpoint_ + "/origins").empty());
  add_image(VolumeKind::origin, "data", 1);
  add_image(VolumeKind::snapshot, "s1", 1, {.read_only = true, .cache = CacheMode::keep_cache});
  EXPECT_EQ(list_dir(mountpoint_ + "/origins"), std::set<std::string>{"data"});
  EXPECT_EQ(list_dir(mountpoint_ + "/snapshots"), std::set<std::string>{"s1"});
  EXPECT_TRUE(list_dir(mountpoint_ + "/mirrors").empty());
  struct stat st {};
  ASSERT_EQ(::stat(view(VolumeKind::origin, "data").c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(st.st_size, static_cast<off_t>(kSize));
  EXPECT_EQ(st.st_uid, ::getuid());
  EXPECT_EQ(st.st_gid, ::getgid());
  ASSERT_EQ(::stat(view(VolumeKind::snapshot, "s1").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0400u);
  ASSERT_EQ(::stat((mountpoint_ + "/origins").c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  errno = 0;
  EXPECT_NE(::stat((mountpoint_ + "/origins/nothere").c_str(), &st), 0);
  EXPECT_EQ(errno, ENOENT);
  EXPECT_NE(::stat((mountpoint_ + "/other").c_str(), &st), 0);
  EXPECT_EQ(errno, ENOENT);
  struct statvfs vfs {};
  ASSERT_EQ(::statvfs(mountpoint_.c_str(), &vfs), 0);
  EXPECT_EQ(vfs.f_blocks * vfs.f_frsize, 2 * kSize);
  // Names are validated; a directory holds a name once.
  EXPECT_FALSE(server_->add_volume(VolumeKind::origin, ".hidden", open_image(dir_.file("data.img"))).ok());
  EXPECT_FALSE(server_->add_volume(VolumeKind::origin, "a/b", open_image(dir_.file("data.img"))).ok());
  auto dup = server_->add_volume(VolumeKind::origin, "data", open_image(dir_.file("data.img")));
  ASSERT_FALSE(dup.ok());
  EXPECT_EQ(dup.error().errno_value(), EEXIST);
}

TEST_F(ViewServerTest, BufferedAndDirectIoMatchTheImage) {
  const std::string image = add_image(VolumeKind::origin, "data", 2);
  const std::string path = view(VolumeKind::origin, "data");
  std::vector<std::byte> model = pattern(2, 0, kSize);
  {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    ASSERT_TRUE(fd.valid()) << std::strerror(errno);
    std::vector<std::byte> all(kSize);
    ASSERT_EQ(::pread(fd.get(), all.data(), kSize, 0), static_cast<ssize_t>(kSize));
    EXPECT_EQ(all, model);
  }
  {
    UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
    ASSERT_TRUE(fd.valid());
    auto data = pattern(20, 0, 3 << 20);
    ASSERT_EQ(pwrite_all(fd.get(), data.data(), data.size(), 12345), static_cast<ssize_t>(data.size()));
    std::copy(data.begin(), data.end(), model.begin() + 12345);
    ASSERT_EQ(::fsync(fd.get()), 0);
  }
  {
    UniqueFd fd(::open(path.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC));
    ASSERT_TRUE(fd.valid()) << std::strerror(errno);
    DirectBuffer buf(1 << 20);
    auto data = pattern(21, 0, buf.size);
    std::memcpy(buf.data(), data.data(), buf.size);
    ASSERT_EQ(::pwrite(fd.get(), buf.data(), buf.size, 4 << 20), static_cast<ssize_t>(buf.size));
    std::copy(data.begin(), data.end(), model.begin() + (4 << 20));
    ASSERT_EQ(::fdatasync(fd.get()), 0);
    DirectBuffer back(1 << 20);
    ASSERT_EQ(::pread(fd.get(), back.data(), back.size, 4 << 20), static_cast<ssize_t>(back.size));
    EXPECT_EQ(std::memcmp(back.data(), buf.data(), buf.size), 0);
  }
  EXPECT_EQ(read_file(image, 0, kSize), model);
}

TEST_F(ViewServerTest, EndOfTheVolume) {
  add_image(VolumeKind::mirror, "m", 3);
  UniqueFd fd(::open(view(VolumeKind::mirror, "m").c_str(), O_RDWR | O_CLOEXEC));
  ASSERT_TRUE(fd.valid());
  std::vector<char> buf(4096);
  EXPECT_EQ(::pread(fd.get(), buf.data(), 4096, kSize - 100), 100);
  EXPECT_EQ(::pread(fd.get(), buf.data(), 4096, kSize), 0);
  EXPECT_EQ(::pread(fd.get(), buf.data(), 4096, kSize + 8192), 0);
  errno = 0;
  EXPECT_EQ(::pwrite(fd.get(), buf.data(), 4096, kSize), -1);
  EXPECT_EQ(errno, ENOSPC);
  EXPECT_EQ(::pwrite(fd.get(), buf.data(), 4096, kSize - 512), 512);
  struct stat st {};
  ASSERT_EQ(::fstat(fd.get(), &st), 0);
  EXPECT_EQ(st.st_size, static_cast<off_t>(kSize));
  EXPECT_EQ(::lseek(fd.get(), 0, SEEK_END), static_cast<off_t>(kSize));
}

TEST_F(ViewServerTest, ReadOnlyViewsRefuseWritesWithErofs) {
  const std::string image = add_image(VolumeKind::snapshot, "s", 4, {.read_only = true});
  add_image(VolumeKind::snapshot, "c", 4, {.read_only = true, .cache = CacheMode::keep_cache});
  for (const char* name : {"s", "c"}) {
    const std::string path = view(VolumeKind::snapshot, name);
    errno = 0;
    EXPECT_FALSE(UniqueFd(::open(path.c_str(), O_RDWR | O_CLOEXEC)).valid());
    EXPECT_EQ(errno, EROFS) << name;
    errno = 0;
    EXPECT_FALSE(UniqueFd(::open(path.c_str(), O_WRONLY | O_CLOEXEC)).valid());
    EXPECT_EQ(errno, EROFS) << name;
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    ASSERT_TRUE(fd.valid());
    std::vector<std::byte> buf(8192);
    ASSERT_EQ(::pread(fd.get(), buf.data(), buf.size(), 1000), 8192);
    EXPECT_EQ(buf, pattern(4, 1000, 8192));
    errno = 0;
    EXPECT_EQ(::pwrite(fd.get(), buf.data(), 10, 0), -1);
    EXPECT_EQ(errno, EBADF);
  }
  EXPECT_EQ(read_file(image, 0, kSize), pattern(4, 0, kSize));
}

TEST_F(ViewServerTest, TheNamespaceCannotBeChanged) {
  add_image(VolumeKind::origin, "data", 5);
  const std::string dir = mountpoint_ + "/origins";
  const std::string file = view(VolumeKind::origin, "data");
  const auto expect_errno = [](int rc, int err, const char* what) {
    EXPECT_EQ(rc, -1) << what;
    EXPECT_EQ(errno, err) << what << ": " << std::strerror(errno);
  };
  errno = 0;
  expect_errno(::open((dir + "/new").c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0600), EPERM, "create");
  expect_errno(::mknod((dir + "/node").c_str(), S_IFREG | 0600, 0), EPERM, "mknod");
  expect_errno(::mkdir((dir + "/sub").c_str(), 0700), EPERM, "mkdir");
  expect_errno(::mkdir((mountpoint_ + "/top").c_str(), 0700), EPERM, "mkdir at the root");
  expect_errno(::unlink(file.c_str()), EPERM, "unlink");
  expect_errno(::rmdir(dir.c_str()), EPERM, "rmdir");
  expect_errno(::rename(file.c_str(), (dir + "/other").c_str()), EPERM, "rename");
  expect_errno(::symlink("data", (dir + "/link").c_str()), EPERM, "symlink");
  expect_errno(::link(file.c_str(), (dir + "/hard").c_str()), EPERM, "link");
  expect_errno(::truncate(file.c_str(), 4096), EPERM, "truncate");
  expect_errno(::chmod(file.c_str(), 0644), EPERM, "chmod");
  // Setting the size it has, and the times, are accepted (and change nothing).
  EXPECT_EQ(::truncate(file.c_str(), static_cast<off_t>(kSize)), 0);
  EXPECT_EQ(::utimes(file.c_str(), nullptr), 0);
  // O_TRUNC is ignored, as on a block device.
  UniqueFd fd(::open(file.c_str(), O_RDWR | O_TRUNC | O_CLOEXEC));
  EXPECT_TRUE(fd.valid()) << std::strerror(errno);
  fd.reset();
  struct stat st {};
  ASSERT_EQ(::stat(file.c_str(), &st), 0);
  EXPECT_EQ(st.st_size, static_cast<off_t>(kSize));
  EXPECT_EQ(read_file(file, 0, 4096), pattern(5, 0, 4096));
}

TEST_F(ViewServerTest, RemoveIsRefusedWhileOpenAndTheNameGoesAway) {
  add_image(VolumeKind::origin, "data", 6);
  const std::string path = view(VolumeKind::origin, "data");
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(fd.valid());
  EXPECT_EQ(server_->open_count(VolumeKind::origin, "data").value(), 1u);
  auto busy = server_->remove_volume(VolumeKind::origin, "data");
  ASSERT_FALSE(busy.ok());
  EXPECT_EQ(busy.error().errno_value(), EBUSY);
  fd.reset();
  // The kernel sends RELEASE after close(2) returns: let the removal wait for it.
  auto removed = server_->remove_volume(VolumeKind::origin, "data", std::chrono::seconds(5));
  ASSERT_TRUE(removed.ok()) << removed.error().message();
  struct stat st {};
  errno = 0;
  EXPECT_NE(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(errno, ENOENT);
  EXPECT_TRUE(list_dir(mountpoint_ + "/origins").empty());
  EXPECT_EQ(server_->remove_volume(VolumeKind::origin, "data").error().errno_value(), ENOENT);
  // The name can be used again, for a different volume.
  add_image(VolumeKind::origin, "data", 7);
  EXPECT_EQ(read_file(path, 0, 4096), pattern(7, 0, 4096));
}

TEST_F(ViewServerTest, DeviceErrorsReachTheCaller) {
  const std::string image = dir_.file("f.img");
  write_pattern_file(image, kSize, 8);
  auto file = open_image(image);
  auto fault = std::make_shared<FaultDevice>(*file);
  fault->fail_reads(Sector(2048), Sector(8));
  fault->fail_writes(Sector(4096), Sector(8));
  ASSERT_TRUE(server_->add_volume(VolumeKind::origin, "f", std::shared_ptr<BlockDevice>(fault)).ok());
  UniqueFd fd(::open(view(VolumeKind::origin, "f").c_str(), O_RDWR | O_CLOEXEC));
  ASSERT_TRUE(fd.valid());
  std::vector<char> buf(4096);
  errno = 0;
  EXPECT_EQ(::pread(fd.get(), buf.data(), 4096, 2048 * 512), -1);
  EXPECT_EQ(errno, EIO);
  EXPECT_EQ(::pread(fd.get(), buf.data(), 4096, 0), 4096);
  errno = 0;
  EXPECT_EQ(::pwrite(fd.get(), buf.data(), 4096, 4096 * 512), -1);
  EXPECT_EQ(errno, EIO);
  fault->fail_flushes(EIO);
  errno = 0;
  EXPECT_EQ(::fsync(fd.get()), -1);
  EXPECT_EQ(errno, EIO);
  fd.reset();
  ASSERT_TRUE(server_->remove_volume(VolumeKind::origin, "f", std::chrono::seconds(5)).ok());
}

// Writers on many threads, each on its own region, with unaligned buffered writes and O_DIRECT ones, and a
// forked process writing a region of its own.
TEST_F(ViewServerTest, ManyThreadsAndAProcess) {
  const std::string image = add_image(VolumeKind::origin, "data", 9);
  const std::string path = view(VolumeKind::origin, "data");
  constexpr int kThreads = 8;
  constexpr uint64_t kRegion = kSize / (kThreads + 1);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const bool direct = t % 2 == 1;
      UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC | (direct ? O_DIRECT : 0)));
      ASSERT_TRUE(fd.valid());
      const uint64_t base = (t * kRegion) & ~uint64_t{4095};
      DirectBuffer buf(kRegion);
      auto data = pattern(100 + t, 0, kRegion);
      std::memcpy(buf.data(), data.data(), kRegion);
      std::mt19937_64 rng(t);
      for (uint64_t off = 0; off < kRegion - 4096;) {
        uint64_t len = direct ? 4096 * (1 + rng() % 64) : 1 + rng() % 100000;
        len = std::min(len, (kRegion - 4096 - off) & (direct ? ~uint64_t{4095} : ~uint64_t{0}));
        if (len == 0) break;
        ASSERT_EQ(::pwrite(fd.get(), buf.data() + off, len, static_cast<off_t>(base + off)),
                  static_cast<ssize_t>(len));
        off += len;
      }
      ASSERT_EQ(::fsync(fd.get()), 0);
    });
  }
  const uint64_t child_base = (kThreads * kRegion) & ~uint64_t{4095};
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    auto data = pattern(200, 0, 512 << 10);
    const bool ok = fd >= 0 &&
                    ::pwrite(fd, data.data(), data.size(), static_cast<off_t>(child_base + 17)) ==
                        static_cast<ssize_t>(data.size()) &&
                    ::fsync(fd) == 0 && ::close(fd) == 0;
    ::_exit(ok ? 0 : 1);
  }
  for (auto& th : threads) th.join();
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  for (int t = 0; t < kThreads; ++t) {
    const uint64_t base = (t * kRegion) & ~uint64_t{4095};
    const auto got = read_file(image, base, kRegion - 4096);
    const auto want = pattern(100 + t, 0, kRegion - 4096);
    // Direct writers stop at the last whole 4 KiB page they could fill.
    const size_t n = t % 2 == 1 ? ((kRegion - 4096) & ~uint64_t{4095}) : kRegion - 4096;
    EXPECT_TRUE(std::equal(want.begin(), want.begin() + static_cast<long>(n), got.begin())) << "thread " << t;
  }
  EXPECT_EQ(read_file(image, child_base + 17, 512 << 10), pattern(200, 0, 512 << 10));
}

// Direct writes from many threads reach the device at the same time (parallel direct writes, no worker
// blocked on I/O): with 2 ms of latency per write, they must overlap.
TEST_F(ViewServerTest, DirectWritesRunInParallel) {
  const std::string image = dir_.file("p.img");
  write_pattern_file(image, kSize, 10);
  auto file = open_image(image);
  auto fault = std::make_shared<FaultDevice>(*file);
  fault->set_latency(FaultDevice::Op::write, std::chrono::milliseconds(2));
  ASSERT_TRUE(server_->add_volume(VolumeKind::mirror, "p", std::shared_ptr<BlockDevice>(fault)).ok());
  const std::string path = view(VolumeKind::mirror, "p");
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      UniqueFd fd(::open(path.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC));
      ASSERT_TRUE(fd.valid());
      DirectBuffer buf(32768);
      std::memset(buf.data(), t, buf.size);
      for (int i = 0; i < 20; ++i)
        ASSERT_EQ(::pwrite(fd.get(), buf.data(), buf.size, static_cast<off_t>((t * 20 + i) * 32768)), 32768);
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_GE(fault->peak_in_flight(FaultDevice::Op::write), 4u);
}

// fsx-style: random reads, writes and fsyncs of random size and alignment, through a buffered and an O_DIRECT
// descriptor, checked against an in-memory model; then the image itself.
TEST_F(ViewServerTest, RandomizedOperationsMatchAModel) {
  const std::string image = add_image(VolumeKind::origin, "fsx", 11);
  const std::string path = view(VolumeKind::origin, "fsx");
  std::vector<std::byte> model = pattern(11, 0, kSize);
  UniqueFd buffered(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  UniqueFd direct(::open(path.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC));
  ASSERT_TRUE(buffered.valid() && direct.valid());
  const unsigned seed = static_cast<unsigned>(std::random_device{}());
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  DirectBuffer buf(1 << 20);
  for (int i = 0; i < 3000; ++i) {
    const int op = static_cast<int>(rng() % 10);
    const bool use_direct = rng() % 3 == 0;
    uint64_t off;
    uint64_t len;
    if (use_direct) {
      off = (rng() % (kSize / 512 + 16)) * 512;  // sometimes past the end
      len = 512 * (1 + rng() % 2048);
    } else {
      off = rng() % (kSize + 10000);
      len = 1 + rng() % (1 << 20);
    }
    const int fd = use_direct ? direct.get() : buffered.get();
    const uint64_t expect = off >= kSize ? 0 : std::min(len, kSize - off);
    if (op < 5) {
      const ssize_t n = ::pread(fd, buf.data(), len, static_cast<off_t>(off));
      ASSERT_EQ(n, static_cast<ssize_t>(expect)) << "op " << i << " read " << off << "+" << len;
      ASSERT_EQ(std::memcmp(buf.data(), model.data() + std::min(off, kSize), expect), 0)
          << "op " << i << " read " << off << "+" << len << (use_direct ? " direct" : "");
    } else if (op < 9) {
      auto data = pattern(1000 + i, off, len);
      std::memcpy(buf.data(), data.data(), len);
      const ssize_t n = ::pwrite(fd, buf.data(), len, static_cast<off_t>(off));
      if (expect == 0) {
        ASSERT_EQ(n, -1);
        ASSERT_EQ(errno, ENOSPC);
      } else {
        ASSERT_EQ(n, static_cast<ssize_t>(expect)) << "op " << i << " write " << off << "+" << len;
        std::memcpy(model.data() + off, buf.data(), expect);
      }
    } else {
      ASSERT_EQ(::fsync(fd), 0);
    }
  }
  buffered.reset();
  direct.reset();
  EXPECT_TRUE(read_file(image, 0, kSize) == model);
}

TEST_F(ViewServerTest, InvalidateCacheShowsANewVersionOfACachedView) {
  const std::string image =
      add_image(VolumeKind::snapshot, "s", 12, {.read_only = true, .cache = CacheMode::keep_cache});
  const std::string path = view(VolumeKind::snapshot, "s");
  EXPECT_EQ(read_file(path, 0, 65536), pattern(12, 0, 65536));
  // The volume changes under the view (as an origin does under a merge), then the daemon invalidates.
  kcopyfs::test::write_file(image, 0, pattern(13, 0, 65536));
  ASSERT_TRUE(server_->invalidate_cache(VolumeKind::snapshot, "s").ok());
  EXPECT_EQ(read_file(path, 0, 65536), pattern(13, 0, 65536));
  EXPECT_FALSE(server_->invalidate_cache(VolumeKind::snapshot, "none").ok());
}

TEST_F(ViewServerTest, KernelSideUnmountEndsTheLoopAndTellsTheOwner) {
  add_image(VolumeKind::origin, "data", 14);
  ASSERT_TRUE(server_->serving());
  if (::geteuid() == 0) {
    ASSERT_EQ(::umount2(mountpoint_.c_str(), 0), 0) << std::strerror(errno);
  } else {
    ASSERT_EQ(std::system(("fusermount3 -u " + mountpoint_).c_str()), 0);
  }
  EXPECT_TRUE(server_->wait_unmounted(std::chrono::seconds(10)));
  EXPECT_FALSE(server_->serving());
  EXPECT_EQ(unmounted_callbacks_.load(), 1);
  EXPECT_FALSE(is_mounted(mountpoint_));
  server_->unmount();  // frees the session; idempotent
  server_->unmount();
}

// Destroying the server while a file is open still unmounts (lazily, aborting the connection) and returns.
TEST_F(ViewServerTest, DestructionUnmountsEvenWhileAViewIsOpen) {
  add_image(VolumeKind::origin, "data", 15);
  UniqueFd fd(::open(view(VolumeKind::origin, "data").c_str(), O_RDWR | O_CLOEXEC));
  ASSERT_TRUE(fd.valid());
  char c;
  ASSERT_EQ(::pread(fd.get(), &c, 1, 0), 1);
  server_.reset();
  EXPECT_FALSE(is_mounted(mountpoint_));
  EXPECT_EQ(unmounted_callbacks_.load(), 1);
  errno = 0;
  EXPECT_EQ(::pread(fd.get(), &c, 1, 0), -1);
  EXPECT_EQ(errno, ENOTCONN);
}

// ---- A filesystem inside a view: mount -o loop,ro of an ext4 image served as a snapshot ------------------

// A read-only loop device over a file (detached on destruction, and by autoclear if the process dies).
class ReadOnlyLoop {
 public:
  explicit ReadOnlyLoop(const std::string& backing) {
    UniqueFd control(::open("/dev/loop-control", O_RDWR | O_CLOEXEC));
    UniqueFd file(::open(backing.c_str(), O_RDONLY | O_CLOEXEC));
    if (!control.valid() || !file.valid()) throw std::runtime_error("loop: open failed");
    for (int attempt = 0; attempt < 16 && path_.empty(); ++attempt) {
      const int n = ::ioctl(control.get(), LOOP_CTL_GET_FREE);
      if (n < 0) throw std::runtime_error("LOOP_CTL_GET_FREE failed");
      std::string path = "/dev/loop";
      path += std::to_string(n);
      UniqueFd dev(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
      if (!dev.valid()) continue;
      loop_config config{};
      config.fd = static_cast<uint32_t>(file.get());
      config.info.lo_flags = LO_FLAGS_AUTOCLEAR | LO_FLAGS_READ_ONLY;
      if (::ioctl(dev.get(), LOOP_CONFIGURE, &config) != 0) continue;
      path_ = path;
      fd_ = std::move(dev);
    }
    if (path_.empty()) throw std::runtime_error("no free loop device");
  }
  ~ReadOnlyLoop() {
    if (fd_.valid()) ::ioctl(fd_.get(), LOOP_CLR_FD, 0);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  UniqueFd fd_;
};

class MountGuard {
 public:
  MountGuard(const std::string& source, const std::string& target) : target_(target) {
    ok_ = ::mount(source.c_str(), target.c_str(), "ext4", MS_RDONLY, "noload") == 0;
    error_ = errno;
  }
  ~MountGuard() {
    if (ok_) ::umount2(target_.c_str(), 0) == 0 || ::umount2(target_.c_str(), MNT_DETACH);
  }
  bool ok() const { return ok_; }
  int error() const { return error_; }

 private:
  std::string target_;
  bool ok_;
  int error_;
};

TEST_F(ViewServerTest, LoopMountAnExt4SnapshotReadOnly) {
  if (::geteuid() != 0) GTEST_SKIP() << "loop mounts need root";
  if (::system("command -v mkfs.ext4 >/dev/null 2>&1") != 0) GTEST_SKIP() << "mkfs.ext4 is missing";
  const std::string content_dir = dir_.file("content");
  ASSERT_EQ(::mkdir(content_dir.c_str(), 0755), 0);
  const auto hello = pattern(16, 0, 300000);
  kcopyfs::test::write_file(content_dir + "/hello.bin", 0, hello);
  const std::string image = dir_.file("fs.img");
  const std::string mkfs = "mkfs.ext4 -q -F -b 4096 -d " + content_dir + " " + image + " 32M >/dev/null 2>&1";
  ASSERT_EQ(std::system(mkfs.c_str()), 0) << mkfs;
  ASSERT_TRUE(server_
                  ->add_volume(VolumeKind::snapshot, "fs", open_image(image, true),
                               {.read_only = true, .cache = CacheMode::keep_cache})
                  .ok());
  const std::string target = dir_.file("ext4");
  ASSERT_EQ(::mkdir(target.c_str(), 0755), 0);
  {
    ReadOnlyLoop loop(view(VolumeKind::snapshot, "fs"));
    MountGuard mounted(loop.path(), target);
    ASSERT_TRUE(mounted.ok()) << "mount " << loop.path() << ": " << std::strerror(mounted.error());
    EXPECT_EQ(read_file(target + "/hello.bin", 0, hello.size()), hello);
  }
  // Everything let go of the view: it can be removed.
  EXPECT_TRUE(server_->remove_volume(VolumeKind::snapshot, "fs", std::chrono::seconds(5)).ok());
}

// Unaligned writes to distinct bytes of the same blocks from many threads, through the mount: the
// read-modify-writes behind them must not lose each other's bytes.
TEST_F(ViewServerTest, ConcurrentUnalignedWritesToOneBlockThroughTheMount) {
  const std::string image = dir_.file("z.img");
  kcopyfs::test::make_sparse_file(image, kSize);
  ASSERT_TRUE(server_->add_volume(VolumeKind::origin, "z", open_image(image)).ok());
  const std::string path = view(VolumeKind::origin, "z");
  constexpr int kThreads = 6;
  constexpr int kPerThread = 300;  // thread t writes bytes t, t + 6, t + 12, ... one at a time
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
      ASSERT_TRUE(fd.valid());
      const char b = static_cast<char>(t + 1);
      for (int i = 0; i < kPerThread; ++i) ASSERT_EQ(::pwrite(fd.get(), &b, 1, t + i * kThreads), 1);
    });
  }
  for (auto& th : threads) th.join();
  const auto got = read_file(image, 0, kThreads * kPerThread);
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_EQ(got[i], std::byte{static_cast<unsigned char>(i % kThreads + 1)}) << "byte " << i;
}

// allow_other: group bits too (the kernel checks them: default_permissions).
TEST_F(ViewServerTest, AllowOtherModes) {
  const std::string other = dir_.file("other");
  ASSERT_EQ(::mkdir(other.c_str(), 0700), 0);
  MountOptions options;
  options.mountpoint = other;
  options.allow_other = true;
  auto second = ViewServer::mount(options);
  ASSERT_TRUE(second.ok()) << second.error().message();
  const std::string image = dir_.file("a.img");
  write_pattern_file(image, 1 << 20, 17);
  ASSERT_TRUE((*second)->add_volume(VolumeKind::mirror, "rw", open_image(image)).ok());
  ASSERT_TRUE((*second)->add_volume(VolumeKind::snapshot, "ro", open_image(image), {.read_only = true}).ok());
  struct stat st {};
  ASSERT_EQ(::stat((other + "/mirrors/rw").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0660u);
  ASSERT_EQ(::stat((other + "/snapshots/ro").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0440u);
  second->reset();
  EXPECT_FALSE(is_mounted(other));
}

// However a scope is left (here by an exception, as a failing ASSERT in a helper would), the mount goes.
TEST_F(ViewServerTest, UnwindingUnmounts) {
  const std::string other = dir_.file("unwind");
  ASSERT_EQ(::mkdir(other.c_str(), 0700), 0);
  try {
    UniqueFd held;  // declared first, so still open (the mount busy) when the server unwinds
    MountOptions options;
    options.mountpoint = other;
    auto server = ViewServer::mount(options);
    ASSERT_TRUE(server.ok());
    ASSERT_TRUE(is_mounted(other));
    held.reset(::open((other + "/origins").c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    ASSERT_TRUE(held.valid());
    throw std::runtime_error("test failure");
  } catch (const std::runtime_error&) {
  }
  EXPECT_FALSE(is_mounted(other));
  // Mounting there again works.
  MountOptions options;
  options.mountpoint = other;
  auto again = ViewServer::mount(options);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(is_mounted(other));
}

TEST_F(ViewServerTest, MountErrorsNameTheMountpoint) {
  MountOptions options;
  options.mountpoint = dir_.file("missing");
  auto missing = ViewServer::mount(options);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().errno_value(), ENOENT);
  EXPECT_NE(missing.error().message().find(options.mountpoint), std::string::npos);
}

// Not a check: quick figures through the view vs the raw image (run with --gtest_also_run_disabled_tests).
TEST_F(ViewServerTest, DISABLED_FioThroughTheViewVsTheRawImage) {
  if (::system("command -v fio >/dev/null 2>&1") != 0) GTEST_SKIP() << "fio is missing";
  const std::string image = dir_.file("bench.img");
  ASSERT_EQ(std::system(("fallocate -l 1G " + image).c_str()), 0);
  ASSERT_TRUE(server_->add_volume(VolumeKind::origin, "bench", open_image(image)).ok());
  const std::string views[] = {image, view(VolumeKind::origin, "bench")};
  const char* jobs[] = {
      "--rw=write --bs=1M --iodepth=8",      "--rw=read --bs=1M --iodepth=16",
      "--rw=randread --bs=4k --iodepth=16",  "--rw=randread --bs=4k --iodepth=1",
      "--rw=randwrite --bs=4k --iodepth=16",
  };
  for (const char* job : jobs) {
    for (const auto& target : views) {
      std::string cmd = "fio --name=b --filename=" + target + " --ioengine=io_uring --direct=1 --size=1G ";
      cmd += job;
      cmd +=
          " --runtime=4 --time_based --group_reporting 2>&1 | grep -E 'IOPS=| lat .usec.: min' "
          "| head -2";
      std::printf("== %s on %s\n", job, target == image ? "raw image" : "view");
      std::fflush(stdout);
      (void)!std::system(cmd.c_str());
    }
  }
}

}  // namespace
}  // namespace kcopyfs::fs
