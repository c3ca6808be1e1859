// FillAheadDevice: fills holes ahead of the highest write, never writes over data or under a write in flight,
// holds a write that meets a fill until the fill is done, and stops quietly when a fill fails.
#include "engine/fill_ahead_device.h"

#include <fcntl.h>
#include <unistd.h>

#include <future>

#include "tests/engine/engine_test_util.h"

namespace kcopyfs::test {
namespace {

constexpr auto kIdle = std::chrono::milliseconds(20000);

// Writes buffer at offset through dev and waits (bounded) for the result.
std::error_code write_and_wait(BlockDevice& dev, uint64_t offset, const std::vector<std::byte>& buffer) {
  std::promise<std::error_code> done;
  auto result = done.get_future();
  dev.write(Bytes(offset), buffer, [&done](std::error_code ec) { done.set_value(ec); });
  if (result.wait_for(kTimeout) != std::future_status::ready) fail_timeout("a write");
  return result.get();
}

// Whether [offset, offset+length) of path is allocated (no hole anywhere in it).
bool allocated(const std::string& path, uint64_t offset, uint64_t length) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY));
  const off_t hole = ::lseek(fd.get(), static_cast<off_t>(offset), SEEK_HOLE);
  return hole >= 0 && static_cast<uint64_t>(hole) >= offset + length;
}

// Whether [offset, offset+length) of path is one hole.
bool hole(const std::string& path, uint64_t offset, uint64_t length) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY));
  const off_t data = ::lseek(fd.get(), static_cast<off_t>(offset), SEEK_DATA);
  return (data < 0 && errno == ENXIO) || static_cast<uint64_t>(data) >= offset + length;
}

FillAheadDevice::Options small_window() {
  FillAheadDevice::Options o;
  o.max_ahead = Bytes(8 * MiB);
  o.unit = Bytes(1 * MiB);
  return o;
}

TEST(FillAheadDevice, FillsTheHolesAheadOfTheHighestWriteAndNothingElse) {
  ShmDir dir;
  const std::string path = dir.file("cow");
  make_sparse_file(path, 64 * MiB);
  FillAheadDevice dev(open_device(path), small_window());
  ASSERT_FALSE(write_and_wait(dev, 1 * MiB, pattern(7, 0, 4 * KiB)));
  ASSERT_TRUE(dev.wait_idle(kIdle));

  // The first window is one unit, from the end of the write.
  auto stats = dev.stats();
  EXPECT_EQ(stats.error, 0);
  EXPECT_EQ(stats.bytes_zeroed, 1 * MiB);
  EXPECT_EQ(stats.fills, 1u);
  EXPECT_EQ(stats.writes_waited, 0u);
  EXPECT_TRUE(allocated(path, 1 * MiB + 4 * KiB, 1 * MiB));
  EXPECT_TRUE(hole(path, 0, 1 * MiB)) << "below the highest write nothing is filled";
  EXPECT_TRUE(hole(path, 2 * MiB + 4 * KiB + 4 * KiB, 32 * MiB)) << "beyond the window nothing is filled";
  EXPECT_TRUE(file_matches_pattern(path, 1 * MiB, 4 * KiB, 7, 0));
  EXPECT_TRUE(file_is_zero(path, 1 * MiB + 4 * KiB, 1 * MiB));

  // A writer moving up through the file: the window follows it and grows to max_ahead (8 MiB).
  const uint64_t top = 17 * MiB;
  for (uint64_t at = 1 * MiB + 4 * KiB; at < top; at += 4 * KiB)
    ASSERT_FALSE(write_and_wait(dev, at, pattern(at, 0, 4 * KiB)));
  ASSERT_TRUE(dev.wait_idle(kIdle));
  stats = dev.stats();
  EXPECT_EQ(stats.error, 0);
  EXPECT_TRUE(allocated(path, 1 * MiB, top - 1 * MiB + 2 * MiB)) << "filled ahead of the writer";
  EXPECT_TRUE(hole(path, top + 8 * MiB, 64 * MiB - top - 8 * MiB)) << "never more than max_ahead ahead";
  EXPECT_LE(stats.bytes_zeroed, top - 1 * MiB + 8 * MiB);
  EXPECT_GE(stats.bytes_zeroed, 8 * MiB);
  for (uint64_t at = 1 * MiB + 4 * KiB; at < top; at += 1 * MiB + 4 * KiB)
    EXPECT_TRUE(file_matches_pattern(path, at, 4 * KiB, at, 0));
}

TEST(FillAheadDevice, LargeWritesStartNoFillAndSmallOnesStartThemAgain) {
  ShmDir dir;
  const std::string path = dir.file("cow");
  make_sparse_file(path, 64 * MiB);
  FillAheadDevice dev(open_device(path), small_window());
  // Sequential 1 MiB writes (a large-chunk store, a sequential copy): filling ahead would double the traffic.
  for (uint64_t i = 0; i < 4; ++i) ASSERT_FALSE(write_and_wait(dev, i * MiB, pattern(i, 0, 1 * MiB)));
  ASSERT_TRUE(dev.wait_idle(kIdle));
  EXPECT_EQ(dev.stats().bytes_zeroed, 0u);
  EXPECT_TRUE(hole(path, 4 * MiB, 60 * MiB));
  // Small first writes (4 KiB chunks) bring the mean down, and filling starts.
  uint64_t at = 4 * MiB;
  for (int i = 0; i < 64; ++i, at += 4 * KiB) ASSERT_FALSE(write_and_wait(dev, at, pattern(at, 0, 4 * KiB)));
  ASSERT_TRUE(dev.wait_idle(kIdle));
  EXPECT_GT(dev.stats().bytes_zeroed, 0u);
  EXPECT_TRUE(allocated(path, at, 512 * KiB));
  for (uint64_t i = 0; i < 4; ++i) EXPECT_TRUE(file_matches_pattern(path, i * MiB, 1 * MiB, i, 0));
}

TEST(FillAheadDevice, NeverWritesOverDataAndStopsAtTheEnd) {
  ShmDir dir;
  const std::string path = dir.file("cow");
  make_sparse_file(path, 6 * MiB);
  {
    // Data already in the window (an exception written before a restart, say).
    const auto data = pattern(3, 0, 1 * MiB);
    UniqueFd fd(::open(path.c_str(), O_WRONLY));
    ASSERT_EQ(::pwrite(fd.get(), data.data(), data.size(), 2 * MiB), static_cast<ssize_t>(data.size()));
  }
  FillAheadDevice::Options one_big_unit;
  one_big_unit.unit = Bytes(8 * MiB);
  one_big_unit.max_ahead = Bytes(8 * MiB);
  FillAheadDevice dev(open_device(path), one_big_unit);
  ASSERT_FALSE(write_and_wait(dev, 0, pattern(4, 0, 4 * KiB)));
  ASSERT_TRUE(dev.wait_idle(kIdle));
  EXPECT_EQ(dev.stats().bytes_zeroed, 5 * MiB - 4 * KiB);  // the rest of the file but the data
  EXPECT_TRUE(file_matches_pattern(path, 2 * MiB, 1 * MiB, 3, 0));
  EXPECT_TRUE(file_matches_pattern(path, 0, 4 * KiB, 4, 0));
  EXPECT_TRUE(allocated(path, 0, 6 * MiB));
  EXPECT_EQ(std::filesystem::file_size(path), 6 * MiB) << "the file never grows";
}

TEST(FillAheadDevice, AWriteThatMeetsAFillWaitsForItAndLandsAfterIt) {
  ShmDir dir;
  const std::string path = dir.file("cow");
  make_sparse_file(path, 64 * MiB);
  auto file = open_device(path);
  auto fault = std::make_unique<FaultDevice>(*file);
  FaultDevice& faults = *fault;

  // Holds the first fill's zero write before it reaches the file, until the test lets it go.
  std::promise<void> fill_reached, release;
  auto released = release.get_future().share();
  FaultDevice::Rule hold{FaultDevice::Op::write, sectors_of_bytes(4 * KiB), sectors_of_bytes(1 * MiB)};
  hold.remaining = 1;
  hold.on_match = [&fill_reached, released] {
    fill_reached.set_value();
    if (released.wait_for(kTimeout) != std::future_status::ready)
      fail_timeout("the test to release the fill");
  };
  faults.add_rule(hold);
  FillAheadDevice dev(std::move(fault), small_window());

  // The first write starts the fill, which blocks in the hook on the issuing thread.
  std::future<std::error_code> first =
      std::async(std::launch::async, [&] { return write_and_wait(dev, 0, pattern(1, 0, 4 * KiB)); });
  if (fill_reached.get_future().wait_for(kTimeout) != std::future_status::ready) fail_timeout("the fill");

  // A write inside the range being filled is held...
  std::promise<std::error_code> second_done;
  auto second = second_done.get_future();
  const auto data = pattern(2, 0, 8 * KiB);
  dev.write(Bytes(64 * KiB), data, [&](std::error_code ec) { second_done.set_value(ec); });
  EXPECT_EQ(dev.stats().writes_waited, 1u);
  // ...while one outside it passes.
  ASSERT_FALSE(write_and_wait(dev, 40 * MiB, pattern(5, 0, 4 * KiB)));

  release.set_value();
  ASSERT_FALSE(first.get());
  ASSERT_EQ(second.wait_for(kTimeout), std::future_status::ready);
  ASSERT_FALSE(second.get());
  ASSERT_TRUE(dev.wait_idle(kIdle));
  // Had the held write gone first, the fill's zeros would have landed over it.
  EXPECT_TRUE(file_matches_pattern(path, 64 * KiB, 8 * KiB, 2, 0));
  EXPECT_TRUE(file_matches_pattern(path, 40 * MiB, 4 * KiB, 5, 0));
  EXPECT_TRUE(file_matches_pattern(path, 0, 4 * KiB, 1, 0));
}

TEST(FillAheadDevice, AFailedFillStopsFillingAndChangesNothingElse) {
  ShmDir dir;
  const std::string path = dir.file("cow");
  make_sparse_file(path, 64 * MiB);
  auto file = open_device(path);
  auto fault = std::make_unique<FaultDevice>(*file);
  FaultDevice::Rule full{FaultDevice::Op::write, sectors_of_bytes(4 * KiB), sectors_of_bytes(1 * MiB),
                         ENOSPC};
  full.remaining = 1;
  fault->add_rule(full);
  FillAheadDevice dev(std::move(fault), small_window());

  ASSERT_FALSE(write_and_wait(dev, 0, pattern(1, 0, 4 * KiB)));
  ASSERT_TRUE(dev.wait_idle(kIdle));
  EXPECT_EQ(dev.stats().error, ENOSPC);
  EXPECT_EQ(dev.stats().fills, 0u);
  // The writer's own writes go on, and no fill starts again.
  ASSERT_FALSE(write_and_wait(dev, 4 * KiB, pattern(2, 0, 4 * KiB)));
  ASSERT_FALSE(write_and_wait(dev, 30 * MiB, pattern(3, 0, 4 * KiB)));
  ASSERT_TRUE(dev.wait_idle(kIdle));
  EXPECT_EQ(dev.stats().fills, 0u);
  EXPECT_EQ(dev.stats().bytes_zeroed, 0u);
  EXPECT_TRUE(hole(path, 30 * MiB + 4 * KiB, 16 * MiB));
  EXPECT_TRUE(file_matches_pattern(path, 4 * KiB, 4 * KiB, 2, 0));
}

TEST(FillAheadDevice, OnlyWritableRegularFilesAreWrapped) {
  ShmDir dir;
  const std::string path = dir.file("cow");
  make_sparse_file(path, 4 * MiB);
  {
    std::unique_ptr<BlockDevice> plain = open_device(path);
    BlockDevice* before = plain.get();
    auto wrapped = FillAheadDevice::wrap_if_sparse_file(std::move(plain));
    EXPECT_NE(wrapped.get(), before);
    EXPECT_NE(dynamic_cast<FillAheadDevice*>(wrapped.get()), nullptr);
    EXPECT_EQ(wrapped->as_file(), nullptr) << "no copy offload around the wrapper";
  }
  {
    OpenOptions ro;
    ro.access = Access::read_only;
    std::unique_ptr<BlockDevice> read_only = open_device(path, ro);
    BlockDevice* before = read_only.get();
    EXPECT_EQ(FillAheadDevice::wrap_if_sparse_file(std::move(read_only)).get(), before);
  }
  {
    auto file = open_device(path);
    std::unique_ptr<BlockDevice> fault = std::make_unique<FaultDevice>(*file);
    BlockDevice* before = fault.get();
    EXPECT_EQ(FillAheadDevice::wrap_if_sparse_file(std::move(fault)).get(), before);
  }
}

}  // namespace
}  // namespace kcopyfs::test
