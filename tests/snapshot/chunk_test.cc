// Chunk-size rules (chunk.h) and the persistent layout helpers (persistent_format.h, kernel-dm-notes.md
// §3.3).
#include <gtest/gtest.h>

#include <cstring>

#include "snapshot/chunk.h"
#include "snapshot/persistent_format.h"

namespace kcopyfs {
namespace {

TEST(ChunkSize, AcceptsEveryPowerOfTwoFrom4KTo512K) {
  for (uint64_t s = 8; s <= 1024; s *= 2) EXPECT_EQ(check_chunk_size(Sector(s), 512, 512), "") << s;
}

TEST(ChunkSize, RefusesZeroAndNonPowersOfTwo) {
  EXPECT_NE(check_chunk_size(Sector(0), 512, 512).find("not a power of 2"), std::string::npos);
  EXPECT_NE(check_chunk_size(Sector(24), 512, 512).find("not a power of 2"), std::string::npos);
}

TEST(ChunkSize, RefusesOutsideTheRange) {
  EXPECT_NE(check_chunk_size(Sector(4), 512, 512).find("too small"), std::string::npos);
  EXPECT_NE(check_chunk_size(Sector(2048), 512, 512).find("too high"), std::string::npos);
}

TEST(ChunkSize, MustBeAMultipleOfBothBlockSizes) {
  EXPECT_EQ(check_chunk_size(Sector(8), 4096, 4096), "");
  EXPECT_NE(check_chunk_size(Sector(8), 8192, 512).find("multiple of device blocksize 8192"),
            std::string::npos);
  EXPECT_NE(check_chunk_size(Sector(8), 512, 8192).find("multiple of device blocksize 8192"),
            std::string::npos);
}

TEST(ChunkGeometry, ConvertsBetweenChunksAndSectors) {
  ChunkGeometry g(Sector(16));
  EXPECT_EQ(g.shift(), 4u);
  EXPECT_EQ(g.chunk_of(Sector(33)), ChunkIndex(2));
  EXPECT_EQ(g.start_of(ChunkIndex(3)), Sector(48));
  EXPECT_EQ(g.offset_in_chunk(Sector(33)), Sector(1));
  EXPECT_EQ(g.chunks_covering(Sector(33)), 3u);
}

TEST(PersistentFormat, AreaLayoutFor4KAnd8KChunks) {
  using namespace cow_format;
  EXPECT_EQ(exceptions_per_area(Sector(8)), 256u);
  EXPECT_EQ(area_location(Sector(8), 0), ChunkIndex(1));
  EXPECT_EQ(area_location(Sector(8), 1), ChunkIndex(258));
  EXPECT_EQ(area_location(Sector(8), 2), ChunkIndex(515));
  EXPECT_TRUE(is_metadata_chunk(Sector(8), ChunkIndex(258)));
  EXPECT_FALSE(is_metadata_chunk(Sector(8), ChunkIndex(257)));
  EXPECT_FALSE(is_metadata_chunk(Sector(8), ChunkIndex(0)));
  EXPECT_EQ(exceptions_per_area(Sector(16)), 512u);
  EXPECT_EQ(area_location(Sector(16), 1), ChunkIndex(514));
  EXPECT_TRUE(is_metadata_chunk(Sector(16), ChunkIndex(1027)));
}

TEST(PersistentFormat, LittleEndianHelpers) {
  std::byte b[8];
  cow_format::store_le64(b, 0x0102030405060708ull);
  EXPECT_EQ(b[0], std::byte{0x08});
  EXPECT_EQ(b[7], std::byte{0x01});
  EXPECT_EQ(cow_format::load_le64(b), 0x0102030405060708ull);
  cow_format::store_le32(b, cow_format::kMagic);
  EXPECT_EQ(std::memcmp(b, "SnAp", 4), 0);
  EXPECT_EQ(cow_format::load_le32(b), cow_format::kMagic);
}

}  // namespace
}  // namespace kcopyfs
