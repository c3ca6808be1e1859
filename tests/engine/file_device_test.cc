// FileDevice (engine/file_device.h): O_DIRECT and its buffered fallback, the open rules (exclusive and shared
// holders, sizes, kinds of file, missing paths), range and access checks, write_zeroes and extent_at.
#include "engine/file_device.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/magic.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "engine/sync_io.h"
#include "tests/engine/engine_test_util.h"

namespace kcopyfs::test {
namespace {

struct AlignedFree {
  void operator()(std::byte* p) const { std::free(p); }
};
using Aligned = std::unique_ptr<std::byte, AlignedFree>;
Aligned aligned(size_t len) { return Aligned(static_cast<std::byte*>(std::aligned_alloc(kPageSize, len))); }

bool on_tmpfs(const std::string& path) {
  struct statfs fs {};
  return ::statfs(path.c_str(), &fs) == 0 && fs.f_type == TMPFS_MAGIC;
}

void expect_error(const Result<std::unique_ptr<FileDevice>>& r, std::errc code, const std::string& path) {
  ASSERT_FALSE(r.ok()) << "open of " << path << " succeeded";
  EXPECT_EQ(r.error().code(), std::make_error_code(code)) << r.error().message();
  EXPECT_NE(r.error().message().find(path), std::string::npos)
      << "message does not name the path: " << r.error().message();
}

// Writes then reads back through dev, with an aligned buffer and with a misaligned one (bounce copies).
void round_trip(FileDevice& dev, const std::string& path) {
  const size_t len = 64 * KiB;
  auto buf = aligned(len + kPageSize);
  const auto data = pattern(100, 0, len);
  std::memcpy(buf.get(), data.data(), len);
  ASSERT_FALSE(write_sync(dev, Bytes(8 * KiB), std::span<const std::byte>(buf.get(), len)));
  // Misaligned by one byte: the device must bounce.
  std::memcpy(buf.get() + 1, data.data(), len);
  ASSERT_FALSE(write_sync(dev, Bytes(128 * KiB), std::span<const std::byte>(buf.get() + 1, len)));
  ASSERT_FALSE(flush_sync(dev));
  EXPECT_TRUE(file_matches_pattern(path, 8 * KiB, len, 100, 0));
  EXPECT_TRUE(file_matches_pattern(path, 128 * KiB, len, 100, 0));
  std::memset(buf.get(), 0, len + 1);
  ASSERT_FALSE(read_sync(dev, Bytes(8 * KiB), std::span<std::byte>(buf.get() + 1, len)));
  EXPECT_EQ(std::memcmp(buf.get() + 1, data.data(), len), 0);
  std::memset(buf.get(), 0, len);
  ASSERT_FALSE(read_sync(dev, Bytes(128 * KiB), std::span<std::byte>(buf.get(), len)));
  EXPECT_EQ(std::memcmp(buf.get(), data.data(), len), 0);
}

TEST(FileDevice, DirectIoOnADiskBackedFile) {
  TempDir dir;
  if (on_tmpfs(dir.file(""))) GTEST_SKIP() << "TMPDIR is on tmpfs";
  make_sparse_file(dir.file("f"), 1 * MiB);
  auto dev = open_device(dir.file("f"));
  EXPECT_TRUE(dev->direct_io());
  EXPECT_EQ(dev->size(), Bytes(1 * MiB));
  EXPECT_EQ(dev->size_in_sectors(), Sector(2048));
  EXPECT_FALSE(dev->read_only());
  EXPECT_FALSE(dev->is_block_device());
  EXPECT_EQ(dev->as_file(), dev.get());
  EXPECT_EQ(dev->path(), dir.file("f"));
  EXPECT_EQ(dev->logical_block_size() % kSectorSize, 0u);
  round_trip(*dev, dir.file("f"));
}

TEST(FileDevice, TmpfsWorksWithOrWithoutODirect) {
  ShmDir shm;
  make_sparse_file(shm.file("f"), 1 * MiB);
  {
    auto dev = open_device(shm.file("f"));
    // Kernels since 6.6 accept O_DIRECT on tmpfs; older ones make the device fall back to buffered I/O.
    RecordProperty("tmpfs_direct_io", dev->direct_io() ? "true" : "false");
    round_trip(*dev, shm.file("f"));
  }
  OpenOptions buffered;
  buffered.cache = CacheMode::buffered;
  auto dev = open_device(shm.file("f"), buffered);
  EXPECT_FALSE(dev->direct_io());
  round_trip(*dev, shm.file("f"));
}

TEST(FileDevice, BufferedModeOnADiskBackedFile) {
  TempDir dir;
  make_sparse_file(dir.file("f"), 1 * MiB);
  OpenOptions buffered;
  buffered.cache = CacheMode::buffered;
  auto dev = open_device(dir.file("f"), buffered);
  EXPECT_FALSE(dev->direct_io());
  round_trip(*dev, dir.file("f"));
}

TEST(FileDevice, SecondExclusiveOpenIsRefused) {
  TempDir dir;
  const std::string path = dir.file("f");
  make_sparse_file(path, 1 * MiB);
  {
    auto first = open_device(path);
    expect_error(FileDevice::open(path, {}), std::errc::device_or_resource_busy, path);
    OpenOptions ro_exclusive;
    ro_exclusive.access = Access::read_only;
    expect_error(FileDevice::open(path, ro_exclusive), std::errc::device_or_resource_busy, path);
  }
  // Released with the first device.
  EXPECT_TRUE(FileDevice::open(path, {}).ok());
}

TEST(FileDevice, SharedOpenOfAnExclusivelyHeldFileIsRefused) {
  TempDir dir;
  const std::string path = dir.file("f");
  make_sparse_file(path, 1 * MiB);
  OpenOptions shared;
  shared.access = Access::read_only;
  shared.sharing = Sharing::shared;
  {
    auto holder = open_device(path);
    expect_error(FileDevice::open(path, shared), std::errc::device_or_resource_busy, path);
    OpenOptions unlocked = shared;
    unlocked.sharing = Sharing::none;
    EXPECT_TRUE(FileDevice::open(path, unlocked).ok()) << "Sharing::none takes no lock";
  }
  // Shared holders coexist, and keep an exclusive writer out.
  auto a = open_device(path, shared);
  auto b = open_device(path, shared);
  expect_error(FileDevice::open(path, {}), std::errc::device_or_resource_busy, path);
}

TEST(FileDevice, OpenRefusals) {
  TempDir dir;
  write_file(dir.file("odd"), 0, pattern(101, 0, 1000));
  expect_error(FileDevice::open(dir.file("odd"), {}), std::errc::invalid_argument, dir.file("odd"));
  std::filesystem::create_directory(dir.file("d"));
  expect_error(FileDevice::open(dir.file("d"), {}), std::errc::invalid_argument, dir.file("d"));
  expect_error(FileDevice::open(dir.file("missing"), {}), std::errc::no_such_file_or_directory,
               dir.file("missing"));
  // A refused open holds nothing: the odd-sized file can still be locked by someone else.
  UniqueFd fd(::open(dir.file("odd").c_str(), O_RDWR | O_CLOEXEC));
  struct flock lk {};
  lk.l_type = F_WRLCK;
  lk.l_whence = SEEK_SET;
  EXPECT_EQ(::fcntl(fd.get(), F_OFD_SETLK, &lk), 0);
}

TEST(FileDevice, ReadOnlyDeviceRefusesWrites) {
  TempDir dir;
  write_pattern_file(dir.file("f"), 64 * KiB, 102);
  OpenOptions ro;
  ro.access = Access::read_only;
  auto dev = open_device(dir.file("f"), ro);
  EXPECT_TRUE(dev->read_only());
  auto buf = aligned(4 * KiB);
  std::memset(buf.get(), 0, 4 * KiB);
  EXPECT_EQ(write_sync(*dev, Bytes(0), std::span<const std::byte>(buf.get(), 4 * KiB)),
            std::make_error_code(std::errc::read_only_file_system));
  EXPECT_EQ(write_zeroes_sync(*dev, Bytes(0), Bytes(4 * KiB), false),
            std::make_error_code(std::errc::read_only_file_system));
  EXPECT_EQ(write_zeroes_sync(*dev, Bytes(0), Bytes(4 * KiB), true),
            std::make_error_code(std::errc::read_only_file_system));
  EXPECT_FALSE(read_sync(*dev, Bytes(0), std::span<std::byte>(buf.get(), 4 * KiB)));
  EXPECT_TRUE(file_matches_pattern(dir.file("f"), 0, 64 * KiB, 102, 0));
}

TEST(FileDevice, RangeAndAlignmentChecks) {
  TempDir dir;
  write_pattern_file(dir.file("f"), 64 * KiB, 103);
  auto dev = open_device(dir.file("f"));
  auto buf = aligned(8 * KiB);
  const auto einval = std::make_error_code(std::errc::invalid_argument);
  std::span<std::byte> sector(buf.get(), kSectorSize);
  EXPECT_EQ(read_sync(*dev, Bytes(100), sector), einval) << "unaligned offset";
  EXPECT_EQ(write_sync(*dev, Bytes(100), sector), einval) << "unaligned offset";
  EXPECT_EQ(read_sync(*dev, Bytes(0), std::span<std::byte>(buf.get(), 700)), einval) << "unaligned length";
  EXPECT_EQ(read_sync(*dev, Bytes(64 * KiB), sector), einval) << "past the end";
  EXPECT_EQ(write_sync(*dev, Bytes(60 * KiB), std::span<const std::byte>(buf.get(), 8 * KiB)), einval)
      << "straddles the end";
  EXPECT_EQ(write_zeroes_sync(*dev, Bytes(60 * KiB), Bytes(8 * KiB), false), einval);
  EXPECT_EQ(write_zeroes_sync(*dev, Bytes(512 + 1), Bytes(512), false), einval);
  EXPECT_FALSE(read_sync(*dev, Bytes(64 * KiB - kSectorSize), sector)) << "the last sector is fine";
  EXPECT_TRUE(file_matches_pattern(dir.file("f"), 0, 64 * KiB, 103, 0));
}

struct ZeroCase {
  std::string name;
  bool shm;
  CacheMode cache;
};

TEST(FileDevice, WriteZeroesEverywhere) {
  TempDir dir;
  ShmDir shm;
  const ZeroCase cases[] = {{"disk-direct", false, CacheMode::direct_if_possible},
                            {"disk-buffered", false, CacheMode::buffered},
                            {"shm-direct", true, CacheMode::direct_if_possible},
                            {"shm-buffered", true, CacheMode::buffered}};
  const uint64_t size = 8 * MiB;
  for (const ZeroCase& c : cases) {
    for (bool unmap : {false, true}) {
      SCOPED_TRACE(c.name + (unmap ? " unmap" : " keep"));
      const std::string path = (c.shm ? shm.file(c.name) : dir.file(c.name)) + (unmap ? "-u" : "-k");
      write_pattern_file(path, size, 104);
      OpenOptions o;
      o.cache = c.cache;
      auto dev = open_device(path, o);
      // Longer than the 1 MiB zero region, so the writing fallback needs several pieces.
      const uint64_t off = 512 * KiB + kSectorSize, len = 3 * MiB + 2 * kSectorSize;
      ASSERT_FALSE(write_zeroes_sync(*dev, Bytes(off), Bytes(len), unmap));
      // And a second time, after the device learned whether fallocate works here.
      ASSERT_FALSE(write_zeroes_sync(*dev, Bytes(5 * MiB), Bytes(64 * KiB), unmap));
      ASSERT_FALSE(flush_sync(*dev));
      EXPECT_TRUE(file_matches_pattern(path, 0, off, 104, 0));
      EXPECT_TRUE(file_is_zero(path, off, len));
      EXPECT_TRUE(file_matches_pattern(path, off + len, 5 * MiB - off - len, 104, off + len));
      EXPECT_TRUE(file_is_zero(path, 5 * MiB, 64 * KiB));
      EXPECT_TRUE(
          file_matches_pattern(path, 5 * MiB + 64 * KiB, size - 5 * MiB - 64 * KiB, 104, 5 * MiB + 64 * KiB));
      EXPECT_EQ(std::filesystem::file_size(path), size);
      if (unmap && !c.shm) {
        EXPECT_LT(allocated_bytes(path), size - 2 * MiB) << "may_unmap made no hole on ext4";
      }
    }
  }
}

TEST(FileDevice, ExtentAtReportsHolesAndData) {
  TempDir dir;
  const std::string path = dir.file("f");
  make_sparse_file(path, 16 * MiB);
  write_file(path, 4 * MiB, pattern(105, 0, 1 * MiB));
  write_file(path, 15 * MiB, pattern(105, 0, 1 * MiB));
  auto dev = open_device(path);
  Extent e = dev->extent_at(Bytes(0));
  EXPECT_FALSE(e.data);
  EXPECT_EQ(e.length, Bytes(4 * MiB));
  e = dev->extent_at(Bytes(1 * MiB + kSectorSize));
  EXPECT_FALSE(e.data);
  EXPECT_EQ(e.length, Bytes(3 * MiB - kSectorSize));
  e = dev->extent_at(Bytes(4 * MiB));
  EXPECT_TRUE(e.data);
  EXPECT_EQ(e.length, Bytes(1 * MiB));
  e = dev->extent_at(Bytes(4 * MiB + 3 * kSectorSize));
  EXPECT_TRUE(e.data);
  EXPECT_EQ(e.length, Bytes(1 * MiB - 3 * kSectorSize));
  e = dev->extent_at(Bytes(5 * MiB));
  EXPECT_FALSE(e.data);
  EXPECT_EQ(e.length, Bytes(10 * MiB));
  e = dev->extent_at(Bytes(15 * MiB));
  EXPECT_TRUE(e.data);
  EXPECT_EQ(e.length, Bytes(1 * MiB));

  make_sparse_file(dir.file("empty"), 2 * MiB);
  auto empty = open_device(dir.file("empty"));
  e = empty->extent_at(Bytes(kSectorSize));
  EXPECT_FALSE(e.data);
  EXPECT_EQ(e.length, Bytes(2 * MiB - kSectorSize));
}

TEST(FileDevice, ReadingAFileThatShrankUnderTheDeviceGivesZerosForTheTail) {
  TempDir dir;
  for (CacheMode cache : {CacheMode::direct_if_possible, CacheMode::buffered}) {
    for (uint64_t shrunk : {uint64_t{10000}, uint64_t{8 * KiB}}) {
      SCOPED_TRACE(std::string(cache == CacheMode::buffered ? "buffered" : "direct") + " shrunk to " +
                   std::to_string(shrunk));
      const std::string path = dir.file("f");
      write_pattern_file(path, 64 * KiB, 106);
      OpenOptions o;
      o.cache = cache;
      auto dev = open_device(path, o);
      ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(shrunk)), 0);
      const size_t len = 16 * KiB;
      auto buf = aligned(len);
      std::memset(buf.get(), 0xAA, len);
      ASSERT_FALSE(read_sync(*dev, Bytes(0), std::span<std::byte>(buf.get(), len)));
      EXPECT_EQ(std::memcmp(buf.get(), pattern(106, 0, shrunk).data(), shrunk), 0);
      for (size_t i = shrunk; i < len; ++i) ASSERT_EQ(buf.get()[i], std::byte{0}) << "byte " << i;
      std::memset(buf.get(), 0xAA, len);
      ASSERT_FALSE(read_sync(*dev, Bytes(32 * KiB), std::span<std::byte>(buf.get(), len)));
      for (size_t i = 0; i < len; ++i) ASSERT_EQ(buf.get()[i], std::byte{0}) << "byte " << i;
    }
  }
}

TEST(FileDevice, GrowFile) {
  TempDir dir;
  make_sparse_file(dir.file("f"), 1 * MiB);
  auto dev = open_device(dir.file("f"));
  EXPECT_FALSE(dev->grow_file(Bytes(2 * MiB + 100)).ok());
  ASSERT_TRUE(dev->grow_file(Bytes(2 * MiB)).ok());
  EXPECT_EQ(dev->size(), Bytes(2 * MiB));
  EXPECT_EQ(std::filesystem::file_size(dir.file("f")), 2 * MiB);
  auto buf = aligned(4 * KiB);
  std::memset(buf.get(), 0x5A, 4 * KiB);
  EXPECT_FALSE(write_sync(*dev, Bytes(2 * MiB - 4 * KiB), std::span<const std::byte>(buf.get(), 4 * KiB)));
}

}  // namespace
}  // namespace kcopyfs::test
