// The snapshot targets against an in-memory reference model: random origin writes (random size and alignment,
// several at once), snapshot creates with mixed chunk sizes, writes to writable snapshots, and reads of every
// view, each checked byte for byte against the model. Reopening (attach) must give identical content.
//
// Seeds are printed; KCOPYFS_SEED=<n> reruns one.
#include <gtest/gtest.h>

#include <cstdlib>
#include <future>
#include <random>

#include "engine/file_device.h"
#include "engine/sync_io.h"
#include "snapshot/origin.h"
#include "tests/support/test_support.h"

namespace kcopyfs {
namespace {

using test::TempDir;

constexpr uint64_t kOriginBytes = 8 << 20;

std::unique_ptr<FileDevice> open_dev(const std::string& path) {
  auto dev = FileDevice::open(path, OpenOptions{});
  if (!dev) ADD_FAILURE() << dev.error().message();
  return std::move(dev).value();
}

struct ModelSnapshot {
  std::string name;
  std::string cow_path;
  bool writable;
  Sector chunk;
  std::vector<std::byte> image;
};

class OriginModel {
 public:
  // write_back: the origin's write-back limit (Origin::set_write_back_limit; 0: off).
  OriginModel(const TempDir& dir, uint64_t seed, Bytes write_back)
      : dir_(dir), rng_(seed), write_back_(write_back) {
    test::write_pattern_file(dir.file("origin.img"), kOriginBytes, seed);
    model_ = test::pattern(seed, 0, kOriginBytes);
    open_origin();
  }

  void open_origin() {
    auto origin = Origin::create(open_dev(dir_.file("origin.img")));
    ASSERT_TRUE(origin.ok());
    origin_ = std::move(origin).value();
    origin_->set_write_back_limit(write_back_);
  }

  // Closes everything and reopens: the persistent snapshots are attached again from their COW files.
  void reopen() {
    origin_.reset();  // stops a running merge between steps
    open_origin();
    for (auto& s : snaps_) {
      auto snap = origin_->attach_snapshot(s.name, open_dev(s.cow_path), s.writable);
      ASSERT_TRUE(snap.ok()) << snap.error().message();
    }
    if (merging_ >= 0) {
      ++merges_resumed_;
      ASSERT_NO_FATAL_FAILURE(launch_merge());  // an interrupted merge resumes
    }
  }

  // Starts (or resumes) the merge of snaps_[merging_]: the origin's content becomes the snapshot's at once.
  void launch_merge() {
    merge_result_ = std::make_shared<std::promise<Status>>();
    auto result = merge_result_;
    auto st = origin_->start_merge(snaps_[merging_].name, [result](Status s) { result->set_value(s); });
    ASSERT_TRUE(st.ok()) << st.error().message();
    merge_future_ = merge_result_->get_future();
  }

  void start_merge() {
    ++merges_started_;
    merging_ = static_cast<int>(rng_() % snaps_.size());
    model_ = snaps_[merging_].image;
    ASSERT_NO_FATAL_FAILURE(launch_merge());
  }

  // Collects a finished merge: the snapshot is gone.
  void reap_merge(bool wait) {
    if (merging_ < 0) return;
    if (!wait && merge_future_.wait_for(std::chrono::seconds(0)) != std::future_status::ready) return;
    ASSERT_EQ(merge_future_.wait_for(std::chrono::seconds(120)), std::future_status::ready) << "merge hangs";
    Status st = merge_future_.get();
    ASSERT_TRUE(st.ok()) << st.error().message();
    ASSERT_EQ(origin_->find_snapshot(snaps_[merging_].name), nullptr);
    snaps_.erase(snaps_.begin() + merging_);
    merging_ = -1;
    ++merges_done_;
  }

  bool usable(int target) const { return target != merging_; }

  void create_snapshot() {
    ModelSnapshot s;
    char name[16];
    std::snprintf(name, sizeof name, "s%d", names_made_++);
    s.name = name;
    s.cow_path = dir_.file(s.name + ".cow");
    s.writable = rng_() % 2 == 0;
    static const uint64_t sizes[] = {8, 16, 128};
    s.chunk = Sector(sizes[rng_() % 3]);
    test::make_sparse_file(s.cow_path, 2 * kOriginBytes + (1 << 20));
    SnapshotOptions options;
    options.chunk_size = s.chunk;
    options.writable = s.writable;
    auto snap = origin_->create_snapshot(s.name, open_dev(s.cow_path), options);
    ASSERT_TRUE(snap.ok()) << snap.error().message();
    s.image = model_;
    snaps_.push_back(std::move(s));
  }

  std::pair<uint64_t, uint64_t> random_range() {
    const uint64_t sectors = kOriginBytes / kSectorSize;
    const uint64_t len = 1 + rng_() % (rng_() % 4 == 0 ? 512 : 24);
    const uint64_t start = rng_() % (sectors - len + 1);
    return {start * kSectorSize, len * kSectorSize};
  }

  // A batch of concurrent writes to disjoint ranges of one view (origin: target = -1).
  void write_batch(int target) {
    const int n = 1 + static_cast<int>(rng_() % 6);
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    for (int i = 0; i < n; ++i) {
      auto r = random_range();
      bool overlaps = false;
      for (auto& [o, l] : ranges) overlaps |= r.first < o + l && o < r.first + r.second;
      if (!overlaps) ranges.push_back(r);
    }
    BlockDevice* view =
        target < 0 ? static_cast<BlockDevice*>(origin_.get()) : origin_->find_snapshot(snaps_[target].name);
    std::vector<std::vector<std::byte>> data;
    auto done = std::make_shared<std::vector<std::promise<std::error_code>>>(ranges.size());
    for (size_t i = 0; i < ranges.size(); ++i) data.push_back(test::pattern(rng_(), 0, ranges[i].second));
    for (size_t i = 0; i < ranges.size(); ++i) {
      view->write(Bytes(ranges[i].first), data[i],
                  [done, i](std::error_code ec) { (*done)[i].set_value(ec); });
    }
    for (size_t i = 0; i < ranges.size(); ++i) {
      auto f = (*done)[i].get_future();
      ASSERT_EQ(f.wait_for(std::chrono::seconds(60)), std::future_status::ready);
      ASSERT_FALSE(f.get()) << "write " << i;
      std::vector<std::byte>& image = target < 0 ? model_ : snaps_[target].image;
      std::copy(data[i].begin(), data[i].end(), image.begin() + static_cast<long>(ranges[i].first));
    }
  }

  void check_read(int target) {
    auto [off, len] = random_range();
    BlockDevice* view =
        target < 0 ? static_cast<BlockDevice*>(origin_.get()) : origin_->find_snapshot(snaps_[target].name);
    std::vector<std::byte> got(len);
    ASSERT_FALSE(read_sync(*view, Bytes(off), got));
    const std::vector<std::byte>& image = target < 0 ? model_ : snaps_[target].image;
    ASSERT_TRUE(std::equal(got.begin(), got.end(), image.begin() + static_cast<long>(off)))
        << (target < 0 ? "origin" : snaps_[target].name) << " differs in [" << off << ", " << off + len
        << ")";
  }

  void check_everything() {
    std::vector<std::byte> got(kOriginBytes);
    ASSERT_FALSE(read_sync(*origin_, Bytes(0), got));
    ASSERT_TRUE(got == model_) << "origin differs";
    for (size_t i = 0; i < snaps_.size(); ++i) {
      if (!usable(static_cast<int>(i))) continue;
      ASSERT_FALSE(read_sync(*origin_->find_snapshot(snaps_[i].name), Bytes(0), got));
      ASSERT_TRUE(got == snaps_[i].image) << snaps_[i].name << " differs";
    }
  }

  void run(int steps) {
    for (int step = 0; step < steps; ++step) {
      ASSERT_NO_FATAL_FAILURE(reap_merge(false));
      const unsigned op = rng_() % 100;
      if (op < 3 && snaps_.size() < 4 && merging_ < 0) {
        ASSERT_NO_FATAL_FAILURE(create_snapshot());
      } else if (op < 4 && merging_ < 0 && !snaps_.empty()) {
        ASSERT_NO_FATAL_FAILURE(start_merge());
      } else if (op < 50) {
        ASSERT_NO_FATAL_FAILURE(write_batch(-1));
      } else if (op < 62 && !snaps_.empty()) {
        const int t = static_cast<int>(rng_() % snaps_.size());
        if (snaps_[t].writable && usable(t)) {
          ASSERT_NO_FATAL_FAILURE(write_batch(t));
        }
      } else if (op < 63) {
        ASSERT_NO_FATAL_FAILURE(check_everything());
        ASSERT_NO_FATAL_FAILURE(reopen());
      } else {
        const int t = static_cast<int>(rng_() % (snaps_.size() + 1)) - 1;
        if (usable(t)) {
          ASSERT_NO_FATAL_FAILURE(check_read(t));
        }
      }
    }
    ASSERT_NO_FATAL_FAILURE(check_everything());
    ASSERT_NO_FATAL_FAILURE(reap_merge(true));
    std::printf("  merges: %d started, %d resumed after reopen, %d completed\n", merges_started_,
                merges_resumed_, merges_done_);
    ASSERT_NO_FATAL_FAILURE(check_everything());
    ASSERT_NO_FATAL_FAILURE(reopen());
    ASSERT_NO_FATAL_FAILURE(check_everything());
  }

 private:
  const TempDir& dir_;
  std::mt19937_64 rng_;
  Bytes write_back_;
  std::vector<std::byte> model_;
  std::vector<ModelSnapshot> snaps_;
  int names_made_ = 0;
  int merges_started_ = 0, merges_resumed_ = 0, merges_done_ = 0;
  int merging_ = -1;  // index in snaps_ of the merging snapshot
  std::shared_ptr<std::promise<Status>> merge_result_;
  std::future<Status> merge_future_;
  std::unique_ptr<Origin> origin_;
};

std::vector<uint64_t> seeds() {
  if (const char* s = std::getenv("KCOPYFS_SEED")) return {std::strtoull(s, nullptr, 10)};
  return {101, 202, 303, 404};
}

// Every seed twice: with the default write-back (origin writes acknowledged before their copy-on-write,
// read back at once) and with a limit small enough that only some writes of a batch are held.
class OriginModelTest : public ::testing::TestWithParam<uint64_t> {};

TEST_P(OriginModelTest, RandomOperationsMatchModel) {
  for (uint64_t seed : seeds()) {
    std::printf("origin model seed %llu (rerun with KCOPYFS_SEED=%llu)\n",
                static_cast<unsigned long long>(seed), static_cast<unsigned long long>(seed));
    SCOPED_TRACE("seed " + std::to_string(seed));
    TempDir dir;
    OriginModel model(dir, seed, Bytes(GetParam()));
    model.create_snapshot();
    ASSERT_NO_FATAL_FAILURE(model.run(1500));
  }
}

INSTANTIATE_TEST_SUITE_P(WriteBack, OriginModelTest,
                         ::testing::Values(Origin::kDefaultWriteBackLimit.value(), uint64_t{64} << 10, 0),
                         [](const ::testing::TestParamInfo<uint64_t>& info) {
                           return info.param == 0 ? std::string("Off")
                                                  : std::to_string(info.param >> 10) + "KiB";
                         });

}  // namespace
}  // namespace kcopyfs
