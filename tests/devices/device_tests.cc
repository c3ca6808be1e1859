// Real block devices: loop devices as kcopyd sources and destinations, exclusive holds, 4 KiB logical blocks
// and write_zeroes. Every test needs root (loop devices); CI runs as root.
#include <fcntl.h>
#include <linux/fs.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <csignal>
#include <future>
#include <iostream>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "engine/file_device.h"
#include "engine/io_ring.h"
#include "engine/kcopyd.h"
#include "tests/support/test_support.h"

namespace kcopyfs {
namespace {

using test::LoopDevice;
using test::TempDir;

constexpr auto kTimeout = std::chrono::seconds(60);
constexpr uint64_t kMiB = 1 << 20;

// Waits (bounded) for one kcopyd callback and remembers its arguments.
struct CallbackWaiter {
  std::mutex mutex;
  std::condition_variable cv;
  int calls = 0;
  bool read_error = false;
  uint32_t write_errors = 0;

  CopyCallback callback() {
    return [this](bool r, uint32_t w) {
      std::lock_guard lock(mutex);
      ++calls;
      read_error = r;
      write_errors = w;
      cv.notify_all();
    };
  }
  // True once called, false after kTimeout.
  bool wait() {
    std::unique_lock lock(mutex);
    return cv.wait_for(lock, kTimeout, [&] { return calls > 0; });
  }
};

// A BlockDevice call made synchronous, bounded by kTimeout (nullopt: it never completed).
template <class Start>
std::optional<std::error_code> wait_io(Start start) {
  auto done = std::make_shared<std::promise<std::error_code>>();
  auto result = done->get_future();
  start([done](std::error_code ec) { done->set_value(ec); });
  if (result.wait_for(kTimeout) != std::future_status::ready) return std::nullopt;
  return result.get();
}

uint64_t blkgetsize64(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  EXPECT_TRUE(fd.valid()) << path;
  uint64_t size = 0;
  EXPECT_EQ(::ioctl(fd.get(), BLKGETSIZE64, &size), 0) << path;
  return size;
}

uint64_t file_size(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return static_cast<uint64_t>(st.st_size);
}

std::unique_ptr<FileDevice> open_device(const std::string& path, const OpenOptions& options) {
  auto dev = FileDevice::open(path, options);
  EXPECT_TRUE(dev.ok()) << (dev.ok() ? "" : dev.error().message());
  if (!dev.ok()) return nullptr;
  return std::move(dev).value();
}

class DeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!test::running_as_root()) GTEST_SKIP() << "loop devices need root";
  }
  TempDir dir_;
};

// --- loop device to loop device, O_DIRECT and buffered

class LoopCopyTest : public DeviceTest, public ::testing::WithParamInterface<CacheMode> {};

TEST_P(LoopCopyTest, CopiesBetweenLoopDevices) {
  const CacheMode cache = GetParam();
  constexpr uint64_t kSize = 8 * kMiB;
  const std::string src_file = dir_.file("src.img");
  const std::string dst_file = dir_.file("dst.img");
  test::write_pattern_file(src_file, kSize, 1);
  test::write_pattern_file(dst_file, kSize, 2);
  LoopDevice src_loop(src_file);
  LoopDevice dst_loop(dst_file);

  OpenOptions src_options;
  src_options.access = Access::read_only;
  src_options.cache = cache;
  OpenOptions dst_options;
  dst_options.cache = cache;
  auto src = open_device(src_loop.path(), src_options);
  auto dst = open_device(dst_loop.path(), dst_options);
  ASSERT_TRUE(src && dst);

  for (auto [d, backing] : {std::pair{src.get(), src_file}, std::pair{dst.get(), dst_file}}) {
    EXPECT_TRUE(d->is_block_device()) << d->path();
    EXPECT_EQ(d->direct_io(), cache == CacheMode::direct_if_possible) << d->path();
    EXPECT_EQ(d->logical_block_size(), 512u);
    EXPECT_EQ(d->size().value(), file_size(backing)) << "the size is the backing file's";
    EXPECT_EQ(d->size().value(), blkgetsize64(d->path()));
    EXPECT_EQ(d->as_file(), nullptr) << "block devices must not be offloaded to as files";
  }

  // Source bytes [1 MiB + 512, +5 MiB) go to destination offset 2 MiB - 1536; the rest of dst must not
  // change.
  const uint64_t src_off = kMiB + 512;
  const uint64_t dst_off = 2 * kMiB - 1536;
  const uint64_t length = 5 * kMiB;
  {
    auto client = KcopydClient::create(KcopydOptions{});
    ASSERT_TRUE(client.ok());
    CallbackWaiter waiter;
    const Region from{src.get(), to_sectors(Bytes(src_off)), to_sectors(Bytes(length))};
    const Region to{dst.get(), to_sectors(Bytes(dst_off)), Sector(0)};
    auto st = client.value()->copy(from, std::span(&to, 1), CopyFlags{}, waiter.callback());
    ASSERT_TRUE(st.ok()) << st.error().message();
    ASSERT_TRUE(waiter.wait()) << "copy did not complete in time";
    EXPECT_FALSE(waiter.read_error);
    EXPECT_EQ(waiter.write_errors, 0u);
    EXPECT_EQ(client.value()->stats().bytes_read, length) << "block devices are copied by read and write";
  }
  auto flushed = wait_io([&](IoCallback cb) { dst->flush(std::move(cb)); });
  ASSERT_TRUE(flushed.has_value());
  ASSERT_FALSE(*flushed) << flushed->message();

  // What landed, seen through the backing files.
  EXPECT_TRUE(test::read_file(dst_file, dst_off, length) == test::pattern(1, src_off, length));
  EXPECT_TRUE(test::read_file(dst_file, 0, dst_off) == test::pattern(2, 0, dst_off));
  EXPECT_TRUE(test::read_file(dst_file, dst_off + length, kSize - dst_off - length) ==
              test::pattern(2, dst_off + length, kSize - dst_off - length));
  EXPECT_TRUE(test::read_file(src_file, 0, kSize) == test::pattern(1, 0, kSize)) << "the source changed";
}

INSTANTIATE_TEST_SUITE_P(CacheModes, LoopCopyTest,
                         ::testing::Values(CacheMode::direct_if_possible, CacheMode::buffered),
                         [](const ::testing::TestParamInfo<CacheMode>& info) {
                           return info.param == CacheMode::buffered ? std::string("Buffered")
                                                                    : std::string("Direct");
                         });

// --- exclusive holds

TEST_F(DeviceTest, SecondExclusiveOpenIsRefusedWithEbusy) {
  const std::string file = dir_.file("held.img");
  test::make_sparse_file(file, 4 * kMiB);
  LoopDevice loop(file);
  auto first = open_device(loop.path(), OpenOptions{});
  ASSERT_TRUE(first);

  auto second = FileDevice::open(loop.path(), OpenOptions{});
  ASSERT_FALSE(second.ok()) << "a second exclusive open of a held block device must fail";
  EXPECT_EQ(second.error().errno_value(), EBUSY);
  EXPECT_NE(second.error().message().find(loop.path()), std::string::npos) << second.error().message();

  OpenOptions read_only;
  read_only.access = Access::read_only;
  auto third = FileDevice::open(loop.path(), read_only);
  ASSERT_FALSE(third.ok()) << "a read-only exclusive open is refused as well";
  EXPECT_EQ(third.error().errno_value(), EBUSY);

  // The refusal came from the hold: once released, the device opens again.
  first.reset();
  auto again = FileDevice::open(loop.path(), OpenOptions{});
  EXPECT_TRUE(again.ok()) << (again.ok() ? "" : again.error().message());
}

// A block device is free as soon as its FileDevice is gone, even when its last I/O was a flush through a
// submission-polling ring: the kernel hands the flush to a worker that drops its reference to the file on its
// own schedule, after the device's own close (without the destructor's wait this failed every run, on the
// first or second round). Found by CI: `kcopyfs umount` returned with the loop device still held.
TEST_F(DeviceTest, AClosedBlockDeviceIsFreeAtOnceBehindAPollingRing) {
  const std::string file = dir_.file("polled.img");
  test::make_sparse_file(file, 4 * kMiB);
  LoopDevice loop(file);
  IoRing::Options ring_options;
  ring_options.sq_poll_idle = std::chrono::milliseconds(2);
  auto ring = IoRing::create(ring_options);
  ASSERT_TRUE(ring.ok()) << ring.error().message();
  if (!ring.value()->polling()) GTEST_SKIP() << "the kernel refused submission polling (needs it to show)";
  OpenOptions options;
  options.ring = ring.value().get();
  std::vector<std::byte> data(64 * 1024, std::byte{0x5a});
  int busy = 0;
  for (int round = 0; round < 200; ++round) {
    auto dev = open_device(loop.path(), options);
    ASSERT_NE(dev, nullptr);
    for (uint64_t i = 0; i < 4; ++i) {
      const auto ec =
          wait_io([&](IoCallback cb) { dev->write(Bytes(i * data.size()), data, std::move(cb)); });
      ASSERT_TRUE(ec.has_value() && !*ec);
    }
    // As a daemon's last I/O before it closes a device: a flush, which io_uring always hands to a worker.
    const auto flushed = wait_io([&](IoCallback cb) { dev->flush(std::move(cb)); });
    ASSERT_TRUE(flushed.has_value() && !*flushed);
    dev.reset();
    UniqueFd probe(::open(loop.path().c_str(), O_RDONLY | O_EXCL | O_CLOEXEC));
    if (!probe.valid()) ++busy;
  }
  EXPECT_EQ(busy, 0) << "rounds in which the device was still held after its FileDevice was destroyed";
}

// A child process that holds a path open with O_EXCL until told to let go. Always reaped, even on failure.
class ExclusiveHolder {
 public:
  explicit ExclusiveHolder(const std::string& path) {
    int ready[2];
    int release[2];
    if (::pipe2(ready, O_CLOEXEC) != 0 || ::pipe2(release, O_CLOEXEC) != 0) return;
    pid_ = ::fork();
    if (pid_ == 0) {
      // Child: async-signal-safe calls only (the parent has threads).
      ::close(ready[0]);
      ::close(release[1]);
      const int fd = ::open(path.c_str(), O_RDONLY | O_EXCL | O_CLOEXEC);
      const char status = fd >= 0 ? 'y' : 'n';
      if (::write(ready[1], &status, 1) != 1) ::_exit(3);
      char byte;
      while (::read(release[0], &byte, 1) < 0 && errno == EINTR) {
      }
      ::_exit(fd >= 0 ? 0 : 2);
    }
    ::close(ready[1]);
    ::close(release[0]);
    ready_.reset(ready[0]);
    release_.reset(release[1]);
    if (pid_ > 0) pidfd_.reset(static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0)));
  }
  ~ExclusiveHolder() {
    if (pid_ <= 0) return;
    release_.reset();
    int status = 0;
    if (!pidfd_.valid() || !wait_exit(&status)) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &status, 0);
    }
  }

  bool started() const { return pid_ > 0 && pidfd_.valid(); }
  // True when the child reported that it holds the device (bounded wait).
  bool wait_held() {
    pollfd p{ready_.get(), POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(std::chrono::milliseconds(kTimeout).count())) != 1) return false;
    char status = 0;
    return ::read(ready_.get(), &status, 1) == 1 && status == 'y';
  }
  // Lets the child go and reaps it (bounded). Result: its exit status, or nullopt on timeout.
  std::optional<int> release() {
    release_.reset();
    int status = 0;
    if (!wait_exit(&status)) return std::nullopt;
    pid_ = -1;
    return status;
  }

 private:
  // Waits for the child to exit (bounded, through its pidfd), then reaps it.
  bool wait_exit(int* status) {
    pollfd p{pidfd_.get(), POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(std::chrono::milliseconds(kTimeout).count())) != 1) return false;
    return ::waitpid(pid_, status, 0) == pid_;
  }

  pid_t pid_ = -1;
  UniqueFd ready_;
  UniqueFd release_;
  UniqueFd pidfd_;
};

TEST_F(DeviceTest, DeviceHeldByAnotherProcessIsRefused) {
  const std::string file = dir_.file("held.img");
  test::make_sparse_file(file, 4 * kMiB);
  LoopDevice loop(file);
  {
    ExclusiveHolder holder(loop.path());
    ASSERT_TRUE(holder.started());
    ASSERT_TRUE(holder.wait_held()) << "the child could not open " << loop.path() << " with O_EXCL";

    auto refused = FileDevice::open(loop.path(), OpenOptions{});
    ASSERT_FALSE(refused.ok()) << "a device held by another process must be refused";
    EXPECT_EQ(refused.error().errno_value(), EBUSY);
    EXPECT_NE(refused.error().message().find(loop.path()), std::string::npos) << refused.error().message();
    EXPECT_NE(refused.error().message().find("held"), std::string::npos) << refused.error().message();

    auto status = holder.release();
    ASSERT_TRUE(status.has_value()) << "the child did not exit in time";
    EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << "child status " << *status;
  }
  auto after = FileDevice::open(loop.path(), OpenOptions{});
  EXPECT_TRUE(after.ok()) << (after.ok() ? "" : after.error().message());
}

// --- 4 KiB logical blocks

TEST_F(DeviceTest, FourKiBLogicalBlocksRefuseMisalignedJobs) {
  constexpr uint64_t kSize = 4 * kMiB;
  const std::string src_file = dir_.file("src4k.img");
  const std::string dst_file = dir_.file("dst4k.img");
  test::write_pattern_file(src_file, kSize, 3);
  test::write_pattern_file(dst_file, kSize, 4);
  LoopDevice src_loop(src_file, 4096);
  LoopDevice dst_loop(dst_file, 4096);
  OpenOptions ro;
  ro.access = Access::read_only;
  auto src = open_device(src_loop.path(), ro);
  auto dst = open_device(dst_loop.path(), OpenOptions{});
  ASSERT_TRUE(src && dst);
  EXPECT_EQ(src->logical_block_size(), 4096u);
  EXPECT_EQ(dst->logical_block_size(), 4096u);
  EXPECT_EQ(dst->size().value(), kSize);

  auto client_or = KcopydClient::create(KcopydOptions{});
  ASSERT_TRUE(client_or.ok());
  auto client = std::move(client_or).value();

  struct Case {
    const char* what;
    Region from;
    Region to;
  };
  const Case misaligned[] = {
      {"source start 1 sector", {src.get(), Sector(1), Sector(8)}, {dst.get(), Sector(0), Sector(0)}},
      {"count 9 sectors", {src.get(), Sector(0), Sector(9)}, {dst.get(), Sector(0), Sector(0)}},
      {"count 4 sectors", {src.get(), Sector(8), Sector(4)}, {dst.get(), Sector(8), Sector(0)}},
      {"destination start 12 sectors", {src.get(), Sector(0), Sector(8)}, {dst.get(), Sector(12), Sector(0)}},
  };
  int calls = 0;
  std::mutex calls_mutex;
  for (const Case& c : misaligned) {
    auto st = client->copy(c.from, std::span(&c.to, 1), CopyFlags{}, [&](bool, uint32_t) {
      std::lock_guard lock(calls_mutex);
      ++calls;
    });
    ASSERT_FALSE(st.ok()) << c.what << ": a job not aligned to 4 KiB must be refused";
    EXPECT_EQ(st.error().errno_value(), EINVAL) << c.what;
  }
  const Region zero_dest{dst.get(), Sector(4), Sector(8)};
  auto zst = client->zero(std::span(&zero_dest, 1), CopyFlags{}, [&](bool, uint32_t) {
    std::lock_guard lock(calls_mutex);
    ++calls;
  });
  ASSERT_FALSE(zst.ok()) << "a misaligned zero job must be refused";
  EXPECT_EQ(zst.error().errno_value(), EINVAL);

  // An aligned job works: 1 MiB + 4 KiB from source offset 8 KiB to destination offset 1 MiB + 4 KiB.
  const uint64_t src_off = 8192, dst_off = kMiB + 4096, length = kMiB + 4096;
  CallbackWaiter waiter;
  const Region from{src.get(), to_sectors(Bytes(src_off)), to_sectors(Bytes(length))};
  const Region to{dst.get(), to_sectors(Bytes(dst_off)), Sector(0)};
  auto st = client->copy(from, std::span(&to, 1), CopyFlags{}, waiter.callback());
  ASSERT_TRUE(st.ok()) << st.error().message();
  ASSERT_TRUE(waiter.wait()) << "aligned copy did not complete in time";
  EXPECT_FALSE(waiter.read_error);
  EXPECT_EQ(waiter.write_errors, 0u);
  client.reset();  // waits for every job: a refused job's callback would have run by now
  EXPECT_EQ(calls, 0) << "refused jobs must never call back";

  auto flushed = wait_io([&](IoCallback cb) { dst->flush(std::move(cb)); });
  ASSERT_TRUE(flushed.has_value());
  ASSERT_FALSE(*flushed);
  EXPECT_TRUE(test::read_file(dst_file, dst_off, length) == test::pattern(3, src_off, length));
  EXPECT_TRUE(test::read_file(dst_file, 0, dst_off) == test::pattern(4, 0, dst_off));
  const uint64_t tail = dst_off + length;
  EXPECT_TRUE(test::read_file(dst_file, tail, kSize - tail) == test::pattern(4, tail, kSize - tail));
}

// --- write_zeroes

class LoopZeroTest : public DeviceTest, public ::testing::WithParamInterface<bool> {};

TEST_P(LoopZeroTest, WriteZeroesZeroesTheRange) {
  const bool may_unmap = GetParam();
  constexpr uint64_t kSize = 8 * kMiB;
  const std::string file = dir_.file("zero.img");
  test::write_pattern_file(file, kSize, 5);
  LoopDevice loop(file);
  auto dev = open_device(loop.path(), OpenOptions{});
  ASSERT_TRUE(dev);
  ASSERT_TRUE(dev->is_block_device());

  const uint64_t off = kMiB + 4096, length = 3 * kMiB + 512;
  auto zeroed =
      wait_io([&](IoCallback cb) { dev->write_zeroes(Bytes(off), Bytes(length), may_unmap, std::move(cb)); });
  ASSERT_TRUE(zeroed.has_value()) << "write_zeroes did not complete in time";
  ASSERT_FALSE(*zeroed) << zeroed->message();
  auto flushed = wait_io([&](IoCallback cb) { dev->flush(std::move(cb)); });
  ASSERT_TRUE(flushed.has_value());
  ASSERT_FALSE(*flushed);

  EXPECT_TRUE(test::read_file(file, off, length) == std::vector<std::byte>(length)) << "range not zeroed";
  EXPECT_TRUE(test::read_file(file, 0, off) == test::pattern(5, 0, off)) << "bytes before the range changed";
  const uint64_t tail = off + length;
  EXPECT_TRUE(test::read_file(file, tail, kSize - tail) == test::pattern(5, tail, kSize - tail))
      << "bytes after the range changed";
  EXPECT_EQ(file_size(file), kSize);
}

INSTANTIATE_TEST_SUITE_P(Unmap, LoopZeroTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? std::string("MayUnmap") : std::string("ZeroRange");
                         });

}  // namespace
}  // namespace kcopyfs
