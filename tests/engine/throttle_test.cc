// Throttle (engine/throttle.h, kernel-dm-notes.md §1.7): the byte-rate cap, the kernel's percent throttle,
// live changes of both, and the cap's effect on a real copy.
#include "engine/throttle.h"

#include <gtest/gtest.h>

#include <future>
#include <thread>

#include "tests/engine/engine_test_util.h"

namespace kcopyfs::test {
namespace {

using Clock = Throttle::Clock;
using std::chrono::duration_cast;
using std::chrono::milliseconds;
using std::chrono::seconds;

// An arbitrary origin far from the clock's epoch.
const Clock::time_point t0 = Clock::time_point(std::chrono::hours(1000));

// Asks for an I/O the way kcopyd does, asking again at each time the throttle names, and returns when it was
// allowed to start. Fails the test if it is deferred beyond `limit` after `now`.
Clock::time_point start(Throttle& t, uint64_t bytes, Clock::time_point now,
                        Clock::duration limit = seconds(100)) {
  const Clock::time_point first = now;
  for (unsigned waits = 0;; ++waits) {
    const Clock::time_point when = t.try_start(bytes, waits, now);
    if (when <= now) return now;
    EXPECT_LE(when - now, Throttle::kWaitStep) << "asks to come back later than one wait step";
    now = when;
    if (now - first > limit) {
      ADD_FAILURE() << "still deferred after " << duration_cast<milliseconds>(now - first).count() << " ms";
      return now;
    }
  }
}

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

TEST(Throttle, RateDefersTheNextStartByAboutBytesOverRate) {
  Throttle t(100, 2 * MiB);  // 2 MiB/s
  EXPECT_EQ(start(t, 4 * MiB, t0), t0) << "the first start is not deferred";
  t.finish(t0);
  // 4 MiB at 2 MiB/s: the next byte may go about 2 s later.
  EXPECT_GT(t.try_start(4 * KiB, 0, t0), t0);
  const double waited = ms_between(t0, start(t, 4 * KiB, t0));
  EXPECT_GE(waited, 1800);
  EXPECT_LE(waited, 2000);
  // An I/O that does not count bytes is never held by the cap.
  Throttle u(100, 1);
  EXPECT_EQ(u.try_start(1 * MiB, 0, t0), t0);
  EXPECT_EQ(u.try_start(0, 0, t0), t0);
}

TEST(Throttle, RateHoldsOverManyStarts) {
  Throttle t(100, 1 * MiB);  // 64 KiB pieces cost 62.5 ms each
  Clock::time_point now = t0;
  for (int i = 0; i < 20; ++i) {
    now = start(t, 64 * KiB, now);
    t.finish(now);
  }
  // 19 pieces' worth of time passed before the 20th started (less at most one wait step of initial credit).
  const double elapsed = ms_between(t0, now);
  EXPECT_GE(elapsed, 19 * 62.5 - 100 - 1);
  EXPECT_LE(elapsed, 19 * 62.5 + 1);
}

TEST(Throttle, PercentHundredNeverDefers) {
  Throttle t(100);
  Clock::time_point now = t0;
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(t.try_start(1 * MiB, 0, now), now);
    now += seconds(1);  // busy the whole time
    t.finish(now);
  }
}

TEST(Throttle, PercentDefersAfterABusyPeriodAndGivesUpAfterTenWaits) {
  Throttle t(10);
  EXPECT_EQ(t.try_start(0, 0, t0), t0) << "no history: not deferred";
  const Clock::time_point busy_end = t0 + seconds(5);  // in flight for 5 s: far above 10%
  t.finish(busy_end);
  const Clock::time_point when = t.try_start(0, 0, busy_end);
  EXPECT_EQ(when, busy_end + Throttle::kWaitStep);
  // After kMaxWaits refusals it goes anyway, as the kernel does.
  EXPECT_EQ(t.try_start(0, Throttle::kMaxWaits, busy_end), busy_end);
  t.finish(busy_end);
  // History decays: after a long idle period starts are allowed again.
  const Clock::time_point later = busy_end + seconds(30);
  EXPECT_EQ(t.try_start(0, 0, later), later);
  t.finish(later);
}

TEST(Throttle, PercentSharesTimeRoughlyAsAsked) {
  // Simulate back-to-back 10 ms I/Os through a 50% throttle for 20 s: the busy fraction settles near 50%.
  Throttle t(50);
  Clock::time_point now = t0;
  Clock::duration busy{};
  while (now < t0 + seconds(20)) {
    now = start(t, 0, now);
    now += milliseconds(10);
    busy += milliseconds(10);
    t.finish(now);
  }
  const double fraction = std::chrono::duration<double>(busy) / std::chrono::duration<double>(now - t0);
  EXPECT_GT(fraction, 0.3);
  EXPECT_LT(fraction, 0.7);
}

TEST(Throttle, LiveChangesTakeEffect) {
  Throttle t(100, 1 * KiB);
  EXPECT_EQ(t.bytes_per_second(), 1 * KiB);
  EXPECT_EQ(start(t, 1 * MiB, t0), t0);
  t.finish(t0);
  EXPECT_GT(t.try_start(4 * KiB, 0, t0), t0) << "1 MiB at 1 KiB/s: held for about 17 minutes";

  t.set_bytes_per_second(0);
  EXPECT_EQ(t.bytes_per_second(), 0u);
  EXPECT_EQ(t.try_start(4 * KiB, 0, t0), t0) << "no cap: not held";
  t.finish(t0);

  t.set_bytes_per_second(1 * MiB);
  EXPECT_EQ(t.try_start(1 * MiB, 0, t0), t0) << "a new cap starts from now, not from the old backlog";
  t.finish(t0);
  const double waited = ms_between(t0, start(t, 4 * KiB, t0));
  EXPECT_GE(waited, 800);
  EXPECT_LE(waited, 1000);

  // The percent throttle can be lifted while an I/O is deferred.
  Throttle p(10);
  EXPECT_EQ(p.try_start(0, 0, t0), t0);
  p.finish(t0 + seconds(5));
  EXPECT_GT(p.try_start(0, 0, t0 + seconds(5)), t0 + seconds(5));
  p.set_percent(100);
  EXPECT_EQ(p.percent(), 100u);
  EXPECT_EQ(p.try_start(0, 0, t0 + seconds(5)), t0 + seconds(5));
}

struct CopyEnv {
  TempDir dir;
  std::unique_ptr<Image> src, dst;
  explicit CopyEnv(uint64_t size) {
    src = Image::with_pattern(dir.file("src"), size, 80);
    dst = Image::sparse(dir.file("dst"), size);
  }
};

TEST(Throttle, ByteCapSlowsARealCopy) {
  const uint64_t size = 16 * MiB;
  CopyEnv env(size);
  KcopydOptions o;
  o.allow_offload = false;
  o.throttle = std::make_shared<Throttle>(100, 32 * MiB);
  auto client = make_client(o);
  Callbacks cb;
  Region dests[] = {env.dst->region(Sector(0), Sector(0))};
  const auto began = std::chrono::steady_clock::now();
  ASSERT_TRUE(client->copy(env.src->region(Sector(0), sectors_of_bytes(size)), dests, {}, cb.make()).ok());
  ASSERT_TRUE(cb.wait_all());
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
  // 16 MiB at 32 MiB/s is 0.5 s, less the throttle's initial credit of one wait step.
  EXPECT_GE(elapsed, 0.35);
  EXPECT_FALSE(cb.result().read_error);
  EXPECT_TRUE(file_matches_pattern(env.dst->path, 0, size, 80, 0));
}

TEST(Throttle, RaisingTheCapMidCopyFinishesSooner) {
  const uint64_t size = 17 * MiB;
  CopyEnv env(size);
  auto throttle = std::make_shared<Throttle>(100, 4 * MiB);  // 17 MiB at 4 MiB/s: over 4 s
  KcopydOptions o;
  o.allow_offload = false;
  o.throttle = throttle;
  auto client = make_client(o);

  // A small first job signals when the copy is under way; another thread then raises the cap.
  auto first_done = std::make_shared<std::promise<void>>();  // shared: set_value may outlive the wait
  std::atomic<bool> big_done_before_raise{false};
  std::atomic<bool> big_done{false};
  Callbacks cb(2);
  auto first_cb = cb.make(0);
  auto big_cb = cb.make(1);
  Region d_first[] = {env.dst->region(Sector(0), Sector(0))};
  Region d_big[] = {env.dst->region(sectors_of_bytes(1 * MiB), Sector(0))};
  const auto began = std::chrono::steady_clock::now();
  std::thread raiser([&] {
    if (first_done->get_future().wait_for(kTimeout) != std::future_status::ready) return;
    big_done_before_raise = big_done.load();
    throttle->set_bytes_per_second(1 * GiB);
  });
  ASSERT_TRUE(client
                  ->copy(env.src->region(Sector(0), sectors_of_bytes(1 * MiB)), d_first, {},
                         [&, first_done](bool r, uint32_t w) {
                           first_cb(r, w);
                           first_done->set_value();
                         })
                  .ok());
  ASSERT_TRUE(client
                  ->copy(env.src->region(sectors_of_bytes(1 * MiB), sectors_of_bytes(16 * MiB)), d_big, {},
                         [&](bool r, uint32_t w) {
                           big_done = true;
                           big_cb(r, w);
                         })
                  .ok());
  const bool finished = cb.wait_all();
  raiser.join();
  ASSERT_TRUE(finished);
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
  EXPECT_FALSE(big_done_before_raise.load()) << "the cap was raised only after the copy ended";
  EXPECT_LT(elapsed, 2.5) << "the raised cap did not take effect (the original cap needs over 4 s)";
  EXPECT_EQ(throttle->bytes_per_second(), 1 * GiB);
  EXPECT_TRUE(file_matches_pattern(env.dst->path, 0, size, 80, 0));
}

}  // namespace
}  // namespace kcopyfs::test
