// VolumeIo without FUSE: unaligned requests, the end of the device, concurrent read-modify-writes.
#include "fs/volume_io.h"

#include <gtest/gtest.h>

#include <random>
#include <thread>

#include "engine/fault_device.h"
#include "tests/fs/fs_test_util.h"
#include "tests/support/test_support.h"

namespace kcopyfs::fs {
namespace {

using kcopyfs::test::pattern;
using kcopyfs::test::read_file;
using kcopyfs::test::TempDir;
using kcopyfs::test::write_pattern_file;
using test::open_image;
using test::read_io;
using test::write_io;

constexpr uint64_t kSize = 1 << 20;

TEST(VolumeIo, UnalignedReadsAndWritesMatchTheImage) {
  TempDir dir;
  const std::string path = dir.file("img");
  write_pattern_file(path, kSize, 1);
  VolumeIo io(open_image(path));
  std::vector<std::byte> model = pattern(1, 0, kSize);
  std::mt19937_64 rng(7);
  for (int i = 0; i < 300; ++i) {
    const uint64_t off = rng() % kSize;
    const size_t len = 1 + rng() % std::min<uint64_t>(20000, kSize - off);
    if (rng() % 2) {
      auto data = pattern(100 + i, off, len);
      auto [err, n] = write_io(io, off, data);
      ASSERT_EQ(err, 0);
      ASSERT_EQ(n, len);
      std::copy(data.begin(), data.end(), model.begin() + static_cast<long>(off));
    } else {
      auto r = read_io(io, off, len);
      ASSERT_EQ(r.err, 0);
      ASSERT_EQ(r.data.size(), len);
      ASSERT_TRUE(std::equal(r.data.begin(), r.data.end(), model.begin() + static_cast<long>(off)))
          << "read " << off << "+" << len;
    }
  }
  EXPECT_EQ(read_file(path, 0, kSize), model);
}

TEST(VolumeIo, EndOfDeviceBehavesAsABlockDeviceFile) {
  TempDir dir;
  const std::string path = dir.file("img");
  write_pattern_file(path, kSize, 2);
  VolumeIo io(open_image(path));
  EXPECT_EQ(read_io(io, kSize - 100, 4096).data.size(), 100u);
  EXPECT_EQ(read_io(io, kSize, 4096).data.size(), 0u);
  EXPECT_EQ(read_io(io, kSize + 5000, 10).data.size(), 0u);
  std::vector<std::byte> data(4096, std::byte{0x5a});
  EXPECT_EQ(write_io(io, kSize, data).first, ENOSPC);
  EXPECT_EQ(write_io(io, kSize + 1, data).first, ENOSPC);
  auto [err, n] = write_io(io, kSize - 10, data);
  EXPECT_EQ(err, 0);
  EXPECT_EQ(n, 10u);
  EXPECT_EQ(read_file(path, kSize - 10, 10), std::vector<std::byte>(10, std::byte{0x5a}));
  EXPECT_EQ(write_io(io, 0, {}).second, 0u);
}

// Many threads write distinct bytes of the same few blocks with unaligned writes; without the range lock, a
// read-modify-write would write back stale neighbours and lose some of them.
TEST(VolumeIo, ConcurrentUnalignedWritesToOneBlockLoseNothing) {
  TempDir dir;
  const std::string path = dir.file("img");
  kcopyfs::test::make_sparse_file(path, kSize);
  auto file = open_image(path);
  // Latency on reads widens the window between an RMW's read and its write.
  FaultDevice fault(*file);
  fault.set_latency(FaultDevice::Op::read, std::chrono::microseconds(200));
  VolumeIo io(std::shared_ptr<BlockDevice>(file, &fault));
  constexpr int kThreads = 8;
  constexpr int kBytesEach = 64;  // thread t owns bytes t, t + 8, t + 16, ... of the first 512 * 4 bytes
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kBytesEach * 4; ++i) {
        const std::byte b{static_cast<unsigned char>(t + 1)};
        auto [err, n] =
            write_io(io, static_cast<uint64_t>(t + i * kThreads), std::span<const std::byte>(&b, 1));
        EXPECT_EQ(err, 0);
        EXPECT_EQ(n, 1u);
      }
    });
  }
  for (auto& th : threads) th.join();
  const auto content = read_file(path, 0, kThreads * kBytesEach * 4);
  for (size_t i = 0; i < content.size(); ++i)
    ASSERT_EQ(content[i], std::byte{static_cast<unsigned char>(i % kThreads + 1)}) << "byte " << i;
  EXPECT_EQ(io.range_lock().held(), 0u);
}

TEST(VolumeIo, DeviceErrorsAreReported) {
  TempDir dir;
  const std::string path = dir.file("img");
  write_pattern_file(path, kSize, 3);
  auto file = open_image(path);
  FaultDevice fault(*file);
  fault.fail_reads(Sector(8), Sector(8));
  fault.fail_writes(Sector(64), Sector(8));
  fault.fail_flushes(EIO);
  VolumeIo io(std::shared_ptr<BlockDevice>(file, &fault));
  EXPECT_EQ(read_io(io, 4096 + 3, 10).err, EIO);
  EXPECT_EQ(read_io(io, 0, 4096).err, 0);
  std::vector<std::byte> data(100, std::byte{1});
  EXPECT_EQ(write_io(io, 64 * 512 + 7, data).first, EIO);
  // An unaligned write whose edge read fails reports the error and releases its lock.
  EXPECT_EQ(write_io(io, 4096 + 1, data).first, EIO);
  EXPECT_EQ(io.range_lock().held(), 0u);
  std::promise<int> flushed;
  io.flush([&](int err) { flushed.set_value(err); });
  EXPECT_EQ(flushed.get_future().get(), EIO);
}

}  // namespace
}  // namespace kcopyfs::fs
