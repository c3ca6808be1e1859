// The client's buffer budget (kernel-dm-notes.md §1.6): a pool of one sub-job serves any number of concurrent
// jobs without exceeding it, and a pool smaller than a sub-job shrinks the sub-jobs instead of stalling.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "tests/engine/engine_test_util.h"

namespace kcopyfs::test {
namespace {

TEST(KcopydMemory, ThousandConcurrentJobsInAPoolOfOneSubJob) {
  TempDir dir;
  const uint64_t src_size = 4 * MiB;
  auto src = Image::with_pattern(dir.file("src"), src_size, 20);

  struct Job {
    uint64_t src_sector, dst_sector, sectors;
  };
  constexpr size_t kJobs = 1000;
  std::vector<Job> jobs;
  std::mt19937 rng(20);
  uint64_t dst_sectors = 0;
  for (size_t i = 0; i < kJobs; ++i) {
    uint64_t sectors;
    if (i % 50 == 0)
      sectors = 2048 - (i % 7);  // larger than a sub-job: two pieces
    else if (i % 10 == 0)
      sectors = 256 + rng() % 769;  // 256..1024
    else
      sectors = 8 + rng() % 121;  // 8..128
    const uint64_t src_sector = rng() % (src_size / kSectorSize - sectors);
    jobs.push_back({src_sector, dst_sectors, sectors});
    dst_sectors += sectors + 1;  // distinct, non-adjacent destination ranges
  }
  auto dst = Image::sparse(dir.file("dst"), dst_sectors * kSectorSize);

  KcopydOptions o;
  o.num_pages = 128;
  o.sub_job_size = Sector(1024);
  o.allow_offload = false;
  auto client = make_client(o);
  ASSERT_EQ(client->sub_job_size(), Sector(1024));
  Callbacks cb(kJobs);
  for (size_t i = 0; i < kJobs; ++i) {
    const Job& j = jobs[i];
    Region dests[] = {dst->region(Sector(j.dst_sector), Sector(j.sectors))};
    ASSERT_TRUE(
        client->copy(src->region(Sector(j.src_sector), Sector(j.sectors)), dests, {}, cb.make(i)).ok());
  }
  ASSERT_TRUE(cb.wait_all()) << cb.total() << " of " << kJobs << " callbacks ran";
  const KcopydStats stats = client->stats();
  EXPECT_EQ(stats.pool_pages, 128u);
  EXPECT_LE(stats.peak_pages_in_use, 128u);
  EXPECT_GT(stats.peak_pages_in_use, 0u);

  const auto content = read_file(dst->path, 0, dst_sectors * kSectorSize);
  ASSERT_EQ(content.size(), dst_sectors * kSectorSize);
  size_t bad = 0;
  for (size_t i = 0; i < kJobs; ++i) {
    const Job& j = jobs[i];
    const auto r = cb.result(i);
    EXPECT_EQ(r.calls, 1) << "job " << i;
    EXPECT_FALSE(r.read_error) << "job " << i;
    EXPECT_EQ(r.write_errors, 0u) << "job " << i;
    const auto want = pattern(20, j.src_sector * kSectorSize, j.sectors * kSectorSize);
    if (std::memcmp(content.data() + j.dst_sector * kSectorSize, want.data(), want.size()) != 0 && bad++ < 10)
      ADD_FAILURE() << "job " << i << " (" << j.sectors << " sectors) has wrong content";
  }
  EXPECT_EQ(bad, 0u);
}

TEST(KcopydMemory, PoolSmallerThanASubJobShrinksSubJobs) {
  TempDir dir;
  const uint64_t size = 10 * MiB;
  auto src = Image::with_pattern(dir.file("src"), size, 21);
  auto dst = Image::sparse(dir.file("dst"), size);
  KcopydOptions o;
  o.num_pages = 16;
  o.allow_offload = false;
  auto client = make_client(o);
  EXPECT_EQ(client->sub_job_size(), Sector(16 * kPageSize / kSectorSize));
  Callbacks cb;
  Region dests[] = {dst->region(Sector(0), sectors_of_bytes(size))};
  ASSERT_TRUE(client->copy(src->region(Sector(0), sectors_of_bytes(size)), dests, {}, cb.make()).ok());
  ASSERT_TRUE(cb.wait_all());
  EXPECT_FALSE(cb.result().read_error);
  EXPECT_EQ(cb.result().write_errors, 0u);
  EXPECT_LE(client->stats().peak_pages_in_use, 16u);
  EXPECT_EQ(client->stats().bytes_read, size);
  for (const auto& r : records_of(src->dev(), FaultDevice::Op::read)) EXPECT_LE(r.count, Sector(128));
  EXPECT_TRUE(file_matches_pattern(dst->path, 0, size, 21, 0));
}

}  // namespace
}  // namespace kcopyfs::test
