// RegionBits: the bookkeeping both dirty logs share (kernel-dm-notes.md §5.2, §5.6): starting states, the
// little-endian bit layout of the bitsets, the resync scan and its counts, resume from stored bits, the
// touched flags a disk-log flush is decided on, and the freeze after a failed leg flush.
#include <gtest/gtest.h>

#include <vector>

#include "mirror/region_bits.h"

namespace kcopyfs {
namespace {

std::vector<uint64_t> drain_work(RegionBits& bits) {
  std::vector<uint64_t> out;
  while (auto r = bits.get_resync_work()) out.push_back(r->value());
  return out;
}

// Stored bits with every region clean except `dirty` (LE bit numbering), for resume_from.
std::vector<std::byte> stored(uint64_t regions, const std::vector<uint64_t>& dirty) {
  std::vector<std::byte> b((regions + 63) / 64 * 8, std::byte{0});
  for (uint64_t n = 0; n < regions; ++n) b[n / 8] |= static_cast<std::byte>(1u << (n % 8));
  for (uint64_t n : dirty) b[n / 8] &= ~static_cast<std::byte>(1u << (n % 8));
  return b;
}

TEST(RegionBits, StartsAllCleanAndInSyncOnlyForNosync) {
  RegionBits by_log(100, false);
  RegionBits nosync(100, true);
  EXPECT_EQ(by_log.sync_count(), 0u);
  EXPECT_EQ(nosync.sync_count(), 100u);
  for (uint64_t n = 0; n < 100; ++n) {
    ASSERT_TRUE(by_log.is_clean(RegionIndex(n)));
    ASSERT_FALSE(by_log.in_sync(RegionIndex(n)));
    ASSERT_TRUE(nosync.in_sync(RegionIndex(n)));
    ASSERT_FALSE(nosync.is_recovering(RegionIndex(n)));
  }
  EXPECT_FALSE(nosync.get_resync_work().has_value());
  EXPECT_FALSE(by_log.take_touched().any()) << "a new log has touched nothing";
  // Out-of-range regions read as neither clean nor in sync, and changing them does nothing.
  EXPECT_FALSE(nosync.is_clean(RegionIndex(100)));
  EXPECT_FALSE(nosync.in_sync(RegionIndex(100)));
  nosync.set_region_sync(RegionIndex(100), false);
  EXPECT_EQ(nosync.sync_count(), 100u);
}

TEST(RegionBits, BitsetIsLittleEndianBitNumberedAndRoundedTo64Regions) {
  RegionBits bits(70, false);
  ASSERT_EQ(bits.clean_bitset().size(), 16u) << "70 regions take two 64-region words";
  for (uint64_t n : {0, 7, 9, 63, 64, 69}) bits.mark_region(RegionIndex(n));
  const auto b = bits.clean_bitset();
  EXPECT_EQ(b[0], std::byte{0x7E}) << "regions 0 and 7 dirty: bits 0 and 7 of byte 0";
  EXPECT_EQ(b[1], std::byte{0xFD}) << "region 9 is bit 1 of byte 1";
  EXPECT_EQ(b[7], std::byte{0x7F}) << "region 63 is bit 7 of byte 7";
  EXPECT_EQ(b[8], std::byte{0x1E}) << "regions 64..69: 64 and 69 dirty, 65..68 clean";
  for (size_t i = 9; i < 16; ++i) EXPECT_EQ(b[i], std::byte{0}) << "padding byte " << i;
  for (size_t i = 2; i < 7; ++i) EXPECT_EQ(b[i], std::byte{0xFF}) << "byte " << i;
}

TEST(RegionBits, ResyncScanReturnsOutOfSyncRegionsInOrderOnce) {
  RegionBits bits(200, false);
  bits.resume_from(stored(200, {3, 63, 64, 65, 130, 199}), 200, false);
  EXPECT_EQ(bits.sync_count(), 194u);
  EXPECT_EQ(drain_work(bits), (std::vector<uint64_t>{3, 63, 64, 65, 130, 199}));
  EXPECT_FALSE(bits.get_resync_work().has_value()) << "the cursor stays past the end until reset";
  for (uint64_t n : {3, 63, 64, 65, 130, 199}) ASSERT_TRUE(bits.is_recovering(RegionIndex(n)));

  bits.set_region_sync(RegionIndex(64), true);
  EXPECT_EQ(bits.sync_count(), 195u);
  EXPECT_TRUE(bits.in_sync(RegionIndex(64)));
  EXPECT_FALSE(bits.is_recovering(RegionIndex(64)));
  bits.set_region_sync(RegionIndex(64), true);
  EXPECT_EQ(bits.sync_count(), 195u) << "setting a set bit again is not counted twice";
  bits.set_region_sync(RegionIndex(3), false);  // a failed resync
  EXPECT_EQ(bits.sync_count(), 195u);
  EXPECT_FALSE(bits.in_sync(RegionIndex(3)));
  EXPECT_FALSE(bits.is_recovering(RegionIndex(3)));
  EXPECT_FALSE(bits.get_resync_work().has_value()) << "no rescan before reset";

  bits.reset_resync_scan();
  // 3 is out of sync again; 63, 65, 130, 199 are still being recovered and are skipped.
  EXPECT_EQ(drain_work(bits), (std::vector<uint64_t>{3}));

  bits.set_region_sync(RegionIndex(10), false);  // a leg write failed on an in-sync region
  EXPECT_EQ(bits.sync_count(), 194u);
  bits.set_region_sync(RegionIndex(10), false);
  EXPECT_EQ(bits.sync_count(), 194u) << "clearing a clear bit does not count";
  bits.reset_resync_scan();
  EXPECT_EQ(drain_work(bits), (std::vector<uint64_t>{10}));
}

TEST(RegionBits, ScanCrossesWordsAndStopsAtTheLastRegion) {
  RegionBits bits(130, false);
  std::vector<uint64_t> all(130);
  for (uint64_t n = 0; n < 130; ++n) all[n] = n;
  EXPECT_EQ(drain_work(bits), all) << "the padding bits (130..191, all 0) are never returned";
}

TEST(RegionBits, ResumeKeepsStoredBitsMakesNewRegionsAndClearsPadding) {
  // Stored: the header describes 100 regions, all clean but 5; the bits after them are set, as leftovers
  // that must not count.
  const std::vector<std::byte> s = stored(192, {5});
  RegionBits grown(150, false);
  grown.resume_from(s, 100, false);
  for (uint64_t n = 0; n < 150; ++n) {
    const bool expect_in_sync = n < 100 && n != 5;
    ASSERT_EQ(grown.in_sync(RegionIndex(n)), expect_in_sync) << "region " << n;
    ASSERT_EQ(grown.is_clean(RegionIndex(n)), expect_in_sync) << "region " << n;
  }
  EXPECT_EQ(grown.sync_count(), 99u);
  EXPECT_FALSE(grown.take_touched().any()) << "resume itself touches nothing";

  RegionBits grown_nosync(150, true);
  grown_nosync.resume_from(s, 100, true);
  EXPECT_EQ(grown_nosync.sync_count(), 149u) << "only the stored dirty region 5 is out of sync";

  RegionBits shrunk(70, false);
  shrunk.resume_from(s, 128, false);
  EXPECT_EQ(shrunk.sync_count(), 69u);
  const auto b = shrunk.clean_bitset();
  ASSERT_EQ(b.size(), 16u);
  EXPECT_EQ(b[8], std::byte{0x3F}) << "regions 70, 71 (bits 6, 7 of byte 8) are padding now";
  for (size_t i = 9; i < 16; ++i) EXPECT_EQ(b[i], std::byte{0}) << "padding byte " << i;
}

TEST(RegionBits, TouchedFlagsFollowTheKernelRule) {
  RegionBits bits(10, false);
  bits.mark_region(RegionIndex(1));
  auto t = bits.take_touched();
  EXPECT_TRUE(t.dirtied);
  EXPECT_FALSE(t.cleaned);
  EXPECT_FALSE(bits.take_touched().any()) << "taking clears";

  bits.clear_region(RegionIndex(1));
  t = bits.take_touched();
  EXPECT_TRUE(t.cleaned);
  EXPECT_FALSE(t.dirtied);

  ASSERT_TRUE(bits.get_resync_work().has_value());
  t = bits.take_touched();
  EXPECT_TRUE(t.cleaned) << "setting a recovering bit counts as cleaned";
  EXPECT_FALSE(t.dirtied);

  bits.set_region_sync(RegionIndex(0), true);
  t = bits.take_touched();
  EXPECT_TRUE(t.cleaned) << "setting the sync bit";
  EXPECT_TRUE(t.dirtied) << "clearing the recovering bit";

  bits.clear_region(RegionIndex(2));  // already clean: still counts, as in the kernel
  EXPECT_TRUE(bits.take_touched().cleaned);

  bits.mark_region(RegionIndex(3));
  bits.retouch(RegionBits::Touched{true, false});
  t = bits.take_touched();
  EXPECT_TRUE(t.cleaned && t.dirtied) << "given back flags merge with new ones";
}

TEST(RegionBits, ForgetCleanClearsEveryCleanBitForGood) {
  RegionBits bits(100, true);
  bits.forget_clean();
  EXPECT_TRUE(bits.clean_frozen());
  for (uint64_t n = 0; n < 100; ++n) ASSERT_FALSE(bits.is_clean(RegionIndex(n)));
  bits.clear_region(RegionIndex(7));
  EXPECT_FALSE(bits.is_clean(RegionIndex(7))) << "clear_region has no effect after a failed leg flush";
  EXPECT_EQ(bits.sync_count(), 100u) << "sync bits are not clean bits";
  for (auto byte : bits.clean_bitset()) ASSERT_EQ(byte, std::byte{0});
}

}  // namespace
}  // namespace kcopyfs
