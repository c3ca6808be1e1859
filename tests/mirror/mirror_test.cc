// The mirror target's behaviour, one rule a test: writes and reads, leg faults (D, R, F, S), every leg
// failing, log device failure, nosync, forced resync, replace, throttle, status strings.
#include <gtest/gtest.h>

#include <future>
#include <thread>

#include "engine/sync_io.h"
#include "tests/mirror/mirror_test_util.h"

namespace kcopyfs::test {
namespace {

using namespace std::chrono_literals;

std::vector<std::byte> data(uint64_t seed, uint64_t length) { return pattern(seed, 0, length); }

std::vector<std::byte> slice(const std::vector<std::byte>& v, uint64_t offset, uint64_t length) {
  return std::vector<std::byte>(v.begin() + static_cast<long>(offset),
                                v.begin() + static_cast<long>(offset + length));
}

TEST(MirrorTest, RefusesBadGeometry) {
  LegSet legs(2, 4, {1, 1});
  auto one = legs.open();
  one.pop_back();
  auto log = CoreLog::create(kTestRegion, Mirror::size_of(one), SyncMode::nosync);
  ASSERT_TRUE(log.ok());
  auto m = Mirror::create(std::move(one), std::unique_ptr<DirtyLog>(std::move(log).value()), test_options());
  EXPECT_FALSE(m.ok());
  // A log of another region size.
  auto devices = legs.open();
  auto log2 = CoreLog::create(Sector(256), Mirror::size_of(devices), SyncMode::nosync);
  ASSERT_TRUE(log2.ok());
  auto m2 =
      Mirror::create(std::move(devices), std::unique_ptr<DirtyLog>(std::move(log2).value()), test_options());
  EXPECT_FALSE(m2.ok());
}

TEST(MirrorTest, WritesReachEveryLegAndStatusIsTheKernels) {
  LegSet legs(2, 8, {1, 1});
  {
    auto m = make_core_mirror(legs, SyncMode::nosync);
    EXPECT_EQ(m->size().value(), legs.bytes());
    // Spans regions 0 and 1.
    const auto d = data(7, 2 * kRegionBytes);
    ASSERT_FALSE(mirror_write(*m, kRegionBytes / 2, d));
    std::vector<std::byte> back(d.size());
    for (int i = 0; i < 4; ++i) {  // round-robin: both legs serve
      ASSERT_FALSE(mirror_read(*m, kRegionBytes / 2, back));
      EXPECT_EQ(back, d);
    }
    EXPECT_GT(count_ops(legs.fault(0), FaultDevice::Op::read), 0u);
    EXPECT_GT(count_ops(legs.fault(1), FaultDevice::Op::read), 0u);
    EXPECT_EQ(m->status_info(), "2 " + legs.path(0) + " " + legs.path(1) + " 8/8 1 AA 1 core");
    EXPECT_EQ(m->status_table(), "core 2 128 nosync 2 " + legs.path(0) + " 0 " + legs.path(1) + " 0");
    const auto s = m->status();
    EXPECT_EQ(s.state(), "in-sync");
    EXPECT_EQ(s.regions_resynced, 0u);
  }
  EXPECT_EQ(legs.image(0), legs.image(1));
}

// Two overlapping writes in flight at once: were both sent to the legs together, leg 0 (which stalls the
// first write) would end with the first and leg 1 (which stalls the second) with the second, and the log
// would call the region clean with the legs different for good. The mirror sends the second only once the
// first is done.
TEST(MirrorTest, OverlappingWritesReachEveryLegInTheSameOrder) {
  LegSet legs(2, 8, {1, 1});
  {
    auto m = make_core_mirror(legs, SyncMode::nosync);
    using Op = FaultDevice::Op;
    legs.fault(0).add_rule({Op::write, Sector(0), Sector(~0ull >> 10), 0, 100ms, 1});
    legs.fault(1).add_rule({Op::write, Sector(0), Sector(~0ull >> 10), 0, 0ms, 1});
    legs.fault(1).add_rule({Op::write, Sector(0), Sector(~0ull >> 10), 0, 100ms, 1});
    const auto first = data(21, 3 * kBlock), second = data(22, 2 * kBlock);
    AlignedBuffer a(first.size()), b(second.size());
    a.fill(first);
    b.fill(second);
    std::promise<std::error_code> first_done, second_done;
    auto f1 = first_done.get_future(), f2 = second_done.get_future();
    std::atomic<int> order{0};
    int first_at = 0, second_at = 0;
    m->write(Bytes(kBlock), a.span(), [&](std::error_code ec) {
      first_at = ++order;
      first_done.set_value(ec);
    });
    m->write(Bytes(2 * kBlock), b.span(), [&](std::error_code ec) {
      second_at = ++order;
      second_done.set_value(ec);
    });
    ASSERT_EQ(f1.wait_for(kMirrorTimeout), std::future_status::ready);
    ASSERT_EQ(f2.wait_for(kMirrorTimeout), std::future_status::ready);
    EXPECT_FALSE(f1.get());
    EXPECT_FALSE(f2.get());
    EXPECT_LT(first_at, second_at) << "the overlapping write completed first";
  }
  const auto leg0 = legs.image(0), leg1 = legs.image(1);
  EXPECT_TRUE(leg0 == leg1) << "the legs differ after two overlapping writes";
  const std::vector<std::byte> expect = data(21, 3 * kBlock);
  // The last write wins on both: blocks 2-3 hold the second write, block 1 the first.
  EXPECT_TRUE(std::equal(leg0.begin() + 2 * kBlock, leg0.begin() + 4 * kBlock, data(22, 2 * kBlock).begin()));
  EXPECT_TRUE(std::equal(leg0.begin() + kBlock, leg0.begin() + 2 * kBlock, expect.begin()));
}

TEST(MirrorTest, NosyncCopiesNothing) {
  LegSet legs(2, 8, {1, 2});
  auto m = make_core_mirror(legs, SyncMode::nosync);
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(m->status().regions_resynced, 0u);
  EXPECT_EQ(count_ops(legs.fault(1), FaultDevice::Op::write), 0u);
  EXPECT_TRUE(m->wait_in_sync(1s));
}

TEST(MirrorTest, CoreLogResyncsEverythingFromTheDefaultLeg) {
  LegSet legs(3, 16, {1, 2, 3});
  const auto leg0 = legs.image(0);
  {
    auto m = make_core_mirror(legs, SyncMode::by_log);
    ASSERT_TRUE(m->wait_in_sync(kMirrorTimeout));
    const auto s = m->status();
    EXPECT_EQ(s.regions_resynced, 16u);
    EXPECT_EQ(s.bytes_resynced, legs.bytes());
    EXPECT_EQ(s.state(), "in-sync");
    EXPECT_EQ(m->status_info().find("16/16 1 AAA"), m->status_info().find("16/16"));
  }
  EXPECT_EQ(legs.image(1), leg0);
  EXPECT_EQ(legs.image(2), leg0);
}

TEST(MirrorTest, LegWriteFailureMarksDAndTheWriterSeesSuccess) {
  LegSet legs(3, 8, {1, 1, 1});
  const auto d = data(9, kRegionBytes);
  {
    auto m = make_core_mirror(legs, SyncMode::nosync);
    legs.fault(1).fail_all_writes();
    ASSERT_FALSE(mirror_write(*m, 3 * kRegionBytes, d));
    EXPECT_NE(m->status_info().find(" 1 ADA 1 core"), std::string::npos) << m->status_info();
    const auto s = m->status();
    EXPECT_FALSE(s.legs[1].in_set);
    // The region fell out of sync and is resynced among the legs left.
    ASSERT_TRUE(m->wait_in_sync(kMirrorTimeout));
    std::vector<std::byte> back(d.size());
    for (int i = 0; i < 4; ++i) {
      ASSERT_FALSE(mirror_read(*m, 3 * kRegionBytes, back));
      EXPECT_EQ(back, d);
    }
    // No more I/O goes to the failed leg.
    const size_t before = legs.fault(1).records().size();
    ASSERT_FALSE(mirror_write(*m, 0, d));
    ASSERT_FALSE(mirror_read(*m, 0, back));
    EXPECT_EQ(legs.fault(1).records().size(), before);
  }
  EXPECT_EQ(slice(legs.image(0), 3 * kRegionBytes, kRegionBytes), d);
  EXPECT_EQ(legs.image(0), legs.image(2));
  EXPECT_NE(slice(legs.image(1), 3 * kRegionBytes, kRegionBytes), d);
}

TEST(MirrorTest, DefaultLegFailureMovesTheDefault) {
  LegSet legs(2, 8, {1, 1});
  auto m = make_core_mirror(legs, SyncMode::nosync);
  EXPECT_EQ(m->default_leg(), 0u);
  legs.fault(0).fail_all_writes();
  const auto d = data(11, kRegionBytes);
  ASSERT_FALSE(mirror_write(*m, kRegionBytes, d));
  EXPECT_EQ(m->default_leg(), 1u);
  std::vector<std::byte> back(d.size());
  ASSERT_FALSE(mirror_read(*m, kRegionBytes, back));
  EXPECT_EQ(back, d);
  EXPECT_NE(m->status_info().find(" 1 DA "), std::string::npos) << m->status_info();
}

TEST(MirrorTest, ReadFailureIsRetriedOnAnotherLeg) {
  LegSet legs(2, 8, {1, 1});
  auto m = make_core_mirror(legs, SyncMode::nosync);
  legs.fault(0).fail_reads(Sector(0), Sector(~0ull >> 10));
  const auto expected = slice(legs.image(1), 0, 2 * kRegionBytes);
  std::vector<std::byte> back(expected.size());
  for (int i = 0; i < 3; ++i) {
    ASSERT_FALSE(mirror_read(*m, 0, back));
    EXPECT_EQ(back, expected);
  }
  EXPECT_NE(m->status_info().find(" 1 RA "), std::string::npos) << m->status_info();
  // An R leg is still written.
  const auto d = data(5, kRegionBytes);
  ASSERT_FALSE(mirror_write(*m, 0, d));
  m.reset();
  EXPECT_EQ(legs.image(0), legs.image(1));
}

TEST(MirrorTest, OutOfSyncRegionsAreReadFromTheDefaultLegOnly) {
  LegSet legs(2, 8, {1, 2});
  auto o = test_options();
  o.start_resync = false;
  auto m = make_core_mirror(legs, SyncMode::by_log, o);
  const auto expected = slice(legs.image(0), 0, kRegionBytes);
  std::vector<std::byte> back(kRegionBytes);
  for (int i = 0; i < 4; ++i) {
    ASSERT_FALSE(mirror_read(*m, 0, back));
    EXPECT_EQ(back, expected);
  }
  EXPECT_EQ(count_ops(legs.fault(1), FaultDevice::Op::read), 0u);
  // The default leg failing a read of an out-of-sync region: nobody else holds it.
  legs.fault(0).fail_reads(Sector(0), Sector(8));
  EXPECT_EQ(mirror_read(*m, 0, back), std::make_error_code(std::errc::io_error));
}

TEST(MirrorTest, EveryLegFailingGivesEio) {
  LegSet legs(2, 8, {1, 1});
  auto m = make_core_mirror(legs, SyncMode::nosync);
  for (unsigned i = 0; i < 2; ++i) {
    legs.fault(i).fail_reads(Sector(0), Sector(~0ull >> 10));
    legs.fault(i).fail_all_writes();
    legs.fault(i).fail_flushes();
  }
  std::vector<std::byte> back(kRegionBytes);
  EXPECT_EQ(mirror_read(*m, 0, back), std::make_error_code(std::errc::io_error));
  EXPECT_EQ(mirror_write(*m, 0, data(3, kRegionBytes)), std::make_error_code(std::errc::io_error));
  // With no leg left, every later operation fails too, without touching the legs.
  EXPECT_EQ(mirror_write(*m, kRegionBytes, data(3, kRegionBytes)), std::make_error_code(std::errc::io_error));
  EXPECT_EQ(mirror_read(*m, 0, back), std::make_error_code(std::errc::io_error));
  EXPECT_EQ(wait_io([&](IoCallback done) { m->flush(std::move(done)); }),
            std::make_error_code(std::errc::io_error));
  const auto s = m->status();
  EXPECT_FALSE(s.legs[0].in_set);
  EXPECT_FALSE(s.legs[1].in_set);
}

TEST(MirrorTest, FlushFailureMarksF) {
  LegSet legs(2, 8, {1, 1});
  auto m = make_core_mirror(legs, SyncMode::nosync);
  legs.fault(1).fail_flushes();
  EXPECT_FALSE(wait_io([&](IoCallback done) { m->flush(std::move(done)); }));
  EXPECT_NE(m->status_info().find(" 1 AF "), std::string::npos) << m->status_info();
  EXPECT_GE(count_ops(legs.fault(0), FaultDevice::Op::flush), 1u);
}

TEST(MirrorTest, UnalignedOrOutOfRangeIoIsRefused) {
  LegSet legs(2, 8, {1, 1});
  auto m = make_core_mirror(legs, SyncMode::nosync);
  std::vector<std::byte> b(kBlock);
  EXPECT_EQ(mirror_read(*m, legs.bytes(), b), std::make_error_code(std::errc::invalid_argument));
  EXPECT_EQ(mirror_write(*m, legs.bytes() - kBlock / 2, b),
            std::make_error_code(std::errc::invalid_argument));
}

TEST(MirrorTest, DiskLogWritesDirtyMarksBeforeTheLegsAndCleansLater) {
  LegSet legs(2, 8, {1, 1});
  const std::string log_path = legs.file("log.img");
  make_sparse_file(log_path, 1 << 20);
  auto log_file = FileDevice::open(log_path, OpenOptions{});
  ASSERT_TRUE(log_file.ok());
  FaultDevice log_dev(*log_file.value());
  {
    auto o = test_options();
    o.update_interval = 50ms;
    auto m = make_disk_mirror(legs, log_dev, SyncMode::nosync, o);
    ASSERT_TRUE(m.ok()) << m.error().message();
    log_dev.clear_records();
    legs.fault(0).clear_records();
    ASSERT_FALSE(mirror_write(*m.value(), 2 * kRegionBytes, data(4, kRegionBytes)));
    // The log device was written and flushed before the leg write completed (the leg write was issued
    // after the log flush completed: the log records precede it).
    const auto log_records = log_dev.records();
    ASSERT_GE(log_records.size(), 2u);
    EXPECT_EQ(log_records[0].op, FaultDevice::Op::write);
    EXPECT_EQ(log_records[1].op, FaultDevice::Op::flush);
    // Region 2 is dirty on disk now; the update pass cleans it soon.
    auto image = read_file(log_path, 0, 2048);
    EXPECT_EQ(static_cast<unsigned>(image[1024]) & 4u, 0u);
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (std::chrono::steady_clock::now() < deadline) {
      image = read_file(log_path, 0, 2048);
      if ((static_cast<unsigned>(image[1024]) & 4u) != 0) break;
      std::this_thread::sleep_for(20ms);
    }
    EXPECT_NE(static_cast<unsigned>(image[1024]) & 4u, 0u) << "region 2 never cleaned on disk";
    // The legs were flushed before the clean bit was written.
    EXPECT_GE(count_ops(legs.fault(0), FaultDevice::Op::flush), 1u);
  }
}

TEST(MirrorTest, LogDeviceFailureIsReportedAndTheMirrorKeepsServing) {
  LegSet legs(2, 8, {1, 1});
  const std::string log_path = legs.file("log.img");
  make_sparse_file(log_path, 1 << 20);
  auto log_file = FileDevice::open(log_path, OpenOptions{});
  ASSERT_TRUE(log_file.ok());
  FaultDevice log_dev(*log_file.value());
  auto m = make_disk_mirror(legs, log_dev, SyncMode::nosync);
  ASSERT_TRUE(m.ok()) << m.error().message();
  log_dev.fail_all_writes();
  const auto d = data(6, kRegionBytes);
  ASSERT_FALSE(mirror_write(*m.value(), kRegionBytes, d));
  std::vector<std::byte> back(d.size());
  ASSERT_FALSE(mirror_read(*m.value(), kRegionBytes, back));
  EXPECT_EQ(back, d);
  const std::string info = m.value()->status_info();
  EXPECT_EQ(info.substr(info.size() - 2), " D") << info;
  EXPECT_EQ(m.value()->status().log_health, 'D');
  EXPECT_NE(info.find(" 1 AA 3 disk " + log_path), std::string::npos) << info;
}

TEST(MirrorTest, ForcedResyncCopiesEverything) {
  LegSet legs(2, 8, {1, 2});
  auto m = make_core_mirror(legs, SyncMode::nosync);
  EXPECT_EQ(m->status().regions_resynced, 0u);
  ASSERT_TRUE(m->resync_all().ok());
  ASSERT_TRUE(m->wait_in_sync(kMirrorTimeout));
  EXPECT_EQ(m->status().regions_resynced, 8u);
  m.reset();
  EXPECT_EQ(legs.image(0), legs.image(1));
}

TEST(MirrorTest, ReplaceLegResyncsTheNewLeg) {
  LegSet legs(2, 8, {1, 1});
  const std::string fresh = legs.file("new.img");
  make_sparse_file(fresh, legs.bytes());
  const auto d = data(8, kRegionBytes);
  {
    auto m = make_core_mirror(legs, SyncMode::nosync);
    ASSERT_FALSE(mirror_write(*m, 5 * kRegionBytes, d));
    auto old = m->replace_leg(legs.path(1), legs.open_one(fresh));
    ASSERT_TRUE(old.ok()) << old.error().message();
    EXPECT_EQ(old.value()->path(), legs.path(1));
    EXPECT_NE(m->status_info().find(fresh), std::string::npos);
    // Writes during the migration reach the new leg too.
    ASSERT_FALSE(mirror_write(*m, 6 * kRegionBytes, d));
    ASSERT_TRUE(m->wait_in_sync(kMirrorTimeout));
    EXPECT_EQ(m->status().regions_resynced, 8u);
    // No such leg; too small a leg.
    const std::string other = legs.file("other.img");
    make_sparse_file(other, legs.bytes());
    EXPECT_FALSE(m->replace_leg(std::string("/nonexistent"), legs.open_one(other)).ok());
    const std::string small = legs.file("small.img");
    make_sparse_file(small, kRegionBytes);
    EXPECT_FALSE(m->replace_leg(0, legs.open_one(small)).ok());
  }
  EXPECT_EQ(legs.image(fresh), legs.image(0));
  EXPECT_EQ(slice(legs.image(fresh), 5 * kRegionBytes, kRegionBytes), d);
  EXPECT_EQ(slice(legs.image(fresh), 6 * kRegionBytes, kRegionBytes), d);
}

TEST(MirrorTest, ResyncCopyFailureMarksS) {
  LegSet legs(3, 8, {1, 2, 2});
  auto o = test_options();
  o.start_resync = false;
  auto m = make_core_mirror(legs, SyncMode::by_log, o);
  legs.fault(2).fail_writes(Sector(3 * kTestRegion.value()), Sector(8));
  m->start_resync();
  ASSERT_TRUE(m->wait_in_sync(kMirrorTimeout));
  EXPECT_NE(m->status_info().find(" 1 AAS "), std::string::npos) << m->status_info();
  m.reset();
  EXPECT_EQ(legs.image(0), legs.image(1));
}

TEST(MirrorTest, WritesToARegionUnderRecoveryWaitForIt) {
  LegSet legs(2, 8, {1, 2});
  auto o = test_options();
  o.start_resync = false;
  auto m = make_core_mirror(legs, SyncMode::by_log, o);
  // The copy of region 0 to leg 1 is held 300 ms once it reaches the leg.
  auto reached = std::make_shared<std::promise<void>>();
  FaultDevice::Rule slow{FaultDevice::Op::write, Sector(0), kTestRegion, 0, 300ms, 1};
  slow.on_match = [reached] { reached->set_value(); };
  legs.fault(1).add_rule(slow);
  m->start_resync();
  ASSERT_EQ(reached->get_future().wait_for(kMirrorTimeout), std::future_status::ready);
  const auto d = data(12, kRegionBytes);
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_FALSE(mirror_write(*m, 0, d));
  // Had it not waited, it would be done at once, and the copy (of the old data) would land after it on leg 1.
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 150ms);
  ASSERT_TRUE(m->wait_in_sync(kMirrorTimeout));
  m.reset();
  EXPECT_EQ(legs.image(0), legs.image(1));
  EXPECT_EQ(slice(legs.image(1), 0, kRegionBytes), d);
}

TEST(MirrorTest, ResyncKeepsTheDefaultWindowOfRegionsInFlight) {
  LegSet legs(2, 2 * MirrorOptions{}.resync_window, {1, 2});
  auto o = test_options();
  o.start_resync = false;
  auto m = make_core_mirror(legs, SyncMode::by_log, o);
  // Slow reads of the source: every region of the first window is handed out before any copy ends.
  legs.fault(0).set_latency(FaultDevice::Op::read, 300ms);
  m->start_resync();
  ASSERT_TRUE(m->wait_in_sync(kMirrorTimeout));
  // One read per 64 KiB region: the window, not the kcopyd pool, bounds the copies in flight (a lower bound
  // short of the whole window, in case a busy machine delays the worker while it hands out the first ones).
  const unsigned window = MirrorOptions{}.resync_window;
  EXPECT_GE(window, 64u);
  EXPECT_LE(legs.fault(0).peak_in_flight(FaultDevice::Op::read), window);
  EXPECT_GT(legs.fault(0).peak_in_flight(FaultDevice::Op::read), window / 2);
  m.reset();
  EXPECT_EQ(legs.image(0), legs.image(1));
}

TEST(MirrorTest, ResyncedRegionsReachTheDiskLogInBatchesNotOneWriteEach) {
  LegSet legs(2, 64, {1, 2});
  const std::string log_path = legs.file("log.img");
  make_sparse_file(log_path, 1 << 20);
  auto log_file = FileDevice::open(log_path, OpenOptions{});
  ASSERT_TRUE(log_file.ok());
  FaultDevice log_dev(*log_file.value());
  for (unsigned window : {1u, 32u}) {
    auto o = test_options();
    o.resync_window = window;
    o.start_resync = false;
    o.update_interval = 1h;  // only the pass at the end of the resync writes the log
    auto m = make_disk_mirror(legs, log_dev, SyncMode::force_sync, o);
    ASSERT_TRUE(m.ok()) << m.error().message();
    log_dev.clear_records();
    legs.fault(0).clear_records();
    m.value()->start_resync();
    ASSERT_TRUE(m.value()->wait_in_sync(kMirrorTimeout));
    // 64 regions completed: the log is written (and the legs flushed before it) once the resync has gone
    // idle, not once per region, even when the window is one region and so empties after every copy.
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (count_ops(log_dev, FaultDevice::Op::write) == 0 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(10ms);
    std::this_thread::sleep_for(100ms);
    EXPECT_GE(count_ops(log_dev, FaultDevice::Op::write), 1u) << "window " << window;
    // A little slack for a spurious wake-up of the worker; one write per region would be 64.
    EXPECT_LE(count_ops(log_dev, FaultDevice::Op::write), 4u) << "window " << window;
    EXPECT_LE(count_ops(legs.fault(0), FaultDevice::Op::flush), 4u) << "window " << window;
    m.value().reset();
    EXPECT_EQ(legs.image(0), legs.image(1));
  }
}

TEST(MirrorTest, ThrottleChangesDuringAResync) {
  LegSet legs(2, 64, {1, 2});  // 4 MiB
  auto o = test_options();
  o.throttle_bytes_per_second = 512 * 1024;
  auto m = make_core_mirror(legs, SyncMode::by_log, o);
  // At 512 KiB/s, 4 MiB cannot be copied in 500 ms (lower bound only: a slow machine may copy less).
  std::this_thread::sleep_for(500ms);
  auto s = m->status();
  EXPECT_LT(s.regions_resynced, 32u);
  EXPECT_EQ(s.state(), "resyncing");
  EXPECT_GT(s.resync_bytes_per_second, 0.0);
  m->set_throttle(100, 0);
  ASSERT_TRUE(m->wait_in_sync(kMirrorTimeout));
  // Slow again for a forced resync: it takes at least what the cap allows.
  m->set_throttle(100, 2 * 1024 * 1024);
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(m->resync_all().ok());
  ASSERT_TRUE(m->wait_in_sync(kMirrorTimeout));
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 1500ms);
}

}  // namespace
}  // namespace kcopyfs::test
