// kcopyd zero jobs (dm_kcopyd_zero, kernel-dm-notes.md §1.4 step 3) and zero-length jobs.
#include <gtest/gtest.h>

#include <thread>

#include "tests/engine/engine_test_util.h"

namespace kcopyfs::test {
namespace {

TEST(KcopydZero, ZeroesEachDestinationRangeAndCountsBytes) {
  TempDir dir;
  const uint64_t size = 8 * MiB;
  auto d0 = Image::with_pattern(dir.file("d0"), size, 40);
  auto d1 = Image::with_pattern(dir.file("d1"), size, 41);
  const Sector count = sectors_of_bytes(3 * MiB) + Sector(1);
  const Sector s0(100), s1(4097);
  auto client = make_client();
  Callbacks cb;
  // Only dests[0].count matters, as in the kernel.
  Region dests[] = {d0->region(s0, count), d1->region(s1, Sector(0))};
  ASSERT_TRUE(client->zero(dests, {}, cb.make()).ok());
  ASSERT_TRUE(cb.wait_all());
  EXPECT_EQ(cb.result().calls, 1);
  EXPECT_FALSE(cb.result().read_error);
  EXPECT_EQ(cb.result().write_errors, 0u);
  const uint64_t len = to_bytes(count).value();
  EXPECT_EQ(client->stats().bytes_zeroed, 2 * len);
  EXPECT_EQ(client->stats().bytes_read, 0u);
  for (auto [img, start, seed] : {std::tuple{d0.get(), s0, 40}, std::tuple{d1.get(), s1, 41}}) {
    const uint64_t off = to_bytes(start).value();
    EXPECT_TRUE(file_is_zero(img->path, off, len));
    EXPECT_TRUE(file_matches_pattern(img->path, 0, off, seed, 0));
    EXPECT_TRUE(file_matches_pattern(img->path, off + len, size - off - len, seed, off + len));
  }
}

TEST(KcopydZero, ZeroWriteErrorSetsOnlyThatDestinationsBit) {
  TempDir dir;
  auto d0 = Image::with_pattern(dir.file("d0"), 1 * MiB, 42);
  auto d1 = Image::with_pattern(dir.file("d1"), 1 * MiB, 43);
  FaultDevice::Rule fail_zeroes;
  fail_zeroes.op = FaultDevice::Op::write_zeroes;
  fail_zeroes.error = EIO;
  d0->dev().add_rule(fail_zeroes);
  auto client = make_client();
  Callbacks cb;
  Region dests[] = {d0->region(Sector(0), Sector(64)), d1->region(Sector(64), Sector(64))};
  ASSERT_TRUE(client->zero(dests, {}, cb.make()).ok());
  ASSERT_TRUE(cb.wait_all());
  EXPECT_FALSE(cb.result().read_error);
  EXPECT_EQ(cb.result().write_errors, 1u);
  EXPECT_TRUE(file_is_zero(d1->path, 64 * kSectorSize, 64 * kSectorSize));
  EXPECT_TRUE(file_matches_pattern(d0->path, 0, 64 * kSectorSize, 42, 0));
}

TEST(KcopydZero, ZeroLengthCopyAndZeroCompleteWithoutErrors) {
  TempDir dir;
  auto src = Image::with_pattern(dir.file("src"), 64 * KiB, 44);
  auto dst = Image::with_pattern(dir.file("dst"), 64 * KiB, 45);
  auto client = make_client();
  std::atomic<bool> on_submitter{false};
  Callbacks cb(2);
  const auto me = std::this_thread::get_id();
  auto wrap = [&](CopyCallback inner) -> CopyCallback {
    return [&, inner](bool r, uint32_t w) {
      if (std::this_thread::get_id() == me) on_submitter = true;
      inner(r, w);
    };
  };
  Region dests[] = {dst->region(Sector(8), Sector(0)), dst->region(Sector(16), Sector(0))};
  // A zero-length region may even start at the end of the device.
  ASSERT_TRUE(client->copy(src->region(Sector(128), Sector(0)), dests, {}, wrap(cb.make(0))).ok());
  ASSERT_TRUE(client->zero(dests, {}, wrap(cb.make(1))).ok());
  ASSERT_TRUE(cb.wait_all());
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(cb.result(i).calls, 1);
    EXPECT_FALSE(cb.result(i).read_error);
    EXPECT_EQ(cb.result(i).write_errors, 0u);
  }
  EXPECT_FALSE(on_submitter.load());
  EXPECT_TRUE(dst->dev().records().empty());
  EXPECT_TRUE(src->dev().records().empty());
  EXPECT_TRUE(file_matches_pattern(dst->path, 0, 64 * KiB, 45, 0));
}

}  // namespace
}  // namespace kcopyfs::test
