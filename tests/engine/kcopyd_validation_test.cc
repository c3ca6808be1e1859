// kcopyd's argument checks: each invalid job is refused with EINVAL and its callback never runs.
#include <gtest/gtest.h>

#include <atomic>
#include <limits>

#include "tests/engine/engine_test_util.h"

namespace kcopyfs::test {
namespace {

class KcopydValidation : public ::testing::Test {
 protected:
  void SetUp() override {
    src_ = Image::with_pattern(dir_.file("src"), 1 * MiB, 50);
    dst_ = Image::sparse(dir_.file("dst"), 1 * MiB);
    write_pattern_file(dir_.file("ro"), 1 * MiB, 51);
    OpenOptions ro;
    ro.access = Access::read_only;
    ro.sharing = Sharing::shared;
    ro_ = open_device(dir_.file("ro"), ro);
    client_ = make_client();
  }

  CopyCallback counting() {
    return [this](bool, uint32_t) { calls_.fetch_add(1); };
  }

  void expect_einval(const Status& s, const std::string& what) {
    ASSERT_FALSE(s.ok()) << what << " was accepted";
    EXPECT_EQ(s.error().code(), std::make_error_code(std::errc::invalid_argument))
        << what << ": " << s.error().message();
    EXPECT_FALSE(s.error().message().empty());
  }

  void TearDown() override {
    client_.reset();  // waits for any callback that (wrongly) was scheduled
    EXPECT_EQ(calls_.load(), 0) << "a refused job's callback ran";
  }

  TempDir dir_;
  std::unique_ptr<Image> src_, dst_;
  std::unique_ptr<FileDevice> ro_;
  std::unique_ptr<KcopydClient> client_;
  std::atomic<int> calls_{0};
};

TEST_F(KcopydValidation, DestinationCount) {
  const Region from = src_->region(Sector(0), Sector(8));
  expect_einval(client_->copy(from, {}, {}, counting()), "0 destinations");
  expect_einval(client_->zero({}, {}, counting()), "zero with 0 destinations");
  std::vector<Region> nine;
  for (int i = 0; i < 9; ++i) nine.push_back(dst_->region(Sector(i * 8), Sector(8)));
  expect_einval(client_->copy(from, nine, {}, counting()), "9 destinations");
  expect_einval(client_->zero(nine, {}, counting()), "zero with 9 destinations");
  // 8 is the maximum, and fine.
  Callbacks cb;
  nine.pop_back();
  ASSERT_TRUE(client_->copy(from, nine, {}, cb.make()).ok());
  ASSERT_TRUE(cb.wait_all());
  EXPECT_EQ(cb.result().write_errors, 0u);
}

TEST_F(KcopydValidation, NullDevice) {
  Region dests[] = {dst_->region(Sector(0), Sector(8))};
  expect_einval(client_->copy(Region{nullptr, Sector(0), Sector(8)}, dests, {}, counting()), "null source");
  Region null_dest[] = {dst_->region(Sector(0), Sector(8)), Region{nullptr, Sector(0), Sector(8)}};
  expect_einval(client_->copy(src_->region(Sector(0), Sector(8)), null_dest, {}, counting()),
                "null destination");
  expect_einval(client_->zero(null_dest, {}, counting()), "zero to a null destination");
}

TEST_F(KcopydValidation, RangePastTheEnd) {
  const Sector end = src_->dev().size_in_sectors();
  Region dests[] = {dst_->region(Sector(0), Sector(0))};
  expect_einval(client_->copy(src_->region(end - Sector(1), Sector(2)), dests, {}, counting()),
                "source past end");
  expect_einval(client_->copy(src_->region(end, Sector(1)), dests, {}, counting()), "source at end");
  Region late[] = {dst_->region(end - Sector(7), Sector(0))};
  expect_einval(client_->copy(src_->region(Sector(0), Sector(8)), late, {}, counting()),
                "destination past end");
  Region zero_late[] = {dst_->region(end - Sector(7), Sector(8))};
  expect_einval(client_->zero(zero_late, {}, counting()), "zero past end");
  // A start so large that start + count wraps around.
  const Sector huge(std::numeric_limits<uint64_t>::max() - 3);
  expect_einval(client_->copy(src_->region(huge, Sector(8)), dests, {}, counting()), "wrapping source");
  Region wrap[] = {dst_->region(huge, Sector(0))};
  expect_einval(client_->copy(src_->region(Sector(0), Sector(8)), wrap, {}, counting()),
                "wrapping destination");
}

TEST_F(KcopydValidation, ReadOnlyDestination) {
  Region dests[] = {dst_->region(Sector(0), Sector(8)), Region{ro_.get(), Sector(0), Sector(8)}};
  expect_einval(client_->copy(src_->region(Sector(0), Sector(8)), dests, {}, counting()),
                "read-only destination");
  expect_einval(client_->zero(dests, {}, counting()), "zero to a read-only destination");
  // A read-only device is a fine source.
  Callbacks cb;
  Region ok_dest[] = {dst_->region(Sector(0), Sector(8))};
  ASSERT_TRUE(client_->copy(Region{ro_.get(), Sector(0), Sector(8)}, ok_dest, {}, cb.make()).ok());
  ASSERT_TRUE(cb.wait_all());
  EXPECT_FALSE(cb.result().read_error);
  EXPECT_TRUE(file_matches_pattern(dst_->path, 0, 8 * kSectorSize, 51, 0));
}

TEST(KcopydCreate, RejectsOptionsOutOfRange) {
  KcopydOptions o;
  o.num_pages = 0;
  auto a = KcopydClient::create(o);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.error().code(), std::make_error_code(std::errc::invalid_argument));
  o = {};
  o.sub_job_size = Sector(0);
  EXPECT_FALSE(KcopydClient::create(o).ok());
  o = {};
  o.max_sub_jobs_in_flight = 0;
  EXPECT_FALSE(KcopydClient::create(o).ok());
}

}  // namespace
}  // namespace kcopyfs::test
