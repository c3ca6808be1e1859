// The region hash's transitions (kernel-dm-notes.md §6.3) over a core log.
#include "mirror/region_hash.h"

#include <gtest/gtest.h>

#include "mirror/core_log.h"

namespace kcopyfs {
namespace {

constexpr Sector kRs = Sector(128);

std::unique_ptr<CoreLog> log_of(uint64_t regions, SyncMode mode) {
  auto log = CoreLog::create(kRs, Sector(regions * kRs.value()), mode);
  EXPECT_TRUE(log.ok());
  return std::move(log).value();
}

TEST(RegionHashTest, UntrackedRegionsTakeTheirStateFromTheLog) {
  auto in = log_of(4, SyncMode::nosync);
  RegionHash h(*in);
  EXPECT_EQ(h.state(RegionIndex(2)), RegionState::clean);
  auto out = log_of(4, SyncMode::by_log);
  RegionHash h2(*out);
  EXPECT_EQ(h2.state(RegionIndex(2)), RegionState::nosync);
  EXPECT_EQ(h.tracked(), 0u);
}

TEST(RegionHashTest, CleanDirtyCleanMarksAndClearsTheLog) {
  auto log = log_of(4, SyncMode::nosync);
  RegionHash h(*log);
  const RegionIndex r(1);
  h.begin_write(r);
  EXPECT_EQ(h.state(r), RegionState::dirty);
  EXPECT_FALSE(log->is_clean(r));
  h.begin_write(r);
  EXPECT_FALSE(h.end_write(r));
  EXPECT_EQ(h.state(r), RegionState::dirty);  // one write still pending
  EXPECT_FALSE(h.end_write(r));
  EXPECT_EQ(h.state(r), RegionState::clean);
  EXPECT_FALSE(log->is_clean(r));  // lazily: only the update pass clears it
  EXPECT_EQ(h.clear_clean_regions(), 1u);
  EXPECT_TRUE(log->is_clean(r));
  EXPECT_EQ(h.tracked(), 0u);
}

TEST(RegionHashTest, AWriteAfterListingLeavesTheCleanList) {
  auto log = log_of(4, SyncMode::nosync);
  RegionHash h(*log);
  const RegionIndex r(0);
  h.begin_write(r);
  h.end_write(r);
  h.begin_write(r);  // written again before the update pass
  EXPECT_EQ(h.clear_clean_regions(), 0u);
  EXPECT_FALSE(log->is_clean(r));
  h.end_write(r);
  EXPECT_EQ(h.clear_clean_regions(), 1u);
}

TEST(RegionHashTest, LegFailureMakesNosyncUntilRecovered) {
  auto log = log_of(4, SyncMode::nosync);
  RegionHash h(*log);
  const RegionIndex r(3);
  h.begin_write(r);
  h.mark_nosync(r);
  EXPECT_FALSE(log->in_sync(r));
  EXPECT_FALSE(h.end_write(r));
  EXPECT_EQ(h.state(r), RegionState::nosync);
  EXPECT_EQ(h.clear_clean_regions(), 0u);
  auto work = log->get_resync_work();
  ASSERT_TRUE(work.has_value());
  EXPECT_EQ(work->value(), 3u);
  EXPECT_TRUE(h.begin_recovery(r));
  std::vector<RegionHash::Parked> released;
  h.end_recovery(r, true, released);
  EXPECT_TRUE(log->in_sync(r));
  EXPECT_TRUE(log->is_clean(r));
  EXPECT_EQ(h.state(r), RegionState::clean);
}

TEST(RegionHashTest, RecoveryWaitsForPendingWritesAndReleasesParkedOnes) {
  auto log = log_of(4, SyncMode::by_log);
  RegionHash h(*log);
  const RegionIndex r(0);
  h.begin_write(r);  // NOSYNC: no log mark
  ASSERT_EQ(log->get_resync_work()->value(), 0u);
  EXPECT_FALSE(h.begin_recovery(r));  // a write is pending
  EXPECT_TRUE(h.recovering(r));
  int ran = 0;
  h.park(r, [&] { ++ran; });
  EXPECT_TRUE(h.end_write(r));  // quiesced now
  std::vector<RegionHash::Parked> released;
  h.end_recovery(r, false, released);
  EXPECT_EQ(h.state(r), RegionState::nosync);
  EXPECT_FALSE(log->in_sync(r));
  ASSERT_EQ(released.size(), 1u);
  released[0]();
  EXPECT_EQ(ran, 1);
}

}  // namespace
}  // namespace kcopyfs
