// The bytes a DiskLog puts on its device (kernel-dm-notes.md §5.3): the 16-byte header, the bitset at byte
// 1024 in little-endian bit order and rounded to 64 regions, and the one I/O rounded to the logical block
// size (512, and 4096 on a loop device). Expectations are computed here from the notes, not from
// disk_log_format.h.
#include <gtest/gtest.h>

#include "tests/mirror/log_test_util.h"

namespace kcopyfs::test {
namespace {

bool all_equal(const std::vector<std::byte>& b, size_t from, size_t to, std::byte value) {
  for (size_t i = from; i < to; ++i)
    if (b.at(i) != value) return false;
  return true;
}

// The write records of a FaultDevice as (start, count) sector pairs.
std::vector<std::pair<uint64_t, uint64_t>> writes(const FaultDevice& fault) {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  for (const auto& r : fault.records())
    if (r.op == FaultDevice::Op::write) out.emplace_back(r.start.value(), r.count.value());
  return out;
}

TEST(DiskLogFormat, HeaderIsExactly16LittleEndianBytesAndTheRestOfTheFirstKiBIsZero) {
  TempDir dir;
  const std::string path = dir.file("m0.log");
  write_pattern_file(path, 1 << 20, 5);  // a used device: a new log must not rely on zeros
  LogImage image(path);
  auto log = open_log(image, 300, SyncMode::nosync);
  const auto b = read_file(path, 0, 2048);
  const std::vector<uint8_t> header = {0x72, 0x52, 0x69, 0x4D, 2, 0, 0, 0, 0x2C, 0x01, 0, 0, 0, 0, 0, 0};
  for (size_t i = 0; i < header.size(); ++i) EXPECT_EQ(b[i], std::byte{header[i]}) << "byte " << i;
  EXPECT_TRUE(all_equal(b, 16, 1024, std::byte{0})) << "bytes 16..1023 of a new log are zero";
  EXPECT_EQ(log->io_size(), Bytes(1536));
}

TEST(DiskLogFormat, BitsetAtByte1024InLittleEndianBitOrder) {
  TempDir dir;
  LogImage image(dir.file("m0.log"), 1 << 20);
  auto log = open_log(image, 300, SyncMode::nosync);
  const std::set<uint64_t> dirty = {0, 7, 8, 9, 63, 64, 255, 299};
  for (uint64_t n : dirty) log->mark_region(RegionIndex(n));
  ASSERT_TRUE(flush_wait(*log).ok);
  const auto b = read_file(image.path, 0, 2048);
  for (uint64_t n = 0; n < 300; ++n) {
    // Region n is bit n & 7 of byte n >> 3 of the bitset.
    const bool bit = (static_cast<unsigned>(b[1024 + (n >> 3)]) >> (n & 7)) & 1u;
    ASSERT_EQ(bit, dirty.count(n) == 0) << "region " << n;
  }
  EXPECT_EQ(b[1024], std::byte{0x7E});
  EXPECT_EQ(b[1025], std::byte{0xFC});
  EXPECT_EQ(b[1024 + 31], std::byte{0x7F}) << "region 255 is the top bit of byte 31";
  EXPECT_EQ(b[1024 + 37], std::byte{0x07}) << "regions 296..298 clean, 299 dirty, 300.. padding";
  EXPECT_TRUE(all_equal(b, 1024 + 38, 1536, std::byte{0})) << "padding to 320 regions, then the block";
}

TEST(DiskLogFormat, BitsetLengthIsRoundedTo64Regions) {
  // A stored log whose bytes after the header are all 0xFF: at resume the padding bits of the bitset (up to a
  // 64-region word) are cleared, and the bytes after the bitset are written back as they were.
  TempDir dir;
  const std::string path = dir.file("m0.log");
  make_sparse_file(path, 1 << 20);
  write_raw_log(path, 2, 65, {});
  write_file(path, 1032, std::vector<std::byte>(504, std::byte{0xFF}));  // region 64, then all padding set
  LogImage image(path);
  auto log = open_log(image, 65);
  EXPECT_EQ(log->sync_count(), 65u);
  const auto b = read_file(path, 0, 1536);
  EXPECT_TRUE(all_equal(b, 1024, 1032, std::byte{0xFF})) << "regions 0..63";
  EXPECT_EQ(b[1032], std::byte{0x01}) << "region 64, then padding bits";
  EXPECT_TRUE(all_equal(b, 1033, 1040, std::byte{0})) << "padding bytes up to 128 regions (16 bytes)";
  EXPECT_TRUE(all_equal(b, 1040, 1536, std::byte{0xFF})) << "past the bitset: kept as read";
}

// What a resume does on the log device: read, write back, flush, each I/O of `sectors` from sector 0.
std::string resume_records(uint64_t sectors) {
  const std::string n = std::to_string(sectors);
  std::string out = "R0+";
  out += n;
  out += " W0+";
  out += n;
  out += " F ";
  return out;
}

struct SizeCase {
  uint64_t regions;
  uint64_t io_bytes;
};

TEST(DiskLogFormat, IoIsHeaderAndBitsetRoundedTo512ByteBlocks) {
  // 1 region: 8-byte bitset, 1032 -> 1536. 2048 regions (the notes' example): 256 bytes, 1280 -> 1536.
  // 4096: 512 bytes, exactly 1536. 4097: 520 bytes, 1544 -> 2048.
  for (const SizeCase c :
       {SizeCase{1, 1536}, SizeCase{2048, 1536}, SizeCase{4096, 1536}, SizeCase{4097, 2048}}) {
    TempDir dir;
    const std::string path = dir.file("m0.log");
    write_pattern_file(path, 1 << 20, 9);
    LogImage image(path);
    auto log = open_log(image, c.regions, SyncMode::nosync);
    EXPECT_EQ(log->io_size(), Bytes(c.io_bytes)) << c.regions << " regions";
    log->mark_region(RegionIndex(0));
    image.fault->clear_records();
    ASSERT_TRUE(flush_wait(*log).ok);
    EXPECT_EQ(writes(*image.fault), (std::vector<std::pair<uint64_t, uint64_t>>{{0, c.io_bytes / 512}}))
        << c.regions << " regions: header and bitset in one write from sector 0";
    EXPECT_EQ(read_file(path, c.io_bytes, 4096), pattern(9, c.io_bytes, 4096))
        << c.regions << " regions: nothing written past the I/O";
  }
}

TEST(DiskLogFormat, NotesExample2048RegionsIs1536BytesOn512ByteBlocks) {
  TempDir dir;
  LogImage image(dir.file("m0.log"), 1 << 20);
  auto log = open_log(image, 2048);
  EXPECT_EQ(log->io_size(), Bytes(1536));
  const auto& records = image.fault->records();
  ASSERT_GE(records.size(), 3u);
  EXPECT_EQ(render(records, true), resume_records(3));
}

TEST(DiskLogFormat, IoIsRoundedTo4096BytesOnA4KDevice) {
  if (!running_as_root()) GTEST_SKIP() << "needs root for a loop device with 4096-byte blocks";
  for (const SizeCase c : {SizeCase{2048, 4096}, SizeCase{30000, 8192}}) {
    TempDir dir;
    const std::string backing = dir.file("m0.img");
    write_pattern_file(backing, 1 << 20, 11);
    {
      LoopDevice loop(backing, 4096);
      LogImage image(loop.path());
      ASSERT_EQ(image.file->logical_block_size(), 4096u);
      auto log = open_log(image, c.regions, SyncMode::nosync);
      EXPECT_EQ(log->io_size(), Bytes(c.io_bytes)) << c.regions << " regions";
      EXPECT_EQ(render(image.fault->records(), true), resume_records(c.io_bytes / 512));
      log->mark_region(RegionIndex(1));
      ASSERT_TRUE(flush_wait(*log).ok);
      log.reset();
    }
    const auto b = read_file(backing, 0, c.io_bytes + 4096);
    EXPECT_EQ(raw_le64(b, 8), c.regions);
    EXPECT_EQ(b[1024], std::byte{0xFD});
    const uint64_t bitset = (c.regions + 63) / 64 * 8;
    EXPECT_TRUE(all_equal(b, 1024 + bitset, c.io_bytes, std::byte{0})) << "a new log's padding is zero";
    EXPECT_EQ(std::vector<std::byte>(b.begin() + c.io_bytes, b.end()), pattern(11, c.io_bytes, 4096))
        << "nothing written past the I/O";
  }
}

}  // namespace
}  // namespace kcopyfs::test
