// I/O racing a snapshot-merge (kernel-dm-notes.md §2.9):
//   - a flush of the origin view while merging makes durable the writes that went to the merging COW store
//     (the kernel's snapshot-merge target sends its flush to both devices: num_flush_bios = 2);
//   - start_merge() while a write to that snapshot is still in flight: the write completes, lands in the
//     snapshot's image, and the merge carries it to the origin (the kernel gets this from suspending the
//     snapshot before the merge table is resumed);
//   - a read of the origin view served from the merging COW store keeps that store open: the merge does not
//     end (and close the snapshot's device) under it.
// The merge is held at an exact step with a FaultDevice hook on the origin device.
#include <gtest/gtest.h>

#include "tests/snapshot/origin_test_util.h"

namespace kcopyfs::test {
namespace {

constexpr uint64_t kOriginBytes = 1 << 20;
constexpr uint64_t k4K = 4096;
using Op = FaultDevice::Op;

struct MergeRig {
  TempDir dir;
  std::vector<std::byte> original;
  std::unique_ptr<Origin> origin;
  FaultDevice* origin_fault = nullptr;
  FaultDevice* cow_fault = nullptr;
  Snapshot* snap = nullptr;

  explicit MergeRig(bool writable) {
    write_pattern_file(dir.file("origin.img"), kOriginBytes, 3);
    original = pattern(3, 0, kOriginBytes);
    auto dev = FaultyFile::open(dir.file("origin.img"));
    origin_fault = &dev->fault();
    auto o = Origin::create(std::move(dev));
    if (!o) throw std::runtime_error(o.error().message());
    origin = std::move(o).value();
    make_sparse_file(dir.file("s.cow"), 4 << 20);
    auto cow = FaultyFile::open(dir.file("s.cow"));
    cow_fault = &cow->fault();
    SnapshotOptions options;
    options.writable = writable;
    auto s = origin->create_snapshot("s", std::move(cow), options);
    if (!s) throw std::runtime_error(s.error().message());
    snap = s.value();
  }
};

TEST(OriginMergeIo, FlushOfTheOriginViewReachesTheMergingStore) {
  MergeRig rig(false);
  std::vector<std::byte> image = rig.original;  // the snapshot's, which the origin view shows while merging
  // Two exceptions in two runs: (old 10 -> COW 2), then (old 20 -> COW 3). The merge takes chunk 20 first.
  ASSERT_FALSE(write_at(*rig.origin, 10 * k4K, pattern(1, 0, k4K)));
  ASSERT_FALSE(write_at(*rig.origin, 20 * k4K, pattern(2, 0, k4K)));
  auto gate = Gate::make();
  rig.origin_fault->add_rule({Op::flush, Sector(0), Sector(0), 0, {}, 1, Gate::hook(gate)});
  MergeResult merge;
  ASSERT_TRUE(rig.origin->start_merge("s", merge.callback()).ok());
  ASSERT_TRUE(gate->wait_reached()) << "the merge never flushed the origin";

  // Step 1 is held after copying chunk 20 back. Chunk 10 still has its exception: a write to it through the
  // origin view goes to the COW store; the flush that follows must make it durable there.
  rig.cow_fault->clear_records();
  const auto data = pattern(3, 0, 2048);
  ASSERT_FALSE(write_at(*rig.origin, 10 * k4K + 1024, data));
  put(image, 10 * k4K + 1024, data);
  ASSERT_FALSE(flush_dev(*rig.origin));
  const auto records = rig.cow_fault->records();
  bool written = false, flushed_after = false;
  for (const auto& r : records) {
    if (r.op == Op::write && r.error == 0) written = true;
    if (r.op == Op::flush && r.error == 0 && written) flushed_after = true;
  }
  EXPECT_TRUE(written) << "the write should have gone to the merging COW store";
  EXPECT_TRUE(flushed_after)
      << "a flush of the origin view while merging left a completed write to the merging "
         "COW store unflushed";
  gate->open();
  const Status st = merge.wait();
  ASSERT_TRUE(st.ok()) << st.error().message();
  EXPECT_TRUE(same_bytes(read_all(*rig.origin), image));
}

TEST(OriginMergeIo, StartMergeWaitsForWritesInFlightToTheSnapshot) {
  MergeRig rig(true);
  std::vector<std::byte> image = rig.original;
  // Data chunks of the COW (from chunk 2, sector 16 on) are written 200 ms late: the copy of a partial
  // snapshot write, and the write itself, are still in flight when the merge starts.
  rig.cow_fault->add_rule({Op::write, Sector(16), Sector(1 << 20), 0, std::chrono::milliseconds(200)});
  const auto data = pattern(4, 0, 1024);
  auto written = std::make_shared<std::promise<std::error_code>>();
  auto written_f = written->get_future();
  rig.snap->write(Bytes(5 * k4K + 512), data, [written](std::error_code ec) { written->set_value(ec); });
  MergeResult merge;
  const Status started = rig.origin->start_merge("s", merge.callback());
  ASSERT_TRUE(started.ok()) << started.error().message();
  ASSERT_EQ(written_f.wait_for(kWait), std::future_status::ready);
  const std::error_code ec = written_f.get();
  const Status st = merge.wait();
  ASSERT_TRUE(st.ok()) << st.error().message();
  if (!ec) put(image, 5 * k4K + 512, data);
  EXPECT_FALSE(ec) << "a write issued before start_merge failed: " << ec.message();
  EXPECT_TRUE(same_bytes(read_all(*rig.origin), image)) << "the merged origin lacks the acknowledged write";
}

TEST(OriginMergeIo, MergeEndWaitsForReadsOfTheMergingStore) {
  MergeRig rig(false);
  std::vector<std::byte> image = rig.original;
  // Exceptions (old 10 -> COW 2), (old 20 -> COW 3): step 1 merges chunk 20, step 2 chunk 10, the last.
  ASSERT_FALSE(write_at(*rig.origin, 10 * k4K, pattern(1, 0, k4K)));
  ASSERT_FALSE(write_at(*rig.origin, 20 * k4K, pattern(2, 0, k4K)));
  auto at_step2 = Gate::make();
  rig.origin_fault->add_rule({Op::flush, Sector(0), Sector(0), 0, {}, 1});
  rig.origin_fault->add_rule({Op::flush, Sector(0), Sector(0), 0, {}, 1, Gate::hook(at_step2)});
  MergeResult merge;
  ASSERT_TRUE(rig.origin->start_merge("s", merge.callback()).ok());
  ASSERT_TRUE(at_step2->wait_reached());
  // Chunk 10 is copied back but its record not cleared: a read of it through the origin view goes to the COW
  // store. Hold that read inside the COW device.
  auto in_read = Gate::make();
  rig.cow_fault->add_rule({Op::read, Sector(0), Sector(1 << 20), 0, {}, 1, Gate::hook(in_read)});
  std::vector<std::byte> got(k4K);
  auto read_done = std::make_shared<std::promise<std::error_code>>();
  auto read_f = read_done->get_future();
  std::thread reader([&] {
    rig.origin->read(Bytes(10 * k4K), got, [read_done](std::error_code ec) { read_done->set_value(ec); });
  });
  const bool read_held = in_read->wait_reached();
  // Let the last step finish. The merge must not end (and close the COW device) while the read is inside it;
  // give it 300 ms to show that it would (with the read held it cannot end at all, so nothing depends on the
  // timing when it is right).
  at_step2->open();
  const bool ended_under_read =
      read_held && merge.future.wait_for(std::chrono::milliseconds(300)) == std::future_status::ready;
  in_read->open();
  reader.join();
  ASSERT_TRUE(read_held) << "the read never reached the COW device";
  EXPECT_FALSE(ended_under_read)
      << "the merge ended, closing the COW device, while a read of it was in flight";
  ASSERT_EQ(read_f.wait_for(kWait), std::future_status::ready);
  EXPECT_FALSE(read_f.get());
  EXPECT_TRUE(same_bytes(got, pattern(3, 10 * k4K, k4K))) << "the read returns the snapshot's data";
  const Status st = merge.wait();
  ASSERT_TRUE(st.ok()) << st.error().message();
  EXPECT_TRUE(same_bytes(read_all(*rig.origin), image));
}

}  // namespace
}  // namespace kcopyfs::test
