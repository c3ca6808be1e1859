// Sparse copies (a kcopyfs extension, engine/kcopyd.h): the source's holes are not read and become holes at a
// file destination, while the content still equals the source.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>

#include "tests/engine/engine_test_util.h"

namespace kcopyfs::test {
namespace {

using Op = FaultDevice::Op;

constexpr uint64_t kSize = 64 * MiB;
constexpr uint64_t kSeed = 60;
// Where the sparse source holds data (pattern(kSeed) at the same offsets); everything else is a hole.
const std::pair<uint64_t, uint64_t> kData[] = {
    {1 * MiB, 64 * KiB}, {10 * MiB, 3 * MiB}, {40 * MiB + 4 * KiB, 8 * KiB}, {63 * MiB, 1 * MiB}};

void make_source(const std::string& path) {
  make_sparse_file(path, kSize);
  for (auto [off, len] : kData) write_file(path, off, pattern(kSeed, off, len));
}

// The source's content over [off, off+len).
std::vector<std::byte> expected(uint64_t off, uint64_t len) {
  std::vector<std::byte> out(len);
  for (auto [d, dlen] : kData) {
    const uint64_t s = std::max(off, d), e = std::min(off + len, d + dlen);
    if (s >= e) continue;
    const auto p = pattern(kSeed, s, e - s);
    std::memcpy(out.data() + (s - off), p.data(), p.size());
  }
  return out;
}

::testing::AssertionResult file_equals(const std::string& path, uint64_t off,
                                       const std::vector<std::byte>& want) {
  const auto got = read_file(path, off, want.size());
  if (got == want) return ::testing::AssertionSuccess();
  if (got.size() != want.size()) return ::testing::AssertionFailure() << path << ": short read";
  const auto diff = std::mismatch(got.begin(), got.end(), want.begin()).first - got.begin();
  return ::testing::AssertionFailure() << path << ": first difference at byte " << off + diff;
}

struct Copied {
  KcopydStats stats;
  std::vector<FaultDevice::Record> reads;
};

Copied copy_whole(Image& src, Image& dst, bool sparse) {
  KcopydOptions o;
  o.allow_offload = false;  // count every byte read by kcopyd itself
  auto client = make_client(o);
  Callbacks cb;
  Region dests[] = {dst.region(Sector(0), Sector(0))};
  CopyFlags flags;
  flags.sparse = sparse;
  EXPECT_TRUE(client->copy(src.region(Sector(0), sectors_of_bytes(kSize)), dests, flags, cb.make()).ok());
  EXPECT_TRUE(cb.wait_all());
  EXPECT_FALSE(cb.result().read_error);
  EXPECT_EQ(cb.result().write_errors, 0u);
  return {client->stats(), records_of(src.dev(), Op::read)};
}

TEST(KcopydSparse, SparseCopyKeepsHolesAndSkipsReadingThem) {
  TempDir dir;
  make_source(dir.file("src"));
  Image src(dir.file("src"));
  // The destination starts fully allocated with other data, so the holes must be made by the copy.
  auto dst = Image::with_pattern(dir.file("dst"), kSize, 61);
  ASSERT_GE(allocated_bytes(dst->path), kSize);

  const Copied c = copy_whole(src, *dst, true);
  EXPECT_TRUE(file_equals(dst->path, 0, expected(0, kSize)));
  uint64_t data_bytes = 0;
  for (auto [off, len] : kData) data_bytes += len;
  EXPECT_LT(c.stats.bytes_read, kSize);
  EXPECT_GE(c.stats.bytes_read, data_bytes);
  EXPECT_LE(c.stats.bytes_read, data_bytes + 4 * MiB);
  EXPECT_GT(c.stats.bytes_zeroed, kSize / 2);
  EXPECT_LT(allocated_bytes(dst->path), kSize / 8) << "the destination did not keep the holes";
  for (const auto& r : c.reads)
    EXPECT_FALSE(overlaps(r.start, r.count, sectors_of_bytes(20 * MiB), sectors_of_bytes(20 * MiB)))
        << "read inside a hole at sector " << r.start.value();
}

TEST(KcopydSparse, NonSparseCopyReadsEverything) {
  TempDir dir;
  make_source(dir.file("src"));
  Image src(dir.file("src"));
  auto dst = Image::sparse(dir.file("dst"), kSize);
  const Copied c = copy_whole(src, *dst, false);
  EXPECT_EQ(c.stats.bytes_read, kSize);
  EXPECT_EQ(c.stats.bytes_zeroed, 0u);
  EXPECT_TRUE(file_equals(dst->path, 0, expected(0, kSize)));
}

TEST(KcopydSparse, SparseCopyOfAnUnalignedRangeToTwoDestinations) {
  TempDir dir;
  make_source(dir.file("src"));
  Image src(dir.file("src"));
  auto d0 = Image::with_pattern(dir.file("d0"), kSize, 62);
  auto d1 = Image::with_pattern(dir.file("d1"), kSize, 63);
  // Starts 3 sectors before the first data range and ends 5 sectors into the third's hole.
  const uint64_t from = 1 * MiB - 3 * kSectorSize;
  const uint64_t len = 40 * MiB + 12 * KiB + 5 * kSectorSize - from;
  const Sector d0_start(9), d1_start(2048 + 1);
  KcopydOptions o;
  o.allow_offload = false;
  auto client = make_client(o);
  Callbacks cb;
  Region dests[] = {d0->region(d0_start, Sector(0)), d1->region(d1_start, Sector(0))};
  CopyFlags flags;
  flags.sparse = true;
  ASSERT_TRUE(
      client->copy(src.region(sectors_of_bytes(from), sectors_of_bytes(len)), dests, flags, cb.make()).ok());
  ASSERT_TRUE(cb.wait_all());
  EXPECT_FALSE(cb.result().read_error);
  EXPECT_EQ(cb.result().write_errors, 0u);
  EXPECT_LT(client->stats().bytes_read, len / 4);
  const auto want = expected(from, len);
  EXPECT_TRUE(file_equals(d0->path, to_bytes(d0_start).value(), want));
  EXPECT_TRUE(file_equals(d1->path, to_bytes(d1_start).value(), want));
  // Bytes around the destination ranges are untouched.
  EXPECT_TRUE(file_matches_pattern(d0->path, 0, to_bytes(d0_start).value(), 62, 0));
  const uint64_t after = to_bytes(d1_start).value() + len;
  EXPECT_TRUE(file_matches_pattern(d1->path, after, 64 * KiB, 63, after));
}

}  // namespace
}  // namespace kcopyfs::test
