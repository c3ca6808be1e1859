// FillAheadDevice: a BlockDevice wrapper for a sparse image file whose writer moves from low offsets to high
// ones (a COW store allocates its chunks in order). In the background it writes zeros into the file's holes
// just ahead of the highest offset written so far, so that the writer's first write to a block overwrites an
// allocated block instead of making the filesystem allocate it on the latency path (and commit the allocation
// through its journal in the next flush). Measured on ext4: a COW data write into a hole took 1.1-1.8 ms,
// into written blocks 0.3-0.4 ms (docs/benchmarks.md).
//
// Content rule: a fill writes zeros only where the file has a hole, which reads as zeros already, and never
// over a range that a write is in flight to (fills start at or above the end of every write submitted so
// far). A write or write_zeroes that arrives for the range being filled waits for the fill to complete and is
// then passed on. So every reader sees exactly what it would see without the wrapper, at any instant and
// after a crash at any instant. Reads, flushes and extent queries pass straight through.
//
// Costs: up to Options::max_ahead of filesystem space is allocated before the writer needs it (the file never
// grows: fills stay inside its size). A fill that fails (ENOSPC on a full filesystem, EIO) stops filling for
// good and changes nothing else: the writer's own I/O goes on as without the wrapper.
//
// Completion contract: BlockDevice's (engine/block_device.h). Thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "engine/block_device.h"

namespace kcopyfs {

class FillAheadDevice final : public BlockDevice {
 public:
  struct Options {
    // The window kept filled past the highest write starts at `unit` and doubles at each refill that comes
    // less than `grow_within` after the previous one, up to max_ahead: a snapshot nobody writes costs one
    // unit, a busy one gets bursts of about a second of its writes.
    Bytes max_ahead{64u << 20};
    std::chrono::milliseconds grow_within{1000};
    Bytes unit{1u << 20};  // one fill: at most this much, as writes of up to 1 MiB
    // A refill starts when less than window / refill_divisor is left ahead of the writer, and fills the
    // whole window in one burst, ending with one flush: between bursts no allocation is left for the
    // writer's flushes to commit through the filesystem's journal.
    unsigned refill_divisor = 4;
    // Refills start only while the writes that raise the highest offset average at most this much (a moving
    // average): a large write pays the filesystem's allocation once for many blocks, so filling ahead of
    // large writes (big chunks, sequential copies) would only double their traffic.
    Bytes small_write{32u << 10};
  };

  struct Stats {
    uint64_t fills = 0;          // fill units completed (holes written or found allocated already)
    uint64_t bytes_zeroed = 0;   // written by fills
    uint64_t writes_waited = 0;  // writer I/Os that arrived during a fill of their range and waited for it
    int error = 0;               // the errno that stopped filling; 0 while it goes on
  };

  // Result: inner wrapped when filling can help (a writable regular file: as_file() is not null), else inner
  // itself, unchanged.
  static std::unique_ptr<BlockDevice> wrap_if_sparse_file(std::unique_ptr<BlockDevice> inner,
                                                          const Options& options);
  static std::unique_ptr<BlockDevice> wrap_if_sparse_file(std::unique_ptr<BlockDevice> inner) {
    return wrap_if_sparse_file(std::move(inner), Options{});
  }

  // Wraps any device (tests wrap a FaultDevice). Filling starts with the first write.
  FillAheadDevice(std::unique_ptr<BlockDevice> inner, const Options& options);
  // Waits for its own fill and flush in flight (the writer's I/O is the writer's to wait for, as always).
  ~FillAheadDevice() override;

  Stats stats() const;
  // Waits until no fill is in flight and none is due, or the timeout passes. Result: true when idle. For
  // tests.
  bool wait_idle(std::chrono::milliseconds timeout);

  const std::string& path() const override { return inner_->path(); }
  Bytes size() const override { return inner_->size(); }
  uint32_t logical_block_size() const override { return inner_->logical_block_size(); }
  uint32_t memory_alignment() const override { return inner_->memory_alignment(); }
  bool read_only() const override { return inner_->read_only(); }
  Extent extent_at(Bytes offset) const override { return inner_->extent_at(offset); }
  // as_file() stays null: copy offload would write to the file behind the wrapper's back.

  void read(Bytes offset, std::span<std::byte> buffer, IoCallback done, FixedBuffer fixed = {}) override;
  void write(Bytes offset, std::span<const std::byte> buffer, IoCallback done,
             FixedBuffer fixed = {}) override;
  void flush(IoCallback done) override;
  void write_zeroes(Bytes offset, Bytes length, bool may_unmap, IoCallback done) override;

 private:
  struct Range {
    uint64_t from = 0;
    uint64_t to = 0;  // exclusive; from == to: none
  };

  // Passes issue() on now, or queues it behind the fill of its range. Starts a fill when one is due.
  void submit(Bytes offset, Bytes length, std::function<void()> issue);
  // The next fill to run, claimed (fill_ set); none when filling is stopped, busy, or far enough ahead.
  Range claim_fill_locked();
  // Writes the holes of r (claimed), then finishes it; loops while the next fill needs no I/O.
  void run_fill(Range r);
  void finish_fill(Range r, uint64_t zeroed, std::error_code ec);

  // Constant after construction.
  const std::unique_ptr<BlockDevice> inner_;
  const uint64_t max_ahead_;
  const uint64_t unit_;
  const unsigned refill_divisor_;
  const std::chrono::milliseconds grow_within_;
  const uint64_t small_write_;

  mutable std::mutex mutex_;
  std::condition_variable idle_;  // busy_ reached 0
  // Guarded by mutex_.
  uint64_t high_water_ = 0;      // end of the highest write submitted to the inner device
  uint64_t filled_through_ = 0;  // [.., filled_through_) past high_water_ holds no hole
  Range fill_;                   // the fill in flight
  uint64_t window_ = 0;          // the current target past high_water_ (grows to max_ahead_)
  bool refilling_ = false;       // a burst is running: fills follow each other until the window is full
  uint64_t burst_zeroed_ = 0;  // bytes written by the running burst (a burst that wrote none skips the flush)
  std::chrono::steady_clock::time_point last_refill_;
  uint64_t mean_advancing_write_ =
      0;  // moving average (1/8) of the lengths of writes that raised high_water_
  struct Held {
    uint64_t to = 0;  // the end of the held I/O's range
    std::function<void()> issue;
  };
  std::vector<Held> waiting_;  // writer I/Os held until fill_ completes
  unsigned busy_ = 0;          // fills and flushes of our own in flight
  Stats stats_;
};

}  // namespace kcopyfs
