// FaultDevice: a BlockDevice wrapper that fails chosen sector ranges, adds latency and records every
// operation, for tests of every layer (kcopyd's error rules, mirror leg faults, snapshot COW failures).
//
// Rules are checked in the order added; the first that matches an operation decides it. A failing operation
// is not passed to the inner device; a delayed one is passed on after its delay. Failures and delays complete
// on the FaultDevice's own dispatcher thread, so the BlockDevice completion contract holds. A rule may also
// carry a hook (on_match) that runs when it matches, before the operation goes any further: crash tests use
// it to end a process at an exact step of a protocol, or to hold a step while the test looks around.
//
// Storms: a rule with probability p < 1 matches an overlapping operation only with probability p, drawn from
// the device's own generator (seed()); when it does not, the operation goes on to the next rule, as if this
// one did not overlap. So a storm stacks rules: "20% of writes fail with EIO", then "5% of what is left fails
// with ENOSPC", then "3% of every operation is delayed 5-50 ms" (a latency spike: delay_max > delay draws the
// delay uniformly from [delay, delay_max]). The same seed gives the same sequence of draws; which operation
// gets which draw depends on the order operations arrive in, so a multi-threaded storm repeats statistically,
// a single-threaded one exactly. What was injected is counted (injected()), for tests to report and to
// decide what status the layer above must show.
// Thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <queue>
#include <random>
#include <thread>
#include <vector>

#include "engine/block_device.h"

namespace kcopyfs {

class FaultDevice final : public BlockDevice {
 public:
  enum class Op { read, write, flush, write_zeroes };

  struct Rule {
    Op op = Op::read;
    Sector start;                        // the range it applies to (ignored for flush)
    Sector count = Sector(~0ull >> 10);  // default: the whole device
    int error = 0;                       // errno to fail with; 0 passes the operation on
    std::chrono::microseconds delay{0};  // added before passing on or failing
    int remaining = -1;                  // how many more matches it applies to; -1: forever
    // Runs on each match, on the thread that issued the operation (inside read/write/flush/write_zeroes),
    // before the delay, failure or pass-on, without the device's lock held. It may block (that thread waits;
    // other operations go on) or end the process. Empty: no hook.
    std::function<void()> on_match{};
    // The fraction of overlapping operations it matches (see Storms above); 1: every one.
    double probability = 1.0;
    // When greater than delay, the delay of each match is drawn uniformly from [delay, delay_max].
    std::chrono::microseconds delay_max{0};
  };

  // What the rules did, per kind of operation.
  struct Injected {
    uint64_t failed = 0;   // operations failed by a rule (not passed on)
    uint64_t delayed = 0;  // operations a rule delayed (passed on or failed after the delay)
  };

  struct Record {
    Op op;
    Sector start;
    Sector count;
    int error;  // what the operation completed with (0 on success)
  };

  // inner must outlive this device.
  explicit FaultDevice(BlockDevice& inner);
  ~FaultDevice() override;

  void add_rule(const Rule& rule);
  void clear_rules();
  // Shorthands.
  void fail_reads(Sector start, Sector count, int error = EIO) { add_rule({Op::read, start, count, error}); }
  void fail_writes(Sector start, Sector count, int error = EIO) {
    add_rule({Op::write, start, count, error});
  }
  void fail_all_writes(int error = EIO) { add_rule({Op::write, Sector(0), Sector(~0ull >> 10), error}); }
  void fail_flushes(int error = EIO) { add_rule({Op::flush, Sector(0), Sector(~0ull >> 10), error}); }
  void set_latency(Op op, std::chrono::microseconds delay) {
    add_rule({op, Sector(0), Sector(~0ull >> 10), 0, delay});
  }
  // Storm shorthands over the whole device: a fraction of op fails with error; a fraction of op is delayed
  // by [delay, delay_max].
  void fail_randomly(Op op, double probability, int error = EIO) {
    Rule r{op, Sector(0), Sector(~0ull >> 10), error};
    r.probability = probability;
    add_rule(r);
  }
  void delay_randomly(Op op, double probability, std::chrono::microseconds delay,
                      std::chrono::microseconds delay_max) {
    Rule r{op, Sector(0), Sector(~0ull >> 10), 0, delay};
    r.probability = probability;
    r.delay_max = delay_max;
    add_rule(r);
  }
  // Restarts the generator behind probabilities and drawn delays (default seed: 0).
  void seed(uint64_t seed);

  // Counts of what the rules did since construction (or clear_injected()).
  Injected injected(Op op) const;
  // Operations failed with this errno, every kind of operation together.
  uint64_t injected_errors(int error) const;
  void clear_injected();

  // Every completed operation in completion order.
  std::vector<Record> records() const;
  void clear_records();
  // The most operations of kind op that were in flight at once (submitted and not completed).
  unsigned peak_in_flight(Op op) const;

  const std::string& path() const override { return inner_.path(); }
  Bytes size() const override { return inner_.size(); }
  uint32_t logical_block_size() const override { return inner_.logical_block_size(); }
  uint32_t memory_alignment() const override { return inner_.memory_alignment(); }
  bool read_only() const override { return inner_.read_only(); }
  Extent extent_at(Bytes offset) const override { return inner_.extent_at(offset); }

  void read(Bytes offset, std::span<std::byte> buffer, IoCallback done, FixedBuffer fixed = {}) override;
  void write(Bytes offset, std::span<const std::byte> buffer, IoCallback done,
             FixedBuffer fixed = {}) override;
  void flush(IoCallback done) override;
  void write_zeroes(Bytes offset, Bytes length, bool may_unmap, IoCallback done) override;

 private:
  struct Timed {
    std::chrono::steady_clock::time_point due;
    uint64_t seq;
    std::function<void()> fire;
    bool operator>(const Timed& o) const { return due != o.due ? due > o.due : seq > o.seq; }
  };
  // Decides op over [start, start+count): fills error, delay and the hook to run. Updates one-shot counters,
  // draws probabilities and delays, and counts what it injects. Requires mutex_.
  void decide(Op op, Sector start, Sector count, int& error, std::chrono::microseconds& delay,
              std::function<void()>& hook);
  // Runs pass_on (which starts the inner I/O) or fails, after the delay; wraps done to record and count.
  void dispatch(Op op, Sector start, Sector count, IoCallback done, std::function<void(IoCallback)> pass_on);
  void schedule(std::chrono::microseconds delay, std::function<void()> fire);
  void timer_loop();

  BlockDevice& inner_;

  mutable std::mutex mutex_;
  // Guarded by mutex_.
  std::vector<Rule> rules_;
  std::vector<Record> records_;
  unsigned in_flight_[4] = {};
  unsigned peak_[4] = {};
  std::mt19937_64 rng_{0};
  Injected injected_[4] = {};
  std::map<int, uint64_t> injected_errors_;  // errno -> failures
  std::priority_queue<Timed, std::vector<Timed>, std::greater<>> timers_;
  uint64_t timer_seq_ = 0;
  bool stopping_ = false;
  std::condition_variable timer_wake_;

  std::thread timer_thread_;
};

}  // namespace kcopyfs
