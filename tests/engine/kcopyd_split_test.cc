// How kcopyd splits a job into sub-jobs (kernel-dm-notes.md §1.4): piece boundaries, offsets beyond 4 GiB, at
// most max_sub_jobs_in_flight pieces of one job at once, and exactly one callback per job.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <utility>

#include "tests/engine/engine_test_util.h"

namespace kcopyfs::test {
namespace {

using Op = FaultDevice::Op;

KcopydOptions no_offload() {
  KcopydOptions o;
  o.allow_offload = false;
  return o;
}

std::vector<std::pair<uint64_t, uint64_t>> sorted_ranges(const std::vector<FaultDevice::Record>& records) {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  for (const auto& r : records) out.emplace_back(r.start.value(), r.count.value());
  std::sort(out.begin(), out.end());
  return out;
}

TEST(KcopydSplit, JobLengthsAroundTheSubJobSize) {
  TempDir dir;
  auto src = Image::with_pattern(dir.file("src"), 4 * MiB, 10);
  auto dst = Image::sparse(dir.file("dst"), 4 * MiB);
  auto client = make_client(no_offload());
  ASSERT_EQ(client->sub_job_size(), Sector(1024));

  struct Case {
    uint64_t length;
    std::vector<std::pair<uint64_t, uint64_t>> pieces;  // relative (start, count) of the expected sub-jobs
  };
  const Case cases[] = {{1, {{0, 1}}}, {1024, {{0, 1024}}}, {1025, {{0, 1024}, {1024, 1}}}};
  const Sector src_start(7), dst_start(2051);
  for (const Case& c : cases) {
    SCOPED_TRACE("length " + std::to_string(c.length));
    src->dev().clear_records();
    dst->dev().clear_records();
    Callbacks cb;
    Region dests[] = {dst->region(dst_start, Sector(c.length))};
    ASSERT_TRUE(client->copy(src->region(src_start, Sector(c.length)), dests, {}, cb.make()).ok());
    ASSERT_TRUE(cb.wait_all());
    EXPECT_FALSE(cb.result().read_error);
    EXPECT_EQ(cb.result().write_errors, 0u);
    std::vector<std::pair<uint64_t, uint64_t>> want_reads, want_writes;
    for (auto [s, n] : c.pieces) {
      want_reads.emplace_back(src_start.value() + s, n);
      want_writes.emplace_back(dst_start.value() + s, n);
    }
    EXPECT_EQ(sorted_ranges(records_of(src->dev(), Op::read)), want_reads);
    EXPECT_EQ(sorted_ranges(records_of(dst->dev(), Op::write)), want_writes);
    EXPECT_TRUE(file_matches_pattern(dst->path, to_bytes(dst_start).value(), c.length * kSectorSize, 10,
                                     to_bytes(src_start).value()));
  }
}

TEST(KcopydSplit, OffsetsBeyondFourGiB) {
  TempDir dir;
  const uint64_t size = 5 * GiB;
  make_sparse_file(dir.file("src"), size);
  make_sparse_file(dir.file("dst"), size);
  // Data 3 MiB + 1 sector long at an odd sector beyond 4 GiB, copied to another odd sector beyond 4 GiB.
  const uint64_t src_off = 4 * GiB + 3 * MiB + 7 * kSectorSize;
  const uint64_t length = 3 * MiB + kSectorSize;
  write_file(dir.file("src"), src_off, pattern(11, 0, length));
  Image src(dir.file("src"));
  Image dst(dir.file("dst"));
  auto client = make_client(no_offload());
  Callbacks cb;
  const Sector dst_start = sectors_of_bytes(size - 8 * MiB) + Sector(3);
  Region dests[] = {dst.region(dst_start, Sector(0))};
  ASSERT_TRUE(
      client->copy(src.region(sectors_of_bytes(src_off), sectors_of_bytes(length)), dests, {}, cb.make())
          .ok());
  ASSERT_TRUE(cb.wait_all());
  EXPECT_FALSE(cb.result().read_error);
  EXPECT_EQ(cb.result().write_errors, 0u);
  EXPECT_TRUE(file_matches_pattern(dst.path, to_bytes(dst_start).value(), length, 11, 0));
  // Nothing landed at the offsets a 32-bit wrap would give.
  EXPECT_TRUE(file_is_zero(dst.path, to_bytes(dst_start).value() - 4 * GiB, length));
  const auto writes = records_of(dst.dev(), Op::write);
  EXPECT_EQ(writes.size(), 7u);  // 3 MiB + 1 sector: six full sub-jobs and one of a sector
  for (const auto& w : writes) EXPECT_GE(w.start, dst_start);
}

struct PeakRun {
  unsigned stats_peak = 0;
  unsigned device_peak = 0;
  size_t reads = 0;
};

// One big job with read latency, so every free slot of the job fills up before the first read completes.
PeakRun run_big_job(const TempDir& dir, const std::string& name, unsigned max_in_flight) {
  constexpr uint64_t kPieces = 64;
  const Sector piece(64);
  const uint64_t size = to_bytes(piece).value() * kPieces;
  auto src = Image::with_pattern(dir.file(name + "-src"), size, 12);
  auto dst = Image::sparse(dir.file(name + "-dst"), size);
  src->dev().set_latency(Op::read, std::chrono::milliseconds(3));
  KcopydOptions o = no_offload();
  o.sub_job_size = piece;
  o.max_sub_jobs_in_flight = max_in_flight;
  auto client = make_client(o);
  Callbacks cb;
  const Sector count = sectors_of_bytes(size);
  Region dests[] = {dst->region(Sector(0), count)};
  PeakRun run;
  EXPECT_TRUE(client->copy(src->region(Sector(0), count), dests, {}, cb.make()).ok());
  cb.wait_all();
  EXPECT_FALSE(cb.result().read_error);
  EXPECT_EQ(cb.result().write_errors, 0u);
  EXPECT_TRUE(file_matches_pattern(dst->path, 0, size, 12, 0));
  run.stats_peak = client->stats().peak_sub_jobs_of_one_job;
  run.device_peak = src->dev().peak_in_flight(Op::read);
  run.reads = records_of(src->dev(), Op::read).size();
  return run;
}

TEST(KcopydSplit, AtMostEightSubJobsOfOneJobInFlightAndEightAreReached) {
  TempDir dir;
  const PeakRun run = run_big_job(dir, "eight", 8);
  EXPECT_EQ(run.stats_peak, 8u);
  EXPECT_EQ(run.device_peak, 8u);
  EXPECT_EQ(run.reads, 64u);
}

TEST(KcopydSplit, MaxSubJobsInFlightOptionIsRespected) {
  TempDir dir;
  const PeakRun run = run_big_job(dir, "three", 3);
  EXPECT_EQ(run.stats_peak, 3u);
  EXPECT_EQ(run.device_peak, 3u);
  EXPECT_EQ(run.reads, 64u);
}

TEST(KcopydSplit, ExactlyOneCallbackPerJob) {
  TempDir dir;
  auto src = Image::with_pattern(dir.file("src"), 8 * MiB, 13);
  auto dst = Image::sparse(dir.file("dst"), 320 * MiB);
  constexpr size_t kJobs = 60;
  Callbacks cb(kJobs);
  std::mt19937 rng(13);
  std::uniform_int_distribution<uint64_t> len(1, 5000);
  {
    auto client = make_client(no_offload());
    for (size_t i = 0; i < kJobs; ++i) {
      const Sector count(i % 10 == 0 ? 0 : len(rng));  // some zero-length jobs too
      Region dests[] = {dst->region(Sector(i * 10000), count)};
      ASSERT_TRUE(client->copy(src->region(Sector(i), count), dests, {}, cb.make(i)).ok());
    }
    ASSERT_TRUE(cb.wait_all());
  }  // the destructor waits for anything still running, so a late second callback would be counted
  EXPECT_EQ(cb.total(), kJobs);
  for (size_t i = 0; i < kJobs; ++i) {
    EXPECT_EQ(cb.result(i).calls, 1) << "job " << i;
    EXPECT_FALSE(cb.result(i).read_error);
    EXPECT_EQ(cb.result(i).write_errors, 0u);
  }
}

}  // namespace
}  // namespace kcopyfs::test
