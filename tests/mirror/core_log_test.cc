// CoreLog: the kernel's in-memory log (kernel-dm-notes.md §5.2): starting states per sync mode, a flush that
// does no I/O yet calls back asynchronously, resync bookkeeping, and its status words (§4.1).
#include <gtest/gtest.h>

#include <thread>

#include "tests/mirror/log_test_util.h"

namespace kcopyfs::test {
namespace {

std::unique_ptr<CoreLog> core(uint64_t regions, SyncMode mode = SyncMode::by_log) {
  auto log = CoreLog::create(kRegion, mirror_of(regions), mode);
  if (!log) throw std::runtime_error(log.error().message());
  return std::move(log).value();
}

TEST(CoreLog, WithoutNosyncEveryStartResyncsEverything) {
  for (SyncMode mode : {SyncMode::by_log, SyncMode::force_sync}) {
    auto log = core(100, mode);
    EXPECT_EQ(log->region_count(), 100u);
    EXPECT_EQ(log->region_size(), kRegion);
    EXPECT_EQ(log->sync_count(), 0u);
    EXPECT_TRUE(not_clean(*log).empty()) << "clean bits start all 1";
    EXPECT_EQ(out_of_sync(*log).size(), 100u);
    uint64_t expected = 0;
    while (auto r = log->get_resync_work()) EXPECT_EQ(r->value(), expected++);
    EXPECT_EQ(expected, 100u);
  }
}

TEST(CoreLog, NosyncStartsAllInSync) {
  auto log = core(100, SyncMode::nosync);
  EXPECT_EQ(log->sync_count(), 100u);
  EXPECT_TRUE(out_of_sync(*log).empty());
  EXPECT_FALSE(log->get_resync_work().has_value());
}

TEST(CoreLog, FlushDoesNothingButCallsBackAsynchronously) {
  auto log = core(10, SyncMode::nosync);
  log->mark_region(RegionIndex(3));
  const auto outcome = flush_wait(*log);
  EXPECT_TRUE(outcome.ok);
  EXPECT_NE(outcome.thread, std::this_thread::get_id()) << "the callback must not run inside flush()";
  log->clear_region(RegionIndex(3));
  EXPECT_TRUE(flush_wait(*log).ok);
  EXPECT_TRUE(log->is_clean(RegionIndex(3)));
  EXPECT_EQ(log->health(), 'A');
}

TEST(CoreLog, MarkClearAndResyncBookkeeping) {
  auto log = core(70, SyncMode::nosync);
  log->mark_region(RegionIndex(64));
  EXPECT_FALSE(log->is_clean(RegionIndex(64)));
  EXPECT_TRUE(log->in_sync(RegionIndex(64))) << "dirty is not out of sync";
  log->set_region_sync(RegionIndex(64), false);
  EXPECT_EQ(log->sync_count(), 69u);
  log->reset_resync_scan();
  auto r = log->get_resync_work();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->value(), 64u);
  EXPECT_FALSE(log->get_resync_work().has_value());
  log->set_region_sync(RegionIndex(64), true);
  log->clear_region(RegionIndex(64));
  EXPECT_EQ(log->sync_count(), 70u);
  EXPECT_TRUE(log->is_clean(RegionIndex(64)));
}

TEST(CoreLog, StatusWordsAsTheKernelPrintsThem) {
  EXPECT_EQ(core(4)->status_info(), "1 core");
  EXPECT_EQ(core(4)->status_table(), "core 1 1024 ");
  EXPECT_EQ(core(4, SyncMode::nosync)->status_table(), "core 2 1024 nosync ");
  EXPECT_EQ(core(4, SyncMode::force_sync)->status_table(), "core 2 1024 sync ");
  auto small = CoreLog::create(Sector(8), Sector(100), SyncMode::by_log);
  ASSERT_TRUE(small.ok());
  EXPECT_EQ(small.value()->status_table(), "core 1 8 ");
  EXPECT_EQ(small.value()->region_count(), 13u) << "the last region is partial";
}

TEST(CoreLog, RefusesRegionSizesTheKernelRefuses) {
  for (uint64_t rs : {0, 1, 3, 1000}) {
    auto log = CoreLog::create(Sector(rs), Sector(1 << 20), SyncMode::by_log);
    ASSERT_FALSE(log.ok()) << rs;
    EXPECT_EQ(log.error().errno_value(), EINVAL);
    EXPECT_NE(log.error().message().find("region size"), std::string::npos) << log.error().message();
  }
  auto larger = CoreLog::create(Sector(2048), Sector(1024), SyncMode::by_log);
  ASSERT_FALSE(larger.ok());
  EXPECT_NE(larger.error().message().find("larger than the mirror"), std::string::npos);
  EXPECT_TRUE(CoreLog::create(Sector(2), Sector(2), SyncMode::by_log).ok());
}

}  // namespace
}  // namespace kcopyfs::test
