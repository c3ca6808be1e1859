// Deferred commit of writable-snapshot writes (snapshot.h): a first write into a writable snapshot is
// acknowledged once its data is written, before the metadata area recording its exception is durable; a
// flush of the snapshot waits for that area; an origin write to the chunk still waits for it. The COW device
// is a FaultDevice whose area writes are delayed, so that "not durable yet" lasts long enough to look at.
#include <gtest/gtest.h>

#include <filesystem>
#include <future>

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
constexpr uint64_t kSeed = 23;
constexpr uint64_t k4K = 4096;
constexpr Sector kChunk{8};
constexpr auto kAreaDelay = std::chrono::milliseconds(400);

// True when records hold a successful write to area 0 followed by a successful flush.
bool area_write_then_flush(const std::vector<FaultDevice::Record>& records) {
  bool written = false;
  for (const auto& r : records) {
    if (r.error != 0) continue;
    if (r.op == Op::write && r.start == kArea0Of4K) written = true;
    if (r.op == Op::flush && written) return true;
  }
  return false;
}

class DeferredCommitTest : public ::testing::Test {
 protected:
  void SetUp() override {
    write_pattern_file(dir_.file("origin.img"), kOriginBytes, kSeed);
    original_ = pattern(kSeed, 0, kOriginBytes);
    auto o = Origin::create(open_file(dir_.file("origin.img")));
    ASSERT_TRUE(o.ok()) << o.error().message();
    origin_ = std::move(o).value();
    // Origin writes acknowledged only once on the device, so that their acknowledgement shows when they
    // were let through (origin_write_back_test.cc shows the same order with write-back).
    origin_->set_write_back_limit(Bytes(0));
    make_sparse_file(dir_.file("s.cow"), kCowBytes);
    auto cow = FaultyFile::open(dir_.file("s.cow"));
    cow_ = cow.get();
    SnapshotOptions options;
    options.chunk_size = kChunk;
    options.writable = true;
    auto s = origin_->create_snapshot("s", std::move(cow), options);
    ASSERT_TRUE(s.ok()) << s.error().message();
    snap_ = s.value();
    model_ = original_;
  }

  // Copies the origin and COW files as they are now: what a crash at this instant would leave (the devices
  // write with O_DIRECT, so the files hold exactly the writes that completed).
  void snapshot_files(const std::string& tag) {
    std::filesystem::copy_file(dir_.file("origin.img"), dir_.file(tag + ".origin"));
    std::filesystem::copy_file(dir_.file("s.cow"), dir_.file(tag + ".cow"));
  }

  // Attaches the copies made by snapshot_files(tag) and returns the snapshot's content.
  std::vector<std::byte> snapshot_content_of(const std::string& tag) {
    auto o = Origin::create(open_file(dir_.file(tag + ".origin")));
    EXPECT_TRUE(o.ok());
    if (!o.ok()) return {};
    auto s = o.value()->attach_snapshot("s", open_file(dir_.file(tag + ".cow")), true);
    EXPECT_TRUE(s.ok()) << s.error().message();
    if (!s.ok()) return {};
    EXPECT_TRUE(s.value()->status().valid);
    return read_all(*s.value());
  }

  TempDir dir_;
  std::vector<std::byte> original_, model_;
  std::unique_ptr<Origin> origin_;
  FaultyFile* cow_ = nullptr;
  Snapshot* snap_ = nullptr;
};

TEST_F(DeferredCommitTest, WriteIsAcknowledgedBeforeItsAreaAndFlushWaitsForIt) {
  cow_->fault().add_rule({Op::write, kArea0Of4K, Sector(8), 0, kAreaDelay});
  cow_->fault().clear_records();
  const auto full = pattern(701, 0, k4K);
  const auto part = pattern(702, 0, 1024);
  ASSERT_FALSE(write_at(*snap_, 7 * k4K, full));        // the write is the copy
  ASSERT_FALSE(write_at(*snap_, 9 * k4K + 512, part));  // copied from the origin first
  put(model_, 7 * k4K, full);
  put(model_, 9 * k4K + 512, part);
  EXPECT_FALSE(area0_written(cow_->fault().records()))
      << "a writable-snapshot write waited for its metadata area (deferred commit expected)";
  // Visible before durable.
  EXPECT_TRUE(same_bytes(read_all(*snap_), model_));
  ASSERT_FALSE(flush_dev(*snap_));
  EXPECT_TRUE(area_write_then_flush(cow_->fault().records()))
      << "the snapshot's flush completed before the area recording its writes was durable";
  EXPECT_EQ(snap_->status().exceptions, 2u);
  // What a crash now leaves holds both writes.
  snapshot_files("after_flush");
  EXPECT_TRUE(same_bytes(snapshot_content_of("after_flush"), model_));
}

TEST_F(DeferredCommitTest, ACrashBeforeTheAreaLeavesTheOldDataNotGarbage) {
  cow_->fault().add_rule({Op::write, kArea0Of4K, Sector(8), 0, kAreaDelay});
  const auto full = pattern(711, 0, k4K);
  const auto part = pattern(712, 0, 2048);
  ASSERT_FALSE(write_at(*snap_, 12 * k4K, full));
  ASSERT_FALSE(write_at(*snap_, 30 * k4K + 1024, part));
  // Acknowledged, not flushed: a crash now may lose the writes but must leave a valid snapshot with the old
  // content (no area yet points at the new chunks).
  snapshot_files("before_area");
  EXPECT_TRUE(same_bytes(snapshot_content_of("before_area"), original_));
  ASSERT_FALSE(flush_dev(*snap_));
  put(model_, 12 * k4K, full);
  put(model_, 30 * k4K + 1024, part);
  snapshot_files("flushed");
  EXPECT_TRUE(same_bytes(snapshot_content_of("flushed"), model_));
}

TEST_F(DeferredCommitTest, OriginWriteStillWaitsForTheDurableCommit) {
  cow_->fault().add_rule({Op::write, kArea0Of4K, Sector(8), 0, kAreaDelay});
  cow_->fault().clear_records();
  const auto mine = pattern(721, 0, k4K);
  ASSERT_FALSE(write_at(*snap_, 5 * k4K, mine));
  put(model_, 5 * k4K, mine);
  ASSERT_FALSE(area0_written(cow_->fault().records()));
  // The chunk is in the snapshot's table already, but its exception is not durable: the origin must not
  // overwrite it yet (a crash would lose the snapshot's old data of chunk 5... and its record).
  std::vector<std::byte> origin_model = original_;
  const auto theirs = pattern(722, 0, k4K);
  ASSERT_FALSE(write_at(*origin_, 5 * k4K, theirs));
  put(origin_model, 5 * k4K, theirs);
  EXPECT_TRUE(area_write_then_flush(cow_->fault().records()))
      << "an origin write was acknowledged before the snapshot's exception of its chunk was durable";
  EXPECT_TRUE(same_bytes(read_all(*snap_), model_));
  EXPECT_TRUE(same_bytes(read_all(*origin_), origin_model));
}

TEST_F(DeferredCommitTest, AFailedDeferredCommitFailsTheFlush) {
  cow_->fault().fail_writes(kArea0Of4K, Sector(8));
  const auto data = pattern(731, 0, k4K);
  // The data write succeeds: acknowledged before the area write that will fail.
  ASSERT_FALSE(write_at(*snap_, 3 * k4K, data));
  EXPECT_EQ(flush_dev(*snap_), std::error_code(EIO, std::generic_category()))
      << "a flush reported success though an acknowledged write's exception never became durable";
  EXPECT_FALSE(snap_->status().valid);
}

}  // namespace
}  // namespace kcopyfs::test
