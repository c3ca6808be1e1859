// Write-back of origin writes (origin.h): a write that waits for copy-on-write is acknowledged once the
// origin holds its data, reaches the device only after its exceptions are durable, is seen by every read
// and write issued after its acknowledgement, is included in a snapshot created after it, and a failure to
// land fails the next flush. The COW device delays its metadata-area writes so that "acknowledged, not yet
// landed" lasts long enough to look at; no assertion depends on how long beyond that.
#include <gtest/gtest.h>

#include <condition_variable>
#include <future>
#include <mutex>
#include <string>
#include <vector>

#include "engine/fault_device.h"
#include "snapshot/origin.h"
#include "tests/snapshot/fault_file.h"
#include "tests/snapshot/origin_test_util.h"
#include "tests/support/test_support.h"

namespace kcopyfs::test {
namespace {

using Op = FaultDevice::Op;

constexpr uint64_t kOriginBytes = 1 << 20;  // 256 chunks of 4 KiB
constexpr uint64_t kCowBytes = 4 << 20;
constexpr uint64_t kSeed = 41;
constexpr uint64_t k4K = 4096;
constexpr auto kAreaDelay = std::chrono::milliseconds(1000);

class OriginWriteBackTest : public ::testing::Test {
 protected:
  void SetUp() override {
    write_pattern_file(dir_.file("origin.img"), kOriginBytes, kSeed);
    original_ = pattern(kSeed, 0, kOriginBytes);
    model_ = original_;
    auto dev = FaultyFile::open(dir_.file("origin.img"));
    origin_fault_ = &dev->fault();
    auto o = Origin::create(std::move(dev));
    ASSERT_TRUE(o.ok()) << o.error().message();
    origin_ = std::move(o).value();
    ASSERT_EQ(origin_->write_back_limit().value(), Origin::kDefaultWriteBackLimit.value());
    snap_ = create("s", &cow_);
    ASSERT_NE(snap_, nullptr);
    cow_->add_rule({Op::write, kArea0Of4K, Sector(8), 0, kAreaDelay});
    cow_->clear_records();
  }

  Snapshot* create(const std::string& name, FaultDevice** fault) {
    make_sparse_file(dir_.file(name + ".cow"), kCowBytes);
    auto cow = FaultyFile::open(dir_.file(name + ".cow"));
    *fault = &cow->fault();
    SnapshotOptions options;
    options.chunk_size = Sector(8);
    auto s = origin_->create_snapshot(name, std::move(cow), options);
    EXPECT_TRUE(s.ok()) << s.error().message();
    return s.ok() ? s.value() : nullptr;
  }

  std::vector<std::byte> origin_file() const { return read_file(dir_.file("origin.img"), 0, kOriginBytes); }

  TempDir dir_;
  std::vector<std::byte> original_, model_;
  std::unique_ptr<Origin> origin_;
  FaultDevice* origin_fault_ = nullptr;
  FaultDevice* cow_ = nullptr;
  Snapshot* snap_ = nullptr;
};

TEST_F(OriginWriteBackTest, AcknowledgedBeforeTheCommitLandsAfterItAndIsReadBack) {
  const auto a = pattern(1, 0, k4K);
  ASSERT_FALSE(write_at(*origin_, 5 * k4K, a));
  put(model_, 5 * k4K, a);
  EXPECT_FALSE(area0_written(cow_->records()))
      << "the origin write was acknowledged only after its exception's metadata area (no write-back)";
  // What a crash now would find: the origin unchanged, so the snapshot cannot miss the old chunk.
  EXPECT_TRUE(same_bytes(origin_file(), original_)) << "the write reached the origin before its commit";
  // A read issued after the acknowledgement sees the write (it waits for it to land).
  std::vector<std::byte> got(k4K);
  ASSERT_FALSE(read_at(*origin_, 5 * k4K, got));
  EXPECT_TRUE(same_bytes(got, a));
  EXPECT_TRUE(area0_written(cow_->records())) << "the write landed before its exception's area";
  EXPECT_TRUE(same_bytes(origin_file(), model_));
  EXPECT_TRUE(same_bytes(read_all(*snap_), original_));
  EXPECT_TRUE(same_bytes(read_all(*origin_), model_));
}

TEST_F(OriginWriteBackTest, AWriteOverlappingAnAcknowledgedOneLandsAfterIt) {
  const auto a = pattern(2, 0, 2 * k4K);
  const auto b = pattern(3, 0, 1024);  // inside a's second chunk
  const auto c = pattern(4, 0, k4K);   // elsewhere
  ASSERT_FALSE(write_at(*origin_, 7 * k4K, a));
  ASSERT_FALSE(write_at(*origin_, 8 * k4K + 1024, b));
  ASSERT_FALSE(write_at(*origin_, 20 * k4K, c));
  put(model_, 7 * k4K, a);
  put(model_, 8 * k4K + 1024, b);
  put(model_, 20 * k4K, c);
  ASSERT_FALSE(flush_dev(*origin_));
  EXPECT_TRUE(same_bytes(origin_file(), model_)) << "an older acknowledged write landed over a newer one";
  EXPECT_TRUE(same_bytes(read_all(*origin_), model_));
  EXPECT_TRUE(same_bytes(read_all(*snap_), original_));
}

TEST_F(OriginWriteBackTest, FlushWaitsForEveryAcknowledgedWriteAndItsExceptions) {
  for (uint64_t c = 30; c < 40; ++c) {
    const auto d = pattern(100 + c, 0, k4K);
    ASSERT_FALSE(write_at(*origin_, c * k4K, d));
    put(model_, c * k4K, d);
  }
  EXPECT_FALSE(area0_written(cow_->records()));
  ASSERT_FALSE(flush_dev(*origin_));
  EXPECT_TRUE(area0_written(cow_->records()));
  EXPECT_TRUE(same_bytes(origin_file(), model_)) << "a flush returned before every write landed";
  EXPECT_EQ(snap_->status().exceptions, 10u);
  // The files as they are now are what a crash would leave: a valid snapshot with the old data.
  origin_.reset();
  auto o = Origin::create(open_file(dir_.file("origin.img")));
  ASSERT_TRUE(o.ok());
  auto s = o.value()->attach_snapshot("s", open_file(dir_.file("s.cow")), false);
  ASSERT_TRUE(s.ok()) << s.error().message();
  EXPECT_TRUE(same_bytes(read_all(*s.value()), original_));
  EXPECT_TRUE(same_bytes(read_all(*o.value()), model_));
}

TEST_F(OriginWriteBackTest, AWriteThatFailsToLandFailsTheNextFlush) {
  struct Reported {
    std::mutex mutex;
    std::condition_variable changed;
    std::vector<std::string> failures;
  };
  auto reported = std::make_shared<Reported>();
  origin_->set_landing_failure_reporter([reported](Bytes offset, Bytes length, std::error_code error) {
    std::lock_guard lock(reported->mutex);
    reported->failures.push_back(std::to_string(offset.value()) + "+" + std::to_string(length.value()) + " " +
                                 std::to_string(error.value()));
    reported->changed.notify_all();
  });
  origin_fault_->fail_writes(Sector(9 * 8), Sector(8));
  const auto d = pattern(5, 0, k4K);
  EXPECT_FALSE(write_at(*origin_, 9 * k4K, d)) << "acknowledged before it was tried";
  {
    // Reported as it fails, without a flush.
    std::unique_lock lock(reported->mutex);
    ASSERT_TRUE(reported->changed.wait_for(lock, kWait, [&] { return !reported->failures.empty(); }))
        << "the failure to land was not reported";
    EXPECT_EQ(reported->failures,
              std::vector<std::string>{std::to_string(9 * k4K) + "+4096 " + std::to_string(EIO)});
  }
  EXPECT_EQ(flush_dev(*origin_), std::error_code(EIO, std::generic_category()))
      << "the flush hid that an acknowledged write never reached the device";
  EXPECT_FALSE(flush_dev(*origin_)) << "the failure was reported once, to the first flush after it";
  // The device kept its old data; the snapshot holds the old chunk either way.
  EXPECT_TRUE(same_bytes(origin_file(), original_));
  EXPECT_TRUE(same_bytes(read_all(*snap_), original_));
}

TEST_F(OriginWriteBackTest, AFailureToLandFailsOnlyFlushesIssuedAfterTheAcknowledgement) {
  // The first flush reaches the device at once and is held there until well after the write failed.
  origin_fault_->add_rule({Op::flush, Sector(0), Sector(0), 0, std::chrono::milliseconds(2500), 1});
  origin_fault_->fail_writes(Sector(9 * 8), Sector(8));
  std::promise<std::error_code> early;
  auto early_done = early.get_future();
  origin_->flush([&early](std::error_code ec) { early.set_value(ec); });
  const auto d = pattern(8, 0, k4K);
  ASSERT_FALSE(write_at(*origin_, 9 * k4K, d));
  EXPECT_EQ(flush_dev(*origin_), std::error_code(EIO, std::generic_category()))
      << "a flush issued after the acknowledgement hid the failure";
  ASSERT_EQ(early_done.wait_for(kWait), std::future_status::ready);
  EXPECT_FALSE(early_done.get()) << "a flush issued before the write was acknowledged took its failure";
  EXPECT_FALSE(flush_dev(*origin_));
}

TEST_F(OriginWriteBackTest, ASnapshotCreatedAfterTheAcknowledgementHoldsTheWrite) {
  const auto a = pattern(6, 0, k4K);
  ASSERT_FALSE(write_at(*origin_, 11 * k4K, a));
  put(model_, 11 * k4K, a);
  FaultDevice* t_cow = nullptr;
  Snapshot* t = create("t", &t_cow);
  ASSERT_NE(t, nullptr);
  EXPECT_TRUE(same_bytes(read_all(*t), model_)) << "a write acknowledged before the snapshot is missing";
  EXPECT_TRUE(same_bytes(read_all(*snap_), original_));
}

TEST_F(OriginWriteBackTest, TheLimitBoundsWhatIsAcknowledgedEarly) {
  origin_->set_write_back_limit(Bytes(k4K));
  struct Ack {
    std::promise<std::error_code> done;
    bool area_before = false;
  };
  std::vector<std::shared_ptr<Ack>> acks;
  std::vector<std::vector<std::byte>> data;
  for (uint64_t c = 50; c < 53; ++c) data.push_back(pattern(200 + c, 0, k4K));
  for (uint64_t i = 0; i < data.size(); ++i) {
    auto ack = std::make_shared<Ack>();
    acks.push_back(ack);
    FaultDevice* cow = cow_;
    origin_->write(Bytes((50 + i) * k4K), data[i], [ack, cow](std::error_code ec) {
      ack->area_before = area0_written(cow->records());
      ack->done.set_value(ec);
    });
    put(model_, (50 + i) * k4K, data[i]);
  }
  unsigned early = 0;
  for (auto& ack : acks) {
    auto f = ack->done.get_future();
    ASSERT_EQ(f.wait_for(kWait), std::future_status::ready);
    EXPECT_FALSE(f.get());
    if (!ack->area_before) ++early;
  }
  EXPECT_EQ(early, 1u) << "a 4 KiB limit holds one 4 KiB write at a time; the others wait for their commit";
  origin_->set_write_back_limit(Bytes(0));
  const auto last = pattern(300, 0, k4K);
  cow_->clear_records();
  ASSERT_FALSE(write_at(*origin_, 60 * k4K, last));
  put(model_, 60 * k4K, last);
  EXPECT_TRUE(area0_written(cow_->records())) << "write-back off, yet acknowledged before its commit";
  EXPECT_TRUE(same_bytes(read_all(*origin_), model_));
  EXPECT_TRUE(same_bytes(read_all(*snap_), original_));
}

TEST_F(OriginWriteBackTest, DestroyingTheOriginLandsWhatItAcknowledged) {
  const auto a = pattern(7, 0, k4K);
  ASSERT_FALSE(write_at(*origin_, 13 * k4K, a));
  put(model_, 13 * k4K, a);
  origin_.reset();
  EXPECT_TRUE(same_bytes(origin_file(), model_));
}

}  // namespace
}  // namespace kcopyfs::test
