// Reference model: random writes and reads from several threads while the mirror resyncs (throttled so the
// resync lasts through the workload), with leg faults injected: a leg failing the writes of a range (D or S),
// a leg failing the reads of a range (R, retried elsewhere), latency on a leg. Every read must match the
// model; afterwards every leg still in the set holds exactly the model.
#include <gtest/gtest.h>

#include <mutex>
#include <random>
#include <thread>

#include "tests/mirror/mirror_test_util.h"

namespace kcopyfs::test {
namespace {

using namespace std::chrono_literals;

struct ModelCase {
  uint64_t seed;
  unsigned legs;
  bool fail_writes;  // a leg other than the default fails the writes of a range
  bool fail_reads;   // a leg fails the reads of a range
  bool latency;
};

class MirrorModelTest : public ::testing::TestWithParam<ModelCase> {};

TEST_P(MirrorModelTest, ReadsMatchTheModelAndLegsEndIdentical) {
  const ModelCase c = GetParam();
  constexpr uint64_t kRegions = 128;  // 8 MiB
  constexpr unsigned kThreads = 4;
  constexpr int kOpsPerThread = 150;
  std::vector<uint64_t> seeds;
  for (unsigned i = 0; i < c.legs; ++i) seeds.push_back(c.seed * 10 + i);
  LegSet legs(c.legs, kRegions, seeds);
  // Before the resync the mirror's content is the default leg's.
  std::vector<std::byte> model = legs.image(0);
  std::mutex model_mutex;  // threads own disjoint areas; the lock only orders the vector's accesses

  auto o = test_options();
  o.resync_window = 4;
  o.throttle_bytes_per_second = 4 << 20;  // about 2 s for the whole device
  auto m = make_core_mirror(legs, SyncMode::by_log, o);
  const unsigned last = c.legs - 1;
  if (c.fail_writes) legs.fault(last).fail_writes(Sector(40 * kTestRegion.value()), Sector(300));
  if (c.fail_reads) legs.fault(1).fail_reads(Sector(0), Sector(60 * kTestRegion.value()));
  if (c.latency) legs.fault(1).set_latency(FaultDevice::Op::write, 2ms);

  EXPECT_EQ(m->status().state(), "resyncing");
  std::atomic<int> mismatches{0};
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  const uint64_t area = legs.bytes() / kThreads;
  for (unsigned t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(c.seed * 100 + t);
      const uint64_t base = t * area;
      for (int op = 0; op < kOpsPerThread; ++op) {
        const uint64_t blocks = 1 + rng() % 32;  // up to 128 KiB: often spans regions
        const uint64_t len = blocks * kBlock;
        const uint64_t off = base + (rng() % (area / kBlock - blocks + 1)) * kBlock;
        if (rng() % 2 == 0) {
          const auto d = pattern(rng(), 0, len);
          if (mirror_write(*m, off, d)) {
            ++errors;
            continue;
          }
          std::lock_guard lock(model_mutex);
          std::copy(d.begin(), d.end(), model.begin() + static_cast<long>(off));
        } else {
          std::vector<std::byte> back(len);
          if (mirror_read(*m, off, back)) {
            ++errors;
            continue;
          }
          std::lock_guard lock(model_mutex);
          if (!std::equal(back.begin(), back.end(), model.begin() + static_cast<long>(off))) ++mismatches;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(mismatches.load(), 0);
  ASSERT_TRUE(m->wait_in_sync(kMirrorTimeout));
  // Round-robin reads of an in-sync range visit every leg without errors, the faulty one included.
  for (unsigned i = 0; i < c.legs; ++i) {
    std::vector<std::byte> back(kBlock);
    ASSERT_FALSE(mirror_read(*m, 0, back));
    EXPECT_TRUE(std::equal(back.begin(), back.end(), model.begin()));
  }
  const MirrorStatus s = m->status();
  // A read of the whole device after the resync still matches.
  std::vector<std::byte> all(legs.bytes());
  ASSERT_FALSE(mirror_read(*m, 0, all));
  EXPECT_TRUE(all == model);
  if (c.fail_writes) {
    EXPECT_FALSE(s.legs[last].in_set);
  }
  if (c.fail_reads) {
    EXPECT_EQ(s.legs[1].health, 'R');
  }
  m.reset();
  unsigned compared = 0;
  for (unsigned i = 0; i < c.legs; ++i) {
    if (!s.legs[i].in_set) continue;
    EXPECT_TRUE(legs.image(i) == model) << "leg " << i << " differs from the model";
    ++compared;
  }
  EXPECT_GE(compared, 2u);
}

INSTANTIATE_TEST_SUITE_P(Cases, MirrorModelTest,
                         ::testing::Values(ModelCase{1, 2, false, false, false},
                                           ModelCase{2, 3, true, false, false},
                                           ModelCase{3, 3, false, true, true},
                                           ModelCase{4, 4, true, true, true}),
                         [](const ::testing::TestParamInfo<ModelCase>& info) {
                           const ModelCase& c = info.param;
                           std::string name = "legs";
                           name += std::to_string(c.legs);
                           if (c.fail_writes) name += "_failwrites";
                           if (c.fail_reads) name += "_failreads";
                           if (c.latency) name += "_latency";
                           return name;
                         });

}  // namespace
}  // namespace kcopyfs::test
