// Fault storms on mirror legs (reliability issue, "fault storms"): legs behind FaultDevices that fail a
// random fraction of reads (EIO), writes (EIO, ENOSPC) and flushes (EIO) and delay a random fraction of
// everything (latency spikes), one leg or several at once, while threads write, read and flush against an
// in-memory model. A leg that leaves the set is replaced mid-storm by a new, also flaky, leg (online
// migration under load), up to a budget. What must hold:
//   - no crash, no hang: every operation completes within kOpTimeout (else the process reports and exits);
//   - while one leg is good for every region, every write and flush succeeds and every read returns the
//     model's data; after each flush the thread's area of the good leg holds the model;
//   - status says what happened: a leg that was failed a write or flush has left the set with F, D or S; a
//     leg failed only reads shows R and stays; a leg never failed shows A; a leg out of the set was failed
//     something (no false alarm); the dm status line's health field agrees with status();
//   - once the storm stops, replacing every leg that is not A and resyncing makes every leg equal the model.
// And when every leg fails the same I/O, the caller gets EIO, never wrong data, and nothing hangs.
//
// Seeds: tests/support/storm.h (KCOPYFS_STORM_SEED=N repeats one, KCOPYFS_STORM_SEEDS=K runs K).
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <future>
#include <iostream>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include "tests/mirror/mirror_test_util.h"
#include "tests/support/storm.h"

namespace kcopyfs::test {
namespace {

using namespace std::chrono_literals;
using Op = FaultDevice::Op;

constexpr auto kOpTimeout = kStormTimeout;
constexpr uint64_t kStormRegions = 64;  // 4 MiB legs of 64 KiB regions
constexpr unsigned kThreads = 4;

// How a flaky leg misbehaves.
struct Flakiness {
  double read_eio = 0;
  double write_eio = 0;
  double write_enospc = 0;
  double flush_eio = 0;
  double spike = 0;  // fraction of reads and writes delayed 1-15 ms
};

void apply(FaultDevice& f, const Flakiness& k, uint64_t seed) {
  f.clear_rules();
  f.seed(seed);
  if (k.read_eio > 0) f.fail_randomly(Op::read, k.read_eio, EIO);
  if (k.write_eio > 0) f.fail_randomly(Op::write, k.write_eio, EIO);
  if (k.write_enospc > 0) f.fail_randomly(Op::write, k.write_enospc, ENOSPC);
  if (k.flush_eio > 0) f.fail_randomly(Op::flush, k.flush_eio, EIO);
  if (k.spike > 0) {
    f.delay_randomly(Op::read, k.spike, 1ms, 15ms);
    f.delay_randomly(Op::write, k.spike, 1ms, 15ms);
  }
}

// Totals over a test's seeds, for the report.
struct Tally {
  uint64_t seeds = 0, writes = 0, reads = 0, flushes = 0, read_eio = 0, write_eio = 0, write_enospc = 0,
           flush_eio = 0, delayed = 0, replacements = 0, caller_errors = 0;
  void add(const FaultDevice& f) {
    read_eio += f.injected(Op::read).failed;
    write_eio += f.injected(Op::write).failed - f.injected_errors(ENOSPC);
    write_enospc += f.injected_errors(ENOSPC);
    flush_eio += f.injected(Op::flush).failed;
    delayed += f.injected(Op::read).delayed + f.injected(Op::write).delayed;
  }
  std::string line(const std::string& name) const {
    std::ostringstream s;
    s << "[storm] " << name << ": seeds " << seeds << ", ops " << writes + reads + flushes << " (writes "
      << writes << ", reads " << reads << ", flushes " << flushes << "), injected: read EIO " << read_eio
      << ", write EIO " << write_eio << ", write ENOSPC " << write_enospc << ", flush EIO " << flush_eio
      << ", delays " << delayed << "; legs replaced mid-storm " << replacements << "; errors seen by callers "
      << caller_errors;
    return s.str();
  }
};

// One leg device: the file, the FaultDevice handed to the mirror (owned by it while it is a leg).
struct LegFiles {
  std::string path;
  std::unique_ptr<FileDevice> file;
  FaultDevice* fault = nullptr;
};

struct StormCase {
  const char* name;
  unsigned legs;
  unsigned good;                 // a leg never failed a write or flush (the flush check reads it)
  std::vector<Flakiness> flaky;  // per leg (the good one's has only spikes)
  unsigned replacements = 0;     // legs that left the set replaced mid-storm, at most this many times
  bool disjoint_read_faults =
      false;  // read faults only in regions r % legs == leg: every region has a good leg
  int ops_per_thread = 120;
  uint64_t salt = 0;  // keeps the cases' seeds apart
};

void PrintTo(const StormCase& c, std::ostream* os) { *os << c.name; }

class MirrorStorm {
 public:
  MirrorStorm(const StormCase& c, uint64_t seed) : c_(c), seed_(seed), rng_(seed) {}

  void run(Tally& tally) {
    SCOPED_TRACE("seed " + std::to_string(seed_));
    const uint64_t bytes = kStormRegions * kRegionBytes;
    // Identical legs and a nosync log: the mirror starts in sync, holding the model.
    for (unsigned i = 0; i < c_.legs; ++i) {
      legs_.push_back(new_leg("leg" + std::to_string(i)));
      write_pattern_file(legs_.back()->path, bytes, seed_);
    }
    model_ = pattern(seed_, 0, bytes);
    std::vector<std::unique_ptr<BlockDevice>> devices;
    for (auto& l : legs_) devices.push_back(open_leg(*l));
    MirrorOptions o = test_options();
    o.resync_window = 8;
    auto log = CoreLog::create(o.region_size, Mirror::size_of(devices), SyncMode::nosync);
    ASSERT_TRUE(log) << log.error().message();
    auto made = Mirror::create(std::move(devices), std::unique_ptr<DirtyLog>(std::move(log).value()), o);
    ASSERT_TRUE(made) << made.error().message();
    mirror_ = std::move(made).value();
    for (unsigned i = 0; i < c_.legs; ++i) storm_leg(i);

    // The storm.
    std::atomic<unsigned> running{kThreads};
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < kThreads; ++t)
      threads.emplace_back([this, t, &running] {
        worker(t);
        --running;
        wake_.notify_all();
      });
    // Meanwhile: legs that left the set are replaced by new flaky ones (waits bounded; woken by the workers).
    while (running.load() > 0) {
      {
        std::unique_lock lock(wake_mutex_);
        wake_.wait_for(lock, 5ms);
      }
      if (replaced_ < c_.replacements) replace_dead_legs(/*clean=*/false);
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(write_errors_.load() + read_errors_.load() + flush_errors_.load(), 0u)
        << "errors reached the caller while a good leg held every region";
    EXPECT_EQ(mismatches_.load(), 0u) << "reads returned data other than the model's";
    EXPECT_EQ(flush_checks_failed_.load(), 0u) << "after a flush the good leg lacked a thread's writes";

    // Status says what happened, before anything is repaired.
    check_status_matches_injections("after the storm");
    for (auto& l : legs_) tally.add(*l->fault);
    for (auto& l : retired_) tally.add(*l->fault);
    tally.writes += writes_;
    tally.reads += reads_;
    tally.flushes += flushes_;
    tally.replacements += replaced_;
    tally.caller_errors += write_errors_ + read_errors_ + flush_errors_;

    // The storm stops; every leg that is not A is replaced by a clean one, and the mirror resyncs.
    for (auto& l : legs_) l->fault->clear_rules();
    replace_dead_legs(/*clean=*/true);
    bounded_call([&] { EXPECT_TRUE(mirror_->wait_in_sync(kOpTimeout)); }, "wait_in_sync", seed_);
    const MirrorStatus s = mirror_->status();
    EXPECT_EQ(s.state(), "in-sync");
    for (unsigned i = 0; i < s.legs.size(); ++i) {
      EXPECT_EQ(s.legs[i].health, 'A') << "leg " << i << " after the repair";
      EXPECT_TRUE(s.legs[i].in_set) << "leg " << i << " after the repair";
    }
    // A forced resync (the "sync" message) on top keeps them equal.
    bounded_call([&] { EXPECT_TRUE(mirror_->resync_all()); }, "resync_all", seed_);
    bounded_call([&] { EXPECT_TRUE(mirror_->wait_in_sync(kOpTimeout)); }, "wait_in_sync", seed_);
    std::vector<std::byte> all(bytes);
    {
      AlignedBuffer b(bytes);
      const auto ec = bounded([&](IoCallback cb) { mirror_->read(Bytes(0), b.span(), std::move(cb)); },
                              "read all", seed_);
      EXPECT_FALSE(ec) << ec.message();
      EXPECT_TRUE(b.vec() == model_) << "the mirror differs from the model after the repair";
    }
    EXPECT_FALSE(bounded([&](IoCallback cb) { mirror_->flush(std::move(cb)); }, "flush", seed_));
    bounded_call([&] { mirror_.reset(); }, "the mirror's destruction", seed_);
    for (unsigned i = 0; i < legs_.size(); ++i)
      EXPECT_TRUE(read_file(legs_[i]->path, 0, bytes) == model_) << "leg " << i << " differs from the model";
  }

 private:
  std::unique_ptr<LegFiles> new_leg(const std::string& name) {
    auto l = std::make_unique<LegFiles>();
    l->path = dir_.file(name + ".img");
    return l;
  }
  std::unique_ptr<BlockDevice> open_leg(LegFiles& l) {
    auto f = FileDevice::open(l.path, OpenOptions{});
    if (!f) throw std::runtime_error(f.error().message());
    l.file = std::move(f).value();
    auto fault = std::make_unique<FaultDevice>(*l.file);
    l.fault = fault.get();
    return fault;
  }
  void storm_leg(unsigned i) {
    FaultDevice& f = *legs_[i]->fault;
    const uint64_t s = seed_ * 31 + i * 7 + replaced_ * 1009;
    if (!c_.disjoint_read_faults) return apply(f, c_.flaky[i], s);
    // Read faults only in this leg's third (fifth...) of the regions: every region keeps a good leg.
    Flakiness k = c_.flaky[i];
    const double p = k.read_eio;
    k.read_eio = 0;
    apply(f, k, s);
    for (uint64_t r = i; r < kStormRegions; r += c_.legs) {
      FaultDevice::Rule rule{Op::read, Sector(r * kTestRegion.value()), kTestRegion, EIO};
      rule.probability = p;
      f.add_rule(rule);
    }
  }

  void worker(unsigned t) {
    std::mt19937_64 rng(seed_ * 100 + t);
    const uint64_t area = kStormRegions * kRegionBytes / kThreads;
    const uint64_t base = t * area;
    AlignedBuffer buf(32 * kBlock);
    for (int op = 0; op < c_.ops_per_thread; ++op) {
      const unsigned kind = static_cast<unsigned>(rng() % 100);
      const uint64_t blocks = 1 + rng() % 32;  // up to 128 KiB: often spans regions
      const uint64_t len = blocks * kBlock;
      const uint64_t off = base + (rng() % (area / kBlock - blocks + 1)) * kBlock;
      auto span = buf.span().subspan(0, len);
      if (kind < 45) {
        const auto d = pattern(rng(), 0, len);
        std::memcpy(span.data(), d.data(), len);
        const auto ec = bounded([&](IoCallback cb) { mirror_->write(Bytes(off), span, std::move(cb)); },
                                "a write", seed_);
        ++writes_;
        if (ec) {
          ++write_errors_;
          ADD_FAILURE() << "write at " << off << " failed: " << ec.message();
          continue;
        }
        std::lock_guard lock(model_mutex_);  // areas are disjoint; the lock orders the vector's accesses
        std::copy(d.begin(), d.end(), model_.begin() + static_cast<long>(off));
      } else if (kind < 88) {
        const auto ec =
            bounded([&](IoCallback cb) { mirror_->read(Bytes(off), span, std::move(cb)); }, "a read", seed_);
        ++reads_;
        if (ec) {
          ++read_errors_;
          ADD_FAILURE() << "read at " << off << " failed: " << ec.message();
          continue;
        }
        std::lock_guard lock(model_mutex_);
        if (!std::equal(span.begin(), span.end(), model_.begin() + static_cast<long>(off))) {
          ++mismatches_;
          ADD_FAILURE() << "read at " << off << " length " << len << " differs from the model";
        }
      } else {
        const auto ec = bounded([&](IoCallback cb) { mirror_->flush(std::move(cb)); }, "a flush", seed_);
        ++flushes_;
        if (ec) {
          ++flush_errors_;
          ADD_FAILURE() << "flush failed: " << ec.message();
          continue;
        }
        // Every write of this thread was acknowledged before the flush: the good leg holds them.
        const auto on_leg = read_file(legs_.at(c_.good)->path, base, area);
        std::lock_guard lock(model_mutex_);
        if (!std::equal(on_leg.begin(), on_leg.end(), model_.begin() + static_cast<long>(base))) {
          ++flush_checks_failed_;
          ADD_FAILURE() << "thread " << t << ": the good leg lacks flushed writes";
        }
      }
      wake_.notify_all();
    }
  }

  // Replaces every leg that left the set (clean: also legs with any error, by legs without rules).
  void replace_dead_legs(bool clean) {
    const MirrorStatus s = mirror_->status();
    for (unsigned i = 0; i < s.legs.size(); ++i) {
      const bool dead = !s.legs[i].in_set;
      if (!(dead || (clean && s.legs[i].health != 'A'))) continue;
      if (!clean && replaced_ >= c_.replacements) return;
      if (dead) {
        // No false alarm: a leg out of the set was failed a write, a flush, or (as resync source) a read.
        const FaultDevice& f = *legs_[i]->fault;
        EXPECT_GT(f.injected(Op::write).failed + f.injected(Op::flush).failed + f.injected(Op::read).failed,
                  0u)
            << "leg " << i << " left the set (health " << s.legs[i].health << ") without an injected fault";
      }
      auto fresh = new_leg("leg" + std::to_string(i) + "-r" + std::to_string(++generation_));
      make_sparse_file(fresh->path, kStormRegions * kRegionBytes);
      auto device = open_leg(*fresh);
      Result<std::unique_ptr<BlockDevice>> old = Error::invalid("not run");
      bounded_call([&] { old = mirror_->replace_leg(i, std::move(device)); }, "replace_leg", seed_);
      if (!old) {
        ADD_FAILURE() << "replace_leg(" << i << "): " << old.error().message();
        return;
      }
      // The old device is the FaultDevice over legs_[i]->file: both are kept (their counts are reported).
      old_devices_.push_back(std::move(old).value());
      retired_.push_back(std::move(legs_[i]));
      legs_[i] = std::move(fresh);
      if (!clean) {
        ++replaced_;
        storm_leg(i);
      } else {
        // The next leg may be replaced only once this one holds every region (replace_leg refuses to drop
        // the last leg that does).
        bounded_call([&] { EXPECT_TRUE(mirror_->wait_in_sync(kOpTimeout)); }, "wait_in_sync", seed_);
      }
    }
  }

  void check_status_matches_injections(const std::string& when) {
    SCOPED_TRACE(when);
    const MirrorStatus s = mirror_->status();
    const std::string info = mirror_->status_info();
    std::string health;
    for (unsigned i = 0; i < s.legs.size(); ++i) {
      const FaultDevice& f = *legs_[i]->fault;
      const uint64_t wf = f.injected(Op::write).failed + f.injected(Op::flush).failed;
      const uint64_t rf = f.injected(Op::read).failed;
      const char h = s.legs[i].health;
      health += h;
      EXPECT_EQ(s.legs[i].path, legs_[i]->path);
      if (wf > 0) {
        EXPECT_FALSE(s.legs[i].in_set)
            << "leg " << i << " was failed " << wf << " writes/flushes, health " << h;
        EXPECT_TRUE(h == 'D' || h == 'F' || h == 'S') << "leg " << i << " health " << h;
        if (f.injected(Op::flush).failed > 0 && f.injected(Op::write).failed == 0) {
          EXPECT_EQ(h, 'F');
        }
      } else if (rf > 0) {
        // Read errors leave the leg in the set (R), unless it was the resync's source (S).
        EXPECT_TRUE(h == 'R' || h == 'S') << "leg " << i << " was failed " << rf << " reads, health " << h;
      } else {
        EXPECT_EQ(h, 'A') << "leg " << i << " was never failed";
        EXPECT_TRUE(s.legs[i].in_set);
      }
    }
    // The good leg is never failed a write or flush; when it also fails no read, it stays A.
    EXPECT_TRUE(s.legs[c_.good].in_set);
    if (c_.flaky[c_.good].read_eio == 0) {
      EXPECT_EQ(s.legs[c_.good].health, 'A');
    }
    // The dm line: "<#legs> <dev>... <in_sync>/<total> 1 <health> <log...>".
    std::istringstream words(info);
    std::string w;
    words >> w;
    EXPECT_EQ(w, std::to_string(s.legs.size())) << info;
    for (unsigned i = 0; i < s.legs.size(); ++i) {
      words >> w;
      EXPECT_EQ(w, s.legs[i].path) << info;
    }
    words >> w;  // in_sync/total
    words >> w;
    EXPECT_EQ(w, "1") << info;
    words >> w;
    EXPECT_EQ(w, health) << info;
  }

  const StormCase& c_;
  const uint64_t seed_;
  std::mt19937_64 rng_;
  TempDir dir_;
  // Declared before the mirror: the files outlive the FaultDevices the mirror owns.
  std::vector<std::unique_ptr<LegFiles>> legs_;
  std::vector<std::unique_ptr<LegFiles>> retired_;
  std::vector<std::unique_ptr<BlockDevice>>
      old_devices_;  // replaced legs' FaultDevices (over retired_ files)
  std::unique_ptr<Mirror> mirror_;
  std::mutex model_mutex_;
  std::vector<std::byte> model_;
  std::mutex wake_mutex_;
  std::condition_variable wake_;
  unsigned replaced_ = 0;
  unsigned generation_ = 0;
  std::atomic<uint64_t> writes_{0}, reads_{0}, flushes_{0};
  std::atomic<uint64_t> write_errors_{0}, read_errors_{0}, flush_errors_{0}, mismatches_{0},
      flush_checks_failed_{0};
};

const Flakiness kGood{0, 0, 0, 0, 0.03};
const Flakiness kBad{0.10, 0.04, 0.02, 0.02, 0.05};
const Flakiness kWritesOnly{0, 0.04, 0.02, 0.02, 0.05};
const Flakiness kReadsOnly{0.15, 0, 0, 0, 0.05};

const StormCase kCases[] = {
    // One flaky leg of two; a leg that leaves the set is replaced by another flaky one, three times.
    {"OneOfTwoLegs", 2, 0, {kGood, kBad}, 3, false, 120, 11},
    // Two flaky legs of three at the same time.
    {"TwoOfThreeLegsOverlapping", 3, 0, {kGood, kBad, kBad}, 4, false, 120, 12},
    // The default leg (0) and leg 1 fail writes and flushes; leg 2 is good: the default role moves.
    {"DefaultLegFails", 3, 2, {kWritesOnly, kWritesOnly, kGood}, 2, false, 120, 13},
    // Every leg fails reads, each in its own regions: every region keeps a good leg.
    {"EveryLegFailsReadsInItsRegions", 3, 0, {kReadsOnly, kReadsOnly, kReadsOnly}, 0, true, 120, 14},
};

class MirrorStormTest : public ::testing::TestWithParam<StormCase> {};

TEST_P(MirrorStormTest, ReadsMatchStatusTellsReplaceRepairs) {
  const StormCase& c = GetParam();
  Tally tally;
  const auto start = std::chrono::steady_clock::now();
  for (uint64_t seed : storm_seeds(3, c.salt)) {
    std::cout << "[storm] " << c.name << " seed " << seed << " (KCOPYFS_STORM_SEED=" << seed << ")"
              << std::endl;
    MirrorStorm storm(c, seed);
    storm.run(tally);
    ++tally.seeds;
    if (HasFailure()) {
      std::cout << "[storm] " << c.name << " failed with seed " << seed << std::endl;
      break;
    }
  }
  std::cout << tally.line(c.name) << ", "
            << std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() << " s"
            << std::endl;
}

INSTANTIATE_TEST_SUITE_P(Storms, MirrorStormTest, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<StormCase>& info) { return info.param.name; });

// ---- every leg failing the same I/O

// Both legs fail a random 30% of all reads: a read returns the model's data, or EIO when every leg failed it
// (never wrong data); writes (not failed) keep going to both.
TEST(MirrorStormAllLegs, ReadsFailingOnEveryLegGiveEioNeverWrongData) {
  Tally tally;
  for (uint64_t seed : storm_seeds(3, 20)) {
    std::cout << "[storm] AllLegsReads seed " << seed << " (KCOPYFS_STORM_SEED=" << seed << ")" << std::endl;
    SCOPED_TRACE("seed " + std::to_string(seed));
    LegSet legs(2, 32, {seed, seed});
    std::vector<std::byte> model = legs.image(0);
    auto m = make_core_mirror(legs, SyncMode::nosync);
    for (unsigned i = 0; i < 2; ++i) {
      legs.fault(i).seed(seed + i);
      legs.fault(i).fail_randomly(Op::read, 0.3, EIO);
      legs.fault(i).delay_randomly(Op::read, 0.03, 1ms, 10ms);
    }
    std::mt19937_64 rng(seed);
    uint64_t eio = 0;
    AlignedBuffer buf(16 * kBlock);
    for (int op = 0; op < 300; ++op) {
      const uint64_t len = (1 + rng() % 16) * kBlock;
      const uint64_t off = (rng() % (legs.bytes() / kBlock - len / kBlock + 1)) * kBlock;
      auto span = buf.span().subspan(0, len);
      if (rng() % 3 == 0) {
        const auto d = pattern(rng(), 0, len);
        std::memcpy(span.data(), d.data(), len);
        ASSERT_FALSE(
            bounded([&](IoCallback cb) { m->write(Bytes(off), span, std::move(cb)); }, "write", seed));
        std::copy(d.begin(), d.end(), model.begin() + static_cast<long>(off));
        ++tally.writes;
        continue;
      }
      const uint64_t before0 = legs.fault(0).injected(Op::read).failed;
      const uint64_t before1 = legs.fault(1).injected(Op::read).failed;
      const auto ec = bounded([&](IoCallback cb) { m->read(Bytes(off), span, std::move(cb)); }, "read", seed);
      ++tally.reads;
      if (ec) {
        ++eio;
        EXPECT_EQ(ec.value(), EIO);
        EXPECT_GT(legs.fault(0).injected(Op::read).failed, before0) << "EIO although leg 0 did not fail";
        EXPECT_GT(legs.fault(1).injected(Op::read).failed, before1) << "EIO although leg 1 did not fail";
      } else {
        EXPECT_TRUE(std::equal(span.begin(), span.end(), model.begin() + static_cast<long>(off)))
            << "read at " << off << " returned wrong data";
      }
    }
    tally.caller_errors += eio;
    EXPECT_GT(eio, 0u);
    const MirrorStatus s = m->status();
    for (unsigned i = 0; i < 2; ++i) {
      EXPECT_EQ(s.legs[i].health, 'R');
      EXPECT_TRUE(s.legs[i].in_set);
    }
    EXPECT_NE(m->status_info().find(" 1 RR "), std::string::npos) << m->status_info();
    for (unsigned i = 0; i < 2; ++i) tally.add(legs.fault(i));
    ++tally.seeds;
    bounded_call([&] { m.reset(); }, "the mirror's destruction", seed);
    for (unsigned i = 0; i < 2; ++i) EXPECT_TRUE(legs.image(i) == model) << "leg " << i;
    if (HasFailure()) break;
  }
  std::cout << tally.line("AllLegsReads") << std::endl;
}

// Both legs fail the writes of one region: that write fails with EIO, both legs leave the set (D), and from
// then on every read, write and flush fails with EIO at once; nothing hangs, the mirror closes.
TEST(MirrorStormAllLegs, WriteFailingOnEveryLegFailsAndNothingHangs) {
  const uint64_t seed = 1;
  LegSet legs(2, 16, {5, 5});
  const std::vector<std::byte> before = legs.image(0);
  auto m = make_core_mirror(legs, SyncMode::nosync);
  const Sector bad(5 * kTestRegion.value());
  legs.fault(0).fail_writes(bad, kTestRegion, EIO);
  legs.fault(1).fail_writes(bad, kTestRegion, ENOSPC);
  AlignedBuffer buf(2 * kBlock);
  const auto d = pattern(77, 0, 2 * kBlock);
  buf.fill(d);
  // A write elsewhere is fine.
  EXPECT_FALSE(bounded([&](IoCallback cb) { m->write(Bytes(0), buf.span(), std::move(cb)); }, "write", seed));
  const auto ec = bounded([&](IoCallback cb) { m->write(to_bytes(bad), buf.span(), std::move(cb)); },
                          "write to the bad region", seed);
  EXPECT_EQ(ec.value(), EIO);
  const MirrorStatus s = m->status();
  for (unsigned i = 0; i < 2; ++i) {
    EXPECT_EQ(s.legs[i].health, 'D');
    EXPECT_FALSE(s.legs[i].in_set);
  }
  EXPECT_NE(m->status_info().find(" 1 DD "), std::string::npos) << m->status_info();
  EXPECT_EQ(
      bounded([&](IoCallback cb) { m->read(Bytes(0), buf.span(), std::move(cb)); }, "read", seed).value(),
      EIO);
  EXPECT_EQ(
      bounded([&](IoCallback cb) { m->write(Bytes(0), buf.span(), std::move(cb)); }, "write", seed).value(),
      EIO);
  EXPECT_EQ(bounded([&](IoCallback cb) { m->flush(std::move(cb)); }, "flush", seed).value(), EIO);
  // Replacing a leg needs another leg holding the data: refused, not hung.
  Result<std::unique_ptr<BlockDevice>> r = Error::invalid("not run");
  const std::string spare = legs.file("spare.img");
  make_sparse_file(spare, legs.bytes());
  auto spare_dev = legs.open_one(spare);
  bounded_call([&] { r = m->replace_leg(0u, std::move(spare_dev)); }, "replace_leg", seed);
  EXPECT_FALSE(r);
  bounded_call([&] { m.reset(); }, "the mirror's destruction", seed);
  // The failed write reached neither leg.
  for (unsigned i = 0; i < 2; ++i) {
    const auto img = legs.image(i);
    EXPECT_TRUE(std::equal(img.begin() + static_cast<long>(to_bytes(bad).value()),
                           img.begin() + static_cast<long>(to_bytes(bad).value() + kRegionBytes),
                           before.begin() + static_cast<long>(to_bytes(bad).value())));
  }
}

// Every leg fails the reads of one region: reads there fail with EIO (not wrong data), reads elsewhere work.
TEST(MirrorStormAllLegs, ReadFailingOnEveryLegFailsOnlyThere) {
  const uint64_t seed = 2;
  LegSet legs(3, 16, {9, 9, 9});
  const std::vector<std::byte> model = legs.image(0);
  auto m = make_core_mirror(legs, SyncMode::nosync);
  const Sector bad(3 * kTestRegion.value());
  for (unsigned i = 0; i < 3; ++i) legs.fault(i).fail_reads(bad, Sector(8), i == 1 ? ENOSPC : EIO);
  AlignedBuffer buf(kRegionBytes);
  EXPECT_EQ(bounded([&](IoCallback cb) { m->read(to_bytes(bad), buf.span(), std::move(cb)); }, "read", seed)
                .value(),
            EIO);
  for (uint64_t r = 0; r < 16; ++r) {
    if (r == 3) continue;
    ASSERT_FALSE(bounded([&](IoCallback cb) { m->read(Bytes(r * kRegionBytes), buf.span(), std::move(cb)); },
                         "read", seed));
    EXPECT_TRUE(std::equal(buf.span().begin(), buf.span().end(),
                           model.begin() + static_cast<long>(r * kRegionBytes)));
  }
  const MirrorStatus s = m->status();
  for (unsigned i = 0; i < 3; ++i) EXPECT_EQ(s.legs[i].health, 'R');
  bounded_call([&] { m.reset(); }, "the mirror's destruction", seed);
}

// Leg 0 fails the reads of region 0, leg 1 those of region 1: a read across both regions has a good copy of
// each and succeeds (region by region), as the kernel's region-sized bios would.
TEST(MirrorStormAllLegs, ReadAcrossRegionsEachFailedOnOneLegSucceeds) {
  const uint64_t seed = 3;
  LegSet legs(2, 8, {4, 4});
  const std::vector<std::byte> model = legs.image(0);
  auto m = make_core_mirror(legs, SyncMode::nosync);
  legs.fault(0).fail_reads(Sector(0), kTestRegion);
  legs.fault(1).fail_reads(kTestRegion, kTestRegion);
  AlignedBuffer buf(2 * kRegionBytes);
  const auto ec = bounded([&](IoCallback cb) { m->read(Bytes(0), buf.span(), std::move(cb)); }, "read", seed);
  EXPECT_FALSE(ec) << ec.message();
  EXPECT_TRUE(std::equal(buf.span().begin(), buf.span().end(), model.begin()));
  const MirrorStatus s = m->status();
  EXPECT_EQ(s.legs[0].health, 'R');
  EXPECT_EQ(s.legs[1].health, 'R');
  bounded_call([&] { m.reset(); }, "the mirror's destruction", seed);
}

// The default leg fails while a replaced leg is still being resynced: the default role must go to the leg
// that holds every region, not to the new one (whose regions not copied yet are stale): reads stay correct
// and the resync copies the data, not the stale regions, over the others.
TEST(MirrorStormAllLegs, DefaultRoleSkipsALegStillBeingResynced) {
  const uint64_t seed = 4;
  LegSet legs(3, 16, {6, 6, 6});
  std::vector<std::byte> model = legs.image(0);
  auto m = make_core_mirror(legs, SyncMode::nosync);
  bounded_call([&] { m->stop_resync(); }, "stop_resync", seed);
  const std::string fresh = legs.file("fresh.img");
  make_sparse_file(fresh, legs.bytes());
  Result<std::unique_ptr<BlockDevice>> old = Error::invalid("not run");
  bounded_call([&] { old = m->replace_leg(1u, legs.open_one(fresh)); }, "replace_leg", seed);
  ASSERT_TRUE(old) << old.error().message();
  // Leg 1 now holds nothing; the resync is stopped, so it stays so. Leg 0 (the default) fails a write.
  legs.fault(0).fail_all_writes(EIO);
  AlignedBuffer w(kBlock);
  const auto d = pattern(8, 0, kBlock);
  w.fill(d);
  ASSERT_FALSE(bounded([&](IoCallback cb) { m->write(Bytes(3 * kRegionBytes), w.span(), std::move(cb)); },
                       "write", seed));
  std::copy(d.begin(), d.end(), model.begin() + static_cast<long>(3 * kRegionBytes));
  const MirrorStatus s = m->status();
  EXPECT_FALSE(s.legs[0].in_set);
  EXPECT_FALSE(s.legs[1].is_default) << "the default role went to the leg being resynced";
  EXPECT_TRUE(s.legs[2].is_default);
  AlignedBuffer all(legs.bytes());
  ASSERT_FALSE(bounded([&](IoCallback cb) { m->read(Bytes(0), all.span(), std::move(cb)); }, "read", seed));
  EXPECT_TRUE(all.vec() == model) << "reads returned stale data";
  bounded_call([&] { m->start_resync(); }, "start_resync", seed);
  bounded_call([&] { EXPECT_TRUE(m->wait_in_sync(kOpTimeout)); }, "wait_in_sync", seed);
  ASSERT_FALSE(bounded([&](IoCallback cb) { m->read(Bytes(0), all.span(), std::move(cb)); }, "read", seed));
  EXPECT_TRUE(all.vec() == model);
  bounded_call([&] { m.reset(); }, "the mirror's destruction", seed);
  EXPECT_TRUE(legs.image(fresh) == model) << "the new leg differs from the model";
  EXPECT_TRUE(legs.image(2) == model) << "the good leg differs from the model";
}

}  // namespace
}  // namespace kcopyfs::test
