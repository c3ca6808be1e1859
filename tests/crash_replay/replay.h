// Crash replay support: rebuilds the devices of a WriteLog (engine/recording_device.h) as a power cut at a
// chosen point would have left them, and an in-memory BlockDevice to open the rebuilt images with the real
// loaders.
//
// A cut is an event index c: events [0, c) happened, the rest did not. For each device, a write is durable
// when a flush of that device completed (without error) before the cut and was submitted after the write
// completed: it is present. Every other write submitted before the cut is volatile: in the prefix variant
// (variant 0) a volatile write that completed before the cut is present and one still in flight is absent;
// in a random variant each volatile write is, chosen by the seeded RNG, present, absent or torn (each of its
// 512-byte sectors independently old or new). Writes submitted at or after the cut are absent. Writes are
// applied in completion order (volatile ones still in flight at the cut last, in submission order): the
// durable ones all completed before any volatile one, so a durable write is never undone by an older one.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engine/block_device.h"
#include "engine/recording_device.h"

namespace kcopyfs::replay {

using Image = std::vector<std::byte>;

struct ReplayCounts {
  uint64_t durable = 0;    // writes present because a completed flush covers them
  uint64_t present = 0;    // volatile writes applied whole
  uint64_t absent = 0;     // volatile writes dropped (and writes in flight in the prefix variant)
  uint64_t torn = 0;       // volatile writes applied sector by sector
  uint64_t after_cut = 0;  // writes submitted at or after the cut (absent)
};

// Rebuilds every device of the log at cut. initial[d] is device d's image before the first event (its size
// the device's). variant 0 is the prefix; other variants draw from rng. counts, when given, is added to.
std::vector<Image> rebuild(const std::vector<WriteEvent>& events, const std::vector<Image>& initial,
                           uint64_t cut, unsigned variant, std::mt19937_64& rng,
                           ReplayCounts* counts = nullptr);

// The cut points of a log: just before and just after every flush completion, plus `extra` indices drawn
// from rng (sorted, unique, all within [max(from, 1), events.size()]); events before `from` are not cut.
std::vector<uint64_t> cut_points(const std::vector<WriteEvent>& events, unsigned extra, std::mt19937_64& rng,
                                 uint64_t from = 0);

// One thread that runs completions of MemoryDevices in order, for the life of the process: the BlockDevice
// contract wants callbacks on a completion thread, never inside the call.
class CompletionThread {
 public:
  static CompletionThread& get();
  ~CompletionThread();
  void post(std::function<void()> fn);

 private:
  CompletionThread();
  void run();
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  std::thread thread_;
};

// A BlockDevice over an image held by the caller (which must outlive it): reads and writes copy at the call,
// completions run on the CompletionThread. Flush does nothing (memory is as durable as it gets). I/O outside
// the image or not 512-aligned completes with EINVAL.
class MemoryDevice final : public BlockDevice {
 public:
  MemoryDevice(std::string name, Image& image) : name_(std::move(name)), image_(image) {}

  const std::string& path() const override { return name_; }
  Bytes size() const override { return Bytes(image_.size()); }
  uint32_t logical_block_size() const override { return kSectorSize; }
  bool read_only() const override { return false; }
  void read(Bytes offset, std::span<std::byte> buffer, IoCallback done, FixedBuffer fixed = {}) override;
  void write(Bytes offset, std::span<const std::byte> buffer, IoCallback done,
             FixedBuffer fixed = {}) override;
  void flush(IoCallback done) override;
  void write_zeroes(Bytes offset, Bytes length, bool may_unmap, IoCallback done) override;

 private:
  bool valid(Bytes offset, Bytes length) const;
  const std::string name_;
  std::mutex mutex_;
  Image& image_;  // guarded by mutex_
};

}  // namespace kcopyfs::replay
