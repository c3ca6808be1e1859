// FaultDevice's storm rules (engine/fault_device.h): a probability per rule drawn from a seeded generator,
// falling through to the next rule when the draw misses, drawn latency (delay..delay_max), and the counts of
// what was injected. The deterministic rules keep their behaviour (the suites of every layer use them).
#include <gtest/gtest.h>

#include <future>
#include <vector>

#include "tests/engine/engine_test_util.h"

namespace kcopyfs::test {
namespace {

using Op = FaultDevice::Op;
using std::chrono::microseconds;
using std::chrono::milliseconds;

constexpr uint64_t kDeviceBytes = 1 * MiB;
constexpr uint64_t kIo = 4096;

// One blocking operation on the device (bounded: a lost completion ends the test process).
std::error_code run_op(FaultDevice& dev, Op op, uint64_t offset, std::vector<std::byte>& buffer) {
  auto p = std::make_shared<std::promise<std::error_code>>();
  auto f = p->get_future();
  IoCallback done = [p](std::error_code ec) { p->set_value(ec); };
  switch (op) {
    case Op::read:
      dev.read(Bytes(offset), buffer, std::move(done));
      break;
    case Op::write:
      dev.write(Bytes(offset), buffer, std::move(done));
      break;
    case Op::flush:
      dev.flush(std::move(done));
      break;
    case Op::write_zeroes:
      dev.write_zeroes(Bytes(offset), Bytes(buffer.size()), false, std::move(done));
      break;
  }
  if (f.wait_for(kTimeout) != std::future_status::ready) fail_timeout("a FaultDevice operation");
  return f.get();
}

struct Fixture {
  TempDir dir;
  std::unique_ptr<Image> image = Image::with_pattern(dir.file("dev"), kDeviceBytes, 3);
  std::vector<std::byte> buffer = std::vector<std::byte>(kIo);
  FaultDevice& dev() { return image->dev(); }
  // n reads of 4 KiB walking the device; result: the errno of each (0: passed on).
  std::vector<int> reads(int n) {
    std::vector<int> out;
    for (int i = 0; i < n; ++i)
      out.push_back(run_op(dev(), Op::read, (static_cast<uint64_t>(i) * kIo) % kDeviceBytes, buffer).value());
    return out;
  }
};

TEST(FaultDeviceStorm, ProbabilityOneAndZero) {
  Fixture f;
  FaultDevice::Rule never{Op::read, Sector(0), Sector(~0ull >> 10), EIO};
  never.probability = 0.0;
  f.dev().add_rule(never);
  for (int e : f.reads(50)) EXPECT_EQ(e, 0);
  EXPECT_EQ(f.dev().injected(Op::read).failed, 0u);
  // A rule without a probability still matches every overlapping operation.
  f.dev().fail_reads(Sector(0), Sector(8), ENXIO);
  const std::vector<int> got = f.reads(4);
  EXPECT_EQ(got[0], ENXIO);
  EXPECT_EQ(got[1], 0);
  EXPECT_EQ(f.dev().injected(Op::read).failed, 1u);
  EXPECT_EQ(f.dev().injected_errors(ENXIO), 1u);
}

TEST(FaultDeviceStorm, FractionIsNearTheProbability) {
  Fixture f;
  f.dev().seed(12345);
  f.dev().fail_randomly(Op::read, 0.3, EIO);
  constexpr int kOps = 2000;
  int failed = 0;
  for (int e : f.reads(kOps)) {
    EXPECT_TRUE(e == 0 || e == EIO) << e;
    failed += e == EIO ? 1 : 0;
  }
  // Binomial(2000, 0.3): mean 600, standard deviation 20.5; 6 deviations either side.
  EXPECT_GT(failed, 477);
  EXPECT_LT(failed, 723);
  EXPECT_EQ(f.dev().injected(Op::read).failed, static_cast<uint64_t>(failed));
  EXPECT_EQ(f.dev().injected_errors(EIO), static_cast<uint64_t>(failed));
  // The records say the same.
  size_t recorded = 0;
  for (const auto& r : records_of(f.dev(), Op::read)) recorded += r.error == EIO ? 1 : 0;
  EXPECT_EQ(recorded, static_cast<size_t>(failed));
}

TEST(FaultDeviceStorm, SameSeedSameOutcomesDifferentSeedDifferent) {
  auto run = [](uint64_t seed) {
    Fixture f;
    f.dev().seed(seed);
    f.dev().fail_randomly(Op::read, 0.5, EIO);
    return f.reads(200);
  };
  const auto a = run(7), b = run(7), c = run(8);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

TEST(FaultDeviceStorm, AMissedDrawFallsThroughToTheNextRule) {
  Fixture f;
  f.dev().seed(99);
  f.dev().fail_randomly(Op::read, 0.5, EIO);
  f.dev().fail_randomly(Op::read, 1.0, ENOSPC);  // takes whatever the first rule let through
  int eio = 0, enospc = 0;
  for (int e : f.reads(400)) {
    ASSERT_TRUE(e == EIO || e == ENOSPC) << e;
    (e == EIO ? eio : enospc)++;
  }
  EXPECT_GT(eio, 140);
  EXPECT_GT(enospc, 140);
  EXPECT_EQ(f.dev().injected_errors(EIO), static_cast<uint64_t>(eio));
  EXPECT_EQ(f.dev().injected_errors(ENOSPC), static_cast<uint64_t>(enospc));
  EXPECT_EQ(f.dev().injected(Op::read).failed, 400u);
  // Writes match no rule.
  EXPECT_FALSE(run_op(f.dev(), Op::write, 0, f.buffer));
  EXPECT_EQ(f.dev().injected(Op::write).failed, 0u);
}

TEST(FaultDeviceStorm, OnlyOverlappingOperationsDrawAndCount) {
  Fixture f;
  FaultDevice::Rule r{Op::write, Sector(64), Sector(64), EIO};  // bytes [32 KiB, 64 KiB)
  r.probability = 0.5;
  f.dev().add_rule(r);
  int failed_inside = 0;
  for (int i = 0; i < 400; ++i) {
    const uint64_t off = (static_cast<uint64_t>(i) % 32) * kIo;  // the first 128 KiB
    const bool inside = off >= 32 * KiB && off < 64 * KiB;
    const int e = run_op(f.dev(), Op::write, off, f.buffer).value();
    if (!inside) {
      ASSERT_EQ(e, 0) << "a write outside the rule's range failed at " << off;
    } else if (e != 0) {
      ++failed_inside;
    }
  }
  EXPECT_GT(failed_inside, 10);
  EXPECT_LT(failed_inside, 90);  // 100 writes inside, half expected
  EXPECT_EQ(f.dev().injected(Op::write).failed, static_cast<uint64_t>(failed_inside));
}

TEST(FaultDeviceStorm, RemainingCountsOnlyMatches) {
  Fixture f;
  FaultDevice::Rule r{Op::read, Sector(0), Sector(~0ull >> 10), EIO};
  r.probability = 0.25;
  r.remaining = 3;
  f.dev().add_rule(r);
  int failed = 0;
  for (int e : f.reads(300)) failed += e != 0 ? 1 : 0;
  EXPECT_EQ(failed, 3);
}

TEST(FaultDeviceStorm, LatencySpikesDelayADrawnFraction) {
  Fixture f;
  f.dev().seed(5);
  f.dev().delay_randomly(Op::read, 0.2, milliseconds(2), milliseconds(4));
  uint64_t delayed = 0;
  for (int i = 0; i < 200; ++i) {
    const uint64_t before = f.dev().injected(Op::read).delayed;
    const auto start = std::chrono::steady_clock::now();
    ASSERT_FALSE(run_op(f.dev(), Op::read, (static_cast<uint64_t>(i) * kIo) % kDeviceBytes, f.buffer));
    const auto took = std::chrono::steady_clock::now() - start;
    if (f.dev().injected(Op::read).delayed > before) {
      ++delayed;
      // The delay is a lower bound (the dispatcher never fires early); no upper bound on a shared machine.
      EXPECT_GE(took, milliseconds(2));
    }
  }
  EXPECT_GT(delayed, 15u);
  EXPECT_LT(delayed, 75u);  // Binomial(200, 0.2): mean 40
  EXPECT_EQ(f.dev().injected(Op::read).failed, 0u);
  // A delayed operation still passes on: the data is the device's.
  EXPECT_TRUE(file_matches_pattern(f.image->path, 0, kDeviceBytes, 3, 0));
}

TEST(FaultDeviceStorm, DelayedFailuresCountBoth) {
  Fixture f;
  FaultDevice::Rule r{Op::flush, Sector(0), Sector(0), EIO, microseconds(500)};
  r.probability = 1.0;
  f.dev().add_rule(r);
  EXPECT_EQ(run_op(f.dev(), Op::flush, 0, f.buffer).value(), EIO);
  EXPECT_EQ(f.dev().injected(Op::flush).failed, 1u);
  EXPECT_EQ(f.dev().injected(Op::flush).delayed, 1u);
  f.dev().clear_injected();
  EXPECT_EQ(f.dev().injected(Op::flush).failed, 0u);
  EXPECT_EQ(f.dev().injected_errors(EIO), 0u);
}

TEST(FaultDeviceStorm, ClearRulesEndsTheStorm) {
  Fixture f;
  f.dev().fail_randomly(Op::read, 0.9, EIO);
  f.reads(20);
  EXPECT_GT(f.dev().injected(Op::read).failed, 0u);
  f.dev().clear_rules();
  for (int e : f.reads(50)) EXPECT_EQ(e, 0);
}

}  // namespace
}  // namespace kcopyfs::test
