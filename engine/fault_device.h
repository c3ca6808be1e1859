// FaultDevice: a BlockDevice wrapper that fails chosen sector ranges, adds latency and records every
// operation, for tests of every layer (kcopyd's error rules, mirror leg faults, snapshot COW failures).
//
// Rules are checked in the order added; the first that matches an operation decides it. A failing operation
// is not passed to the inner device; a delayed one is passed on after its delay. Failures and delays complete
// on the FaultDevice's own dispatcher thread, so the BlockDevice completion contract holds. A rule may also
// carry a hook (on_match) that runs when it matches, before the operation goes any further: crash tests use
// it to end a process at an exact step of a protocol, or to hold a step while the test looks around.
// Thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <queue>
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
  // Decides op over [start, start+count): fills error, delay and the hook to run. Updates one-shot counters.
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
  std::priority_queue<Timed, std::vector<Timed>, std::greater<>> timers_;
  uint64_t timer_seq_ = 0;
  bool stopping_ = false;
  std::condition_variable timer_wake_;

  std::thread timer_thread_;
};

}  // namespace kcopyfs
