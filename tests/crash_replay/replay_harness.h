// Helpers of the crash-replay workloads: a rig of recorded in-memory devices sharing one WriteLog, a model of
// what a view's user was acknowledged (writes, fsyncs) placed in the log's order by markers, the per-sector
// check of a rebuilt view against that model, and the seeds and variant counts from the environment.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/recording_device.h"
#include "engine/result.h"
#include "tests/crash_replay/replay.h"
#include "tests/support/test_support.h"

namespace kcopyfs::replay {

inline constexpr auto kReplayWait = std::chrono::seconds(60);

// KCOPYFS_REPLAY_SEED repeats a run's workload choices and replay variants (the thread interleaving of the
// workload is not repeated: the log differs from run to run). Unset: a fresh seed, printed.
inline uint64_t replay_seed() {
  if (const char* s = std::getenv("KCOPYFS_REPLAY_SEED"); s != nullptr && *s != '\0')
    return std::strtoull(s, nullptr, 0);
  static const uint64_t fresh = (uint64_t{std::random_device{}()} << 32) ^ std::random_device{}();
  return fresh;
}
// Random variants per cut point (besides the prefix); KCOPYFS_REPLAY_VARIANTS raises it for long runs.
inline unsigned replay_variants(unsigned default_count) {
  if (const char* s = std::getenv("KCOPYFS_REPLAY_VARIANTS"); s != nullptr && *s != '\0')
    return static_cast<unsigned>(std::strtoul(s, nullptr, 0));
  return default_count;
}
// The replay RNG of one (seed, cut, variant): any single case can be rebuilt again from the three numbers.
inline std::mt19937_64 case_rng(uint64_t seed, uint64_t cut, unsigned variant) {
  std::seed_seq seq{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32),
                    static_cast<uint32_t>(cut), static_cast<uint32_t>(cut >> 32), variant};
  return std::mt19937_64(seq);
}

// Devices for a workload: images in memory (a deque, so references stay valid as devices are added), each
// registered in the log; recorder(id) wraps one for the library to own.
class Rig {
 public:
  DeviceId add(const std::string& name, Image initial) {
    const DeviceId id = log.add_device(name, Bytes(initial.size()));
    initial_.push_back(initial);
    current_.push_back(std::move(initial));
    memory_.push_back(std::make_unique<MemoryDevice>(name, current_.back()));
    return id;
  }
  std::unique_ptr<BlockDevice> recorder(DeviceId id) {
    return std::make_unique<RecordingDevice>(*memory_.at(id), log, id);
  }
  std::vector<Image> initial() const { return {initial_.begin(), initial_.end()}; }

  WriteLog log;

 private:
  std::deque<Image> initial_;
  std::deque<Image> current_;
  std::vector<std::unique_ptr<MemoryDevice>> memory_;
};

// Waits for one asynchronous call, at most kReplayWait (then the test fails and throws).
inline std::error_code wait_for(const std::function<void(IoCallback)>& start, const std::string& what) {
  auto p = std::make_shared<std::promise<std::error_code>>();
  auto f = p->get_future();
  start([p](std::error_code ec) { p->set_value(ec); });
  if (f.wait_for(kReplayWait) != std::future_status::ready) {
    ADD_FAILURE() << what << ": no completion within " << kReplayWait.count() << " s";
    throw std::runtime_error(what + ": timeout");
  }
  return f.get();
}

// The Status a callback (e.g. start_merge's on_done) delivers, waited for at most kReplayWait.
class StatusWaiter {
 public:
  std::function<void(Status)> callback() {
    auto p = promise_;
    return [p](Status s) { p->set_value(std::move(s)); };
  }
  Status wait() {
    if (future_.wait_for(kReplayWait) != std::future_status::ready) {
      ADD_FAILURE() << "no completion within " << kReplayWait.count() << " s";
      throw std::runtime_error("timeout");
    }
    return future_.get();
  }

 private:
  std::shared_ptr<std::promise<Status>> promise_ = std::make_shared<std::promise<Status>>();
  std::future<Status> future_ = promise_->get_future();
};

inline Image read_view(BlockDevice& d) {
  Image out(d.size().value());
  const auto ec =
      wait_for([&](IoCallback cb) { d.read(Bytes(0), out, std::move(cb)); }, "read of " + d.path());
  EXPECT_FALSE(ec) << "read of " << d.path() << ": " << ec.message();
  return out;
}

// What a view's user did and was told, in log order. Writes carry pattern(uid) data, so every sector of a
// rebuilt image can be traced to the write it came from.
class ViewModel {
 public:
  struct Write {
    uint64_t offset, length;
    uint64_t submitted;           // marker placed just before the call
    uint64_t acked = UINT64_MAX;  // marker placed when it returned (UINT64_MAX: never)
    std::vector<std::byte> data;
  };
  struct Flush {
    uint64_t issued, returned;
  };

  ViewModel(std::string name, Image base) : name_(std::move(name)), base_(std::move(base)), now_(base_) {}

  const std::string& name() const { return name_; }
  // The view as the user sees it now (every write returned so far applied).
  const Image& now() const { return now_; }

  // Synchronous write through dev, recorded with markers in log.
  void write(BlockDevice& dev, WriteLog& log, uint64_t offset, uint64_t length, uint64_t uid) {
    Write w{offset, length, 0, UINT64_MAX, test::pattern(uid, 0, length)};
    w.submitted = log.mark(name_ + " write issued");
    const auto ec = wait_for([&](IoCallback cb) { dev.write(Bytes(offset), w.data, std::move(cb)); },
                             "write to " + name_);
    ASSERT_FALSE(ec) << "write to " << name_ << ": " << ec.message();
    w.acked = log.mark(name_ + " write returned");
    std::memcpy(now_.data() + offset, w.data.data(), length);
    writes_.push_back(std::move(w));
  }
  // Several writes in flight at once (ranges must not overlap); each acknowledgement is marked as it comes.
  void write_batch(BlockDevice& dev, WriteLog& log, const std::vector<std::pair<uint64_t, uint64_t>>& ranges,
                   uint64_t first_uid) {
    const size_t base = writes_.size();
    for (size_t i = 0; i < ranges.size(); ++i)
      writes_.push_back(Write{ranges[i].first, ranges[i].second, 0, UINT64_MAX,
                              test::pattern(first_uid + i, 0, ranges[i].second)});
    std::vector<std::future<std::error_code>> futures;
    for (size_t i = 0; i < ranges.size(); ++i) {
      auto p = std::make_shared<std::promise<std::error_code>>();
      futures.push_back(p->get_future());
      Write& w = writes_[base + i];
      w.submitted = log.mark(name_ + " batch write issued");
      dev.write(Bytes(w.offset), w.data, [p, &w, &log, this](std::error_code ec) {
        w.acked = log.mark(name_ + " batch write returned");
        p->set_value(ec);
      });
    }
    for (auto& f : futures) {
      if (f.wait_for(kReplayWait) != std::future_status::ready) {
        ADD_FAILURE() << "batch write to " << name_ << ": no completion";
        throw std::runtime_error("timeout");
      }
      const auto ec = f.get();
      EXPECT_FALSE(ec) << "batch write to " << name_ << ": " << ec.message();
    }
    for (size_t i = base; i < writes_.size(); ++i)
      std::memcpy(now_.data() + writes_[i].offset, writes_[i].data.data(), writes_[i].length);
  }
  void flush(BlockDevice& dev, WriteLog& log) {
    Flush f{log.mark(name_ + " fsync issued"), 0};
    const auto ec = wait_for([&](IoCallback cb) { dev.flush(std::move(cb)); }, "fsync of " + name_);
    ASSERT_FALSE(ec) << "fsync of " << name_ << ": " << ec.message();
    f.returned = log.mark(name_ + " fsync returned");
    flushes_.push_back(f);
  }
  size_t write_count() const { return writes_.size(); }
  size_t flush_count() const { return flushes_.size(); }

  // Checks a rebuilt image of the view at cut: each sector holds the value of the last write acknowledged
  // before an fsync that returned before the cut (or the base), or the value of a write not so covered that
  // was issued before the cut. Result: success, or the first sector that is neither.
  ::testing::AssertionResult check(const Image& got, uint64_t cut) const {
    if (got.size() != base_.size()) return ::testing::AssertionFailure() << name_ << ": size differs";
    uint64_t covered_before = 0;  // writes acknowledged before this marker are durable
    for (const Flush& f : flushes_)
      if (f.returned < cut) covered_before = std::max(covered_before, f.issued);
    const uint64_t sectors = got.size() / kSectorSize;
    // Per sector: the durable value (index of its write, or -1 for the base) and the other candidates.
    std::vector<int64_t> durable(sectors, -1);
    std::vector<uint64_t> durable_ack(sectors, 0);
    for (size_t i = 0; i < writes_.size(); ++i) {
      const Write& w = writes_[i];
      if (w.acked >= covered_before) continue;
      for (uint64_t s = w.offset / kSectorSize; s < (w.offset + w.length) / kSectorSize; ++s) {
        if (durable[s] < 0 || w.acked > durable_ack[s]) {
          durable[s] = static_cast<int64_t>(i);
          durable_ack[s] = w.acked;
        }
      }
    }
    for (uint64_t s = 0; s < sectors; ++s) {
      const std::byte* have = got.data() + s * kSectorSize;
      auto sector_of = [&](int64_t i) {
        if (i < 0) return base_.data() + s * kSectorSize;
        const Write& w = writes_[static_cast<size_t>(i)];
        return w.data.data() + (s * kSectorSize - w.offset);
      };
      if (std::memcmp(have, sector_of(durable[s]), kSectorSize) == 0) continue;
      bool ok = false;
      for (size_t i = 0; i < writes_.size() && !ok; ++i) {
        const Write& w = writes_[i];
        if (w.acked < covered_before || w.submitted >= cut) continue;
        if (s * kSectorSize < w.offset || s * kSectorSize >= w.offset + w.length) continue;
        ok = std::memcmp(have, sector_of(static_cast<int64_t>(i)), kSectorSize) == 0;
      }
      if (!ok) {
        auto r = ::testing::AssertionFailure();
        r << name_ << ": sector " << s << " (byte " << s * kSectorSize << ") holds neither ";
        if (durable[s] < 0)
          r << "its base content";
        else
          r << "durable write #" << durable[s] << " (acked at event " << durable_ack[s] << ")";
        r << " nor a later write issued before the cut (durable: writes acked before event " << covered_before
          << ")";
        for (size_t i = 0; i < writes_.size(); ++i) {
          const Write& w = writes_[i];
          if (s * kSectorSize >= w.offset && s * kSectorSize < w.offset + w.length)
            r << "; write #" << i << " issued " << w.submitted << " acked " << w.acked;
        }
        return r;
      }
    }
    return ::testing::AssertionSuccess();
  }

 private:
  std::string name_;
  Image base_;
  Image now_;
  std::deque<Write> writes_;  // a deque: write_batch's callbacks hold references
  std::vector<Flush> flushes_;
};

inline ::testing::AssertionResult same_image(const Image& got, const Image& want) {
  if (got.size() != want.size()) return ::testing::AssertionFailure() << "sizes differ";
  for (size_t i = 0; i < got.size(); ++i)
    if (got[i] != want[i]) return ::testing::AssertionFailure() << "first difference at byte " << i;
  return ::testing::AssertionSuccess();
}

// Totals of one workload's replay, printed at the end and used by the documentation.
struct ReplayTotals {
  uint64_t events = 0, cuts = 0, flush_cuts = 0, in_flush_cuts = 0, images = 0;
  ReplayCounts writes;
  void print(const char* workload, uint64_t seed, unsigned variants, double seconds) const {
    std::printf("[replay] %s seed=%" PRIu64 " events=%" PRIu64 " cuts=%" PRIu64
                " (just after a flush completion: %" PRIu64 ", just before one: %" PRIu64
                ")"
                " variants/cut=1+%u images_opened=%" PRIu64 " writes: durable=%" PRIu64 " present=%" PRIu64
                " absent=%" PRIu64 " torn=%" PRIu64 " after_cut=%" PRIu64 " replay_seconds=%.2f\n",
                workload, seed, events, cuts, flush_cuts, in_flush_cuts, variants, images, writes.durable,
                writes.present, writes.absent, writes.torn, writes.after_cut, seconds);
    std::fflush(stdout);
  }
};

}  // namespace kcopyfs::replay
