// DiskLog: the kernel's resume (kernel-dm-notes.md §5.4) and flush protocol (§5.5) on real files, failures
// through FaultDevice, and its status words (§4.1).
#include <gtest/gtest.h>

#include <thread>

#include "tests/mirror/log_test_util.h"

namespace kcopyfs::test {
namespace {

constexpr uint64_t kMiB = 1 << 20;

// Resume: what a stored log becomes.

TEST(DiskLogResume, ACrashLeavesExactlyTheRegionsDirtyAtTheTimeOutOfSync) {
  TempDir dir;
  LogImage image(dir.file("m0.log"), kMiB);
  {
    FakeLegs legs;
    auto log = open_log(image, 200, SyncMode::by_log, legs.callback());
    EXPECT_EQ(log->sync_count(), 0u) << "a new log resyncs everything";
    resync_all(*log);
    for (uint64_t n : {5, 17, 64, 199}) log->mark_region(RegionIndex(n));
    ASSERT_TRUE(flush_wait(*log).ok);
    log->clear_region(RegionIndex(17));  // its writes ended, but no flush made that durable
    // The "crash": the log goes away without a clean flush.
  }
  image.reopen();
  auto log = open_log(image, 200);
  EXPECT_EQ(out_of_sync(*log), (std::set<uint64_t>{5, 17, 64, 199}));
  EXPECT_EQ(not_clean(*log), (std::set<uint64_t>{5, 17, 64, 199}));
  EXPECT_EQ(log->sync_count(), 196u);
  std::vector<uint64_t> work;
  while (auto r = log->get_resync_work()) work.push_back(r->value());
  EXPECT_EQ(work, (std::vector<uint64_t>{5, 17, 64, 199}));
  EXPECT_EQ(log->health(), 'A');
}

TEST(DiskLogResume, NosyncStartsAllInSyncWhateverTheDiskSays) {
  TempDir dir;
  LogImage image(dir.file("m0.log"), kMiB);
  write_raw_log(image.path, 2, 100, {5, 6});
  image.reopen();
  auto log = open_log(image, 100, SyncMode::nosync);
  EXPECT_EQ(log->sync_count(), 100u);
  EXPECT_TRUE(out_of_sync(*log).empty());
  EXPECT_TRUE(not_clean(*log).empty());
  EXPECT_FALSE(log->get_resync_work().has_value()) << "nothing to resync";
  EXPECT_TRUE(raw_dirty(read_file(image.path, 0, 1536), 100).empty()) << "and that is durable";
}

TEST(DiskLogResume, ForceSyncResyncsEverythingEvenIfTheDiskSaysClean) {
  TempDir dir;
  LogImage image(dir.file("m0.log"), kMiB);
  write_raw_log(image.path, 2, 100, {});
  image.reopen();
  auto log = open_log(image, 100, SyncMode::force_sync);
  EXPECT_EQ(log->sync_count(), 0u);
  EXPECT_EQ(not_clean(*log).size(), 100u);
  EXPECT_EQ(raw_dirty(read_file(image.path, 0, 1536), 100).size(), 100u) << "every clean bit cleared on disk";
  auto first = log->get_resync_work();
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->value(), 0u);
}

TEST(DiskLogResume, AWrongMagicMakesANewLog) {
  TempDir dir;
  LogImage image(dir.file("m0.log"), kMiB);
  write_raw_log(image.path, 2, 100, {}, /*magic=*/0x4D695273);
  image.reopen();
  auto log = open_log(image, 100);
  EXPECT_EQ(log->sync_count(), 0u);
  const auto b = read_file(image.path, 0, 16);
  EXPECT_EQ(raw_le32(b, 0), 0x4D695272u);
}

TEST(DiskLogResume, Version1IsReadAndUpgradedTo2) {
  TempDir dir;
  LogImage image(dir.file("m0.log"), kMiB);
  write_raw_log(image.path, 1, 100, {2, 50, 99});
  image.reopen();
  auto log = open_log(image, 100);
  EXPECT_EQ(out_of_sync(*log), (std::set<uint64_t>{2, 50, 99}));
  const auto b = read_file(image.path, 0, 1536);
  EXPECT_EQ(raw_le32(b, 4), 2u) << "written back as version 2";
  EXPECT_EQ(raw_dirty(b, 100), (std::set<uint64_t>{2, 50, 99}));
}

TEST(DiskLogResume, OtherVersionsAreRefusedAndNothingIsWritten) {
  for (uint32_t version : {0u, 3u, 0x12345678u}) {
    TempDir dir;
    LogImage image(dir.file("m0.log"), kMiB);
    write_raw_log(image.path, version, 100, {7});
    image.reopen();
    const auto before = whole_file(image.path);
    auto log = DiskLog::open(image.dev(), kRegion, mirror_of(100), SyncMode::by_log, {});
    ASSERT_FALSE(log.ok()) << "version " << version;
    EXPECT_EQ(log.error().errno_value(), EINVAL);
    const std::string& m = log.error().message();
    EXPECT_NE(m.find("version " + std::to_string(version)), std::string::npos) << m;
    EXPECT_NE(m.find(image.path), std::string::npos) << m;
    for (const auto& r : image.fault->records())
      EXPECT_EQ(r.op, FaultDevice::Op::read) << "nothing but reads";
    EXPECT_EQ(whole_file(image.path), before);
  }
}

TEST(DiskLogResume, ATooSmallDeviceIsRefusedNamingTheSizes) {
  TempDir dir;
  LogImage small(dir.file("small.log"), 1024);
  auto log = DiskLog::open(small.dev(), kRegion, mirror_of(2048), SyncMode::by_log, {});
  ASSERT_FALSE(log.ok());
  const std::string& m = log.error().message();
  EXPECT_NE(m.find(small.path), std::string::npos) << m;
  EXPECT_NE(m.find("1024 bytes"), std::string::npos) << m;
  EXPECT_NE(m.find("1536 bytes"), std::string::npos) << m;
  EXPECT_TRUE(small.fault->records().empty()) << "refused before any I/O";
  EXPECT_EQ(whole_file(small.path), std::vector<std::byte>(1024, std::byte{0}));
  LogImage enough(dir.file("enough.log"), 1536);
  EXPECT_TRUE(DiskLog::open(enough.dev(), kRegion, mirror_of(2048), SyncMode::by_log, {}).ok());
}

TEST(DiskLogResume, RefusesARegionSizeTheKernelRefuses) {
  TempDir dir;
  LogImage image(dir.file("m0.log"), kMiB);
  for (uint64_t rs : {1, 3, 4096}) {
    auto log = DiskLog::open(image.dev(), Sector(rs), Sector(2048), SyncMode::by_log, {});
    ASSERT_FALSE(log.ok()) << rs;
    EXPECT_NE(log.error().message().find("region size"), std::string::npos) << log.error().message();
  }
  EXPECT_TRUE(image.fault->records().empty());
}

TEST(DiskLogResume, AGrowingMirrorsNewRegionsAreOutOfSync) {
  TempDir dir;
  LogImage image(dir.file("m0.log"), kMiB);
  open_log(image, 100, SyncMode::nosync).reset();  // 100 regions, all clean
  auto grown = open_log(image, 200);
  std::set<uint64_t> expected;
  for (uint64_t n = 100; n < 200; ++n) expected.insert(n);
  EXPECT_EQ(out_of_sync(*grown), expected);
  EXPECT_EQ(grown->sync_count(), 100u);
  const auto b = read_file(image.path, 0, 1536);
  EXPECT_EQ(raw_le64(b, 8), 200u) << "the header now describes the whole mirror";
  EXPECT_EQ(raw_dirty(b, 200), expected);
  grown.reset();
  // nosync makes them clean instead.
  open_log(image, 100, SyncMode::nosync).reset();
  EXPECT_EQ(open_log(image, 300, SyncMode::nosync)->sync_count(), 300u);
}

TEST(DiskLogResume, AShrunkMirrorClearsTheBitsPastItsEnd) {
  TempDir dir;
  LogImage image(dir.file("m0.log"), kMiB);
  write_raw_log(image.path, 2, 128, {});
  image.reopen();
  auto log = open_log(image, 70);
  EXPECT_EQ(log->sync_count(), 70u);
  const auto b = read_file(image.path, 0, 1536);
  EXPECT_EQ(raw_le64(b, 8), 70u);
  EXPECT_EQ(b[1024 + 8], std::byte{0x3F}) << "regions 64..69 clean, 70 and 71 cleared";
  for (size_t i = 9; i < 16; ++i) EXPECT_EQ(b[1024 + i], std::byte{0}) << "bitset byte " << i;
}

TEST(DiskLogResume, AReadFailureMarksTheDeviceFailedAndTrustsNothing) {
  TempDir dir;
  LogImage image(dir.file("m0.log"), kMiB);
  write_raw_log(image.path, 2, 100, {});
  image.reopen();
  image.fault->fail_reads(Sector(0), Sector(8));
  auto log = open_log(image, 100);
  EXPECT_EQ(log->health(), 'D');
  EXPECT_EQ(log->status_info(), "3 disk " + image.path + " D");
  EXPECT_EQ(log->sync_count(), 0u) << "everything out of sync";
  EXPECT_EQ(raw_dirty(read_file(image.path, 0, 1536), 100).size(), 100u) << "and written back as such";
  log.reset();
  // As in the kernel, nosync still means all in sync.
  auto nosync = open_log(image, 100, SyncMode::nosync);
  EXPECT_EQ(nosync->health(), 'D');
  EXPECT_EQ(nosync->sync_count(), 100u);
}

TEST(DiskLogResume, AFailedWriteBackIsReportedNotRefused) {
  TempDir dir;
  LogImage image(dir.file("m0.log"), kMiB);
  image.fault->fail_all_writes();
  auto log = open_log(image, 100);
  EXPECT_EQ(log->health(), 'D');
  log.reset();
  image.fault->clear_rules();
  image.fault->fail_flushes();
  log = open_log(image, 100);
  EXPECT_EQ(log->health(), 'F');
}

// Flush protocol.

TEST(DiskLogFlush, NothingTouchedMeansNoIoYetAnAsynchronousCallback) {
  TempDir dir;
  LogImage image(dir.file("m0.log"), kMiB);
  FakeLegs legs;
  auto log = open_log(image, 100, SyncMode::nosync, legs.callback());
  image.fault->clear_records();
  const auto outcome = flush_wait(*log);
  EXPECT_TRUE(outcome.ok);
  EXPECT_NE(outcome.thread, std::this_thread::get_id()) << "the callback must not run inside flush()";
  EXPECT_TRUE(image.fault->records().empty());
  EXPECT_EQ(legs.calls(), 0u);
  // in_sync and is_clean ask nothing of the device either.
  EXPECT_TRUE(log->in_sync(RegionIndex(3)));
  EXPECT_TRUE(flush_wait(*log).ok);
  EXPECT_TRUE(image.fault->records().empty());
}

TEST(DiskLogFlush, DirtyMarksAreWrittenThenTheLogDeviceFlushedBeforeTheCallback) {
  TempDir dir;
  LogImage image(dir.file("m0.log"), kMiB);
  FakeLegs legs;
  auto log = open_log(image, 100, SyncMode::nosync, legs.callback());
  image.fault->clear_records();
  log->mark_region(RegionIndex(42));
  const auto outcome = flush_wait(*log, image.fault.get());
  EXPECT_TRUE(outcome.ok);
  EXPECT_EQ(render(image.fault->records()), "W0+3 F ");
  EXPECT_EQ(outcome.records_seen, 2u) << "the callback runs after the log device's flush completed";
  EXPECT_EQ(legs.calls(), 0u) << "no clean bit was set: the legs need no flush";
  EXPECT_EQ(raw_dirty(read_file(image.path, 0, 1536), 100), (std::set<uint64_t>{42}));
}

TEST(DiskLogFlush, CleanBitsAreWrittenOnlyAfterTheLegsFlushed) {
  TempDir dir;
  LogImage image(dir.file("m0.log"), kMiB);
  FakeLegs legs(image.fault.get());
  auto log = open_log(image, 100, SyncMode::nosync, legs.callback());
  log->mark_region(RegionIndex(42));
  log->mark_region(RegionIndex(43));
  ASSERT_TRUE(flush_wait(*log).ok);
  image.fault->clear_records();

  log->clear_region(RegionIndex(42));
  legs.hold();
  auto p = std::make_shared<std::promise<bool>>();
  auto f = p->get_future();
  log->flush([p](bool ok) { p->set_value(ok); });
  ASSERT_TRUE(legs.wait_calls(1));
  EXPECT_EQ(legs.records_at_call(), (std::vector<size_t>{0})) << "the legs are flushed before any log I/O";
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_TRUE(image.fault->records().empty()) << "no bitmap write while the legs' flush is in flight";
  EXPECT_EQ(f.wait_for(std::chrono::seconds(0)), std::future_status::timeout);
  EXPECT_TRUE(raw_dirty(read_file(image.path, 0, 1536), 100).count(42)) << "still dirty on disk";
  // Cleaned while the legs' flush is in flight: that flush may not cover 43's last write.
  log->clear_region(RegionIndex(43));
  legs.release();
  ASSERT_EQ(f.wait_for(kLogTimeout), std::future_status::ready);
  EXPECT_TRUE(f.get());
  EXPECT_EQ(render(image.fault->records()), "W0+3 ") << "only cleaned: written, no log-device flush";
  EXPECT_EQ(raw_dirty(read_file(image.path, 0, 1536), 100), (std::set<uint64_t>{43}))
      << "only what was clean when the legs' flush started";
  ASSERT_TRUE(flush_wait(*log).ok);
  EXPECT_EQ(legs.calls(), 2u) << "43 needs a flush of the legs of its own";
  EXPECT_TRUE(raw_dirty(read_file(image.path, 0, 1536), 100).empty());
}

TEST(DiskLogFlush, ResyncBookkeepingCountsAsTouchedAsInTheKernel) {
  TempDir dir;
  LogImage image(dir.file("m0.log"), kMiB);
  FakeLegs legs(image.fault.get());
  auto log = open_log(image, 10, SyncMode::by_log, legs.callback());
  image.fault->clear_records();
  ASSERT_TRUE(log->get_resync_work().has_value());  // sets a recovering bit: "cleaned"
  ASSERT_TRUE(flush_wait(*log).ok);
  EXPECT_EQ(legs.calls(), 1u);
  EXPECT_EQ(render(image.fault->records()), "W0+3 ");
  image.fault->clear_records();
  log->set_region_sync(RegionIndex(0), true);  // sets sync, clears recovering: both
  ASSERT_TRUE(flush_wait(*log).ok);
  EXPECT_EQ(legs.calls(), 2u);
  EXPECT_EQ(render(image.fault->records()), "W0+3 F ");
  EXPECT_EQ(raw_dirty(read_file(image.path, 0, 1536), 10).size(), 10u) << "sync bits are not stored";
}

TEST(DiskLogFlush, AFailedLegFlushClearsEveryCleanBitForGood) {
  TempDir dir;
  LogImage image(dir.file("m0.log"), kMiB);
  FakeLegs legs;
  auto log = open_log(image, 100, SyncMode::nosync, legs.callback());
  log->mark_region(RegionIndex(3));
  ASSERT_TRUE(flush_wait(*log).ok);
  log->clear_region(RegionIndex(3));
  legs.set_result(false);
  image.fault->clear_records();
  const auto outcome = flush_wait(*log);
  EXPECT_TRUE(outcome.ok) << "the log device is fine: the failed leg is the mirror's to report";
  EXPECT_EQ(render(image.fault->records()), "W0+3 F ") << "clearing bits dirties: the log device is flushed";
  EXPECT_EQ(raw_dirty(read_file(image.path, 0, 1536), 100).size(), 100u) << "every region dirty on disk";
  EXPECT_EQ(not_clean(*log).size(), 100u);
  EXPECT_EQ(log->sync_count(), 100u) << "in sync is another matter";
  // As in the kernel, the log itself stays alive: 'F' is the leg's health character, not the log's.
  EXPECT_EQ(log->health(), 'A');
  EXPECT_EQ(log->status_info(), "3 disk " + image.path + " A");

  legs.set_result(true);
  log->clear_region(RegionIndex(4));
  EXPECT_FALSE(log->is_clean(RegionIndex(4))) << "clear_region has no effect any more";
  ASSERT_TRUE(flush_wait(*log).ok);
  EXPECT_EQ(raw_dirty(read_file(image.path, 0, 1536), 100).size(), 100u);
  log.reset();
  image.reopen();
  EXPECT_EQ(open_log(image, 100)->sync_count(), 0u) << "after a restart everything is resynced";
}

TEST(DiskLogFlush, AFailedWriteSetsDAndTheNextFlushWritesAgain) {
  TempDir dir;
  LogImage image(dir.file("m0.log"), kMiB);
  auto log = open_log(image, 100, SyncMode::nosync);
  image.fault->fail_all_writes();
  log->mark_region(RegionIndex(9));
  EXPECT_FALSE(flush_wait(*log).ok);
  EXPECT_EQ(log->health(), 'D');
  EXPECT_EQ(log->status_info(), "3 disk " + image.path + " D");
  image.fault->clear_rules();
  image.fault->clear_records();
  EXPECT_TRUE(flush_wait(*log).ok);
  EXPECT_EQ(render(image.fault->records()), "W0+3 F ") << "the failed flush's work is done again";
  EXPECT_EQ(raw_dirty(read_file(image.path, 0, 1536), 100), (std::set<uint64_t>{9}));
  EXPECT_EQ(log->health(), 'D') << "sticky";
}

TEST(DiskLogFlush, AFailedLogDeviceFlushSetsF) {
  TempDir dir;
  LogImage image(dir.file("m0.log"), kMiB);
  auto log = open_log(image, 100, SyncMode::nosync);
  image.fault->fail_flushes();
  log->mark_region(RegionIndex(9));
  EXPECT_FALSE(flush_wait(*log).ok);
  EXPECT_EQ(log->health(), 'F');
  EXPECT_EQ(log->status_info(), "3 disk " + image.path + " F");
  image.fault->clear_rules();
  image.fault->clear_records();
  EXPECT_TRUE(flush_wait(*log).ok);
  EXPECT_EQ(render(image.fault->records()), "W0+3 F ") << "written and flushed again";
  EXPECT_EQ(log->health(), 'F');
}

TEST(DiskLogFlush, ConcurrentFlushesAreSerializedAndEveryCallbackRuns) {
  TempDir dir;
  LogImage image(dir.file("m0.log"), kMiB);
  FakeLegs legs(image.fault.get());
  auto log = open_log(image, 100, SyncMode::nosync, legs.callback());
  log->mark_region(RegionIndex(1));
  ASSERT_TRUE(flush_wait(*log).ok);
  image.fault->clear_records();

  std::mutex m;
  std::vector<std::pair<char, size_t>> done;  // which callback, and how many records it saw
  std::condition_variable cv;
  auto callback = [&](char name) {
    return [&, name](bool ok) {
      EXPECT_TRUE(ok);
      const size_t seen = image.fault->records().size();
      std::lock_guard lock(m);
      done.emplace_back(name, seen);
      cv.notify_all();
    };
  };
  log->clear_region(RegionIndex(1));
  legs.hold();
  log->flush(callback('a'));  // in flight, waiting for the legs
  ASSERT_TRUE(legs.wait_calls(1));
  log->mark_region(RegionIndex(2));
  log->flush(callback('b'));  // requested while 'a' is in flight
  log->mark_region(RegionIndex(3));
  log->flush(callback('c'));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_TRUE(image.fault->records().empty()) << "nothing starts while the first flush waits";
  legs.release();
  {
    std::unique_lock lock(m);
    ASSERT_TRUE(cv.wait_for(lock, kLogTimeout, [&] { return done.size() == 3; }));
  }
  // 'a' wrote (clean only); 'b' and 'c' were served by one more flush: write, then the log device flush.
  EXPECT_EQ(render(image.fault->records()), "W0+3 W0+3 F ");
  EXPECT_EQ(image.fault->peak_in_flight(FaultDevice::Op::write), 1u);
  ASSERT_EQ(done.size(), 3u);
  EXPECT_EQ(done[0], (std::pair<char, size_t>{'a', 1}));
  EXPECT_EQ(done[1].second, 3u) << "'b' saw its marks flushed";
  EXPECT_EQ(done[2].second, 3u) << "'c' too";
  EXPECT_EQ(legs.calls(), 1u) << "the second flush only dirtied";
  EXPECT_EQ(raw_dirty(read_file(image.path, 0, 1536), 100), (std::set<uint64_t>{2, 3}));
}

TEST(DiskLogFlush, ManyThreadsMarkingAndFlushingEndConsistent) {
  TempDir dir;
  LogImage image(dir.file("m0.log"), kMiB);
  FakeLegs legs;
  auto log = open_log(image, 4096, SyncMode::nosync, legs.callback());
  constexpr int kThreads = 4;
  constexpr int kPerThread = 200;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        const RegionIndex r(static_cast<uint64_t>(t * kPerThread + i));
        log->mark_region(r);
        ASSERT_TRUE(flush_wait(*log).ok);
        if (i % 2 == 0) log->clear_region(r);
      }
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_TRUE(flush_wait(*log).ok);
  std::set<uint64_t> expected;
  for (int t = 0; t < kThreads; ++t)
    for (int i = 1; i < kPerThread; i += 2) expected.insert(static_cast<uint64_t>(t * kPerThread + i));
  EXPECT_EQ(raw_dirty(read_file(image.path, 0, log->io_size().value()), 4096), expected);
  EXPECT_EQ(not_clean(*log), expected);
}

// Status.

TEST(DiskLogStatus, StatusWordsAsTheKernelPrintsThemWithThePathForTheDevice) {
  TempDir dir;
  LogImage image(dir.file("m0.log"), kMiB);
  auto log = open_log(image, 100);
  EXPECT_EQ(log->status_info(), "3 disk " + image.path + " A");
  EXPECT_EQ(log->status_table(), "disk 2 " + image.path + " 1024 ");
  log.reset();
  log = open_log(image, 100, SyncMode::nosync);
  EXPECT_EQ(log->status_table(), "disk 3 " + image.path + " 1024 nosync ");
  log.reset();
  log = open_log(image, 100, SyncMode::force_sync);
  EXPECT_EQ(log->status_table(), "disk 3 " + image.path + " 1024 sync ");
  EXPECT_EQ(log->region_size(), kRegion);
  EXPECT_EQ(log->region_count(), 100u);
}

}  // namespace
}  // namespace kcopyfs::test
