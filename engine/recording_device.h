// RecordingDevice and WriteLog: record every write, write-zeroes and flush that a stack of targets issues to
// its backing devices, in one global order, so that a test can rebuild the devices as a power cut at any
// point would have left them (crash replay, as dm-log-writes and CrashMonkey do it; tests/crash_replay/).
//
// Design. A WriteLog is an append-only list of events shared by several RecordingDevices (origin, COW stores,
// mirror legs, log device): a power cut hits them all at once, so one order across devices is what a replay
// needs. Each RecordingDevice wraps an inner BlockDevice and appends, for every write and write-zeroes, a
// submission event (with a copy of the data) before the operation reaches the inner device and a completion
// event before the caller's callback runs; for every flush, a submission event before it reaches the inner
// device and a completion event before the caller's callback. Reads are passed on and not recorded. A test
// adds its own markers ("fsync of the origin returned", "snapshot s1 created") with mark(), which places the
// acknowledgements it sees in the same order.
//
// Contract a replay relies on (the BlockDevice contract of block_device.h): a flush whose completion event
// carries no error makes durable exactly the writes of the same device whose completion event comes before
// the flush's submission event. Every other write submitted before a cut may be on disk, absent, or torn.
//
// as_file() stays null on purpose: copy offload (copy_file_range) would reach the file behind the log's back.
//
// Thread-safety: every method of both classes may be called from any thread at any time.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/block_device.h"

namespace kcopyfs {

// Which device of a WriteLog an event belongs to: the index add_device() returned.
using DeviceId = uint32_t;
inline constexpr DeviceId kNoDevice = ~DeviceId{0};

struct WriteEvent {
  enum class Kind : uint8_t { write_submitted, write_completed, flush_submitted, flush_completed, marker };
  Kind kind = Kind::marker;
  DeviceId device = kNoDevice;  // kNoDevice for markers
  // Completions: the index of the operation's submission event. Submissions and markers: their own index.
  uint64_t op = 0;
  Bytes offset;         // writes: where
  Bytes length;         // writes: how much
  bool zeroes = false;  // a write_zeroes (data is empty: the range reads as zeros)
  // Write submissions: a copy of the data as it was when the write was issued. Shared so that copies of the
  // log (events()) are cheap.
  std::shared_ptr<const std::vector<std::byte>> data;
  int error = 0;      // completions: the errno the operation completed with (0: success)
  std::string label;  // markers: the test's text
};

class WriteLog {
 public:
  struct Device {
    std::string name;
    Bytes size;
  };

  // Registers a device. Result: its id (0, 1, ... in the order of the calls).
  DeviceId add_device(std::string name, Bytes size);
  // Appends a marker. Result: its index in the log; every event recorded after this call returns has a
  // larger index, every event whose recording returned before the call a smaller one.
  uint64_t mark(std::string label);
  // Appends an event (RecordingDevice's). Result: its index. The event's op is set to the index unless it
  // is a completion.
  uint64_t append(WriteEvent event);

  // The number of events so far.
  uint64_t size() const;
  // A copy of the events so far (data shared, not copied).
  std::vector<WriteEvent> events() const;
  std::vector<Device> devices() const;

 private:
  mutable std::mutex mutex_;
  // Guarded by mutex_.
  std::vector<WriteEvent> events_;
  std::vector<Device> devices_;
};

class RecordingDevice final : public BlockDevice {
 public:
  // Records the writes and flushes to inner into log as device id (from log.add_device; several
  // RecordingDevices may record as the same id, e.g. one per reopen). inner and log must outlive this device.
  RecordingDevice(BlockDevice& inner, WriteLog& log, DeviceId id);

  DeviceId id() const { return id_; }

  const std::string& path() const override { return inner_.path(); }
  Bytes size() const override { return inner_.size(); }
  uint32_t logical_block_size() const override { return inner_.logical_block_size(); }
  uint32_t memory_alignment() const override { return inner_.memory_alignment(); }
  bool read_only() const override { return inner_.read_only(); }
  Extent extent_at(Bytes offset) const override { return inner_.extent_at(offset); }

  // Passed on, not recorded. Completion contract of block_device.h.
  void read(Bytes offset, std::span<std::byte> buffer, IoCallback done, FixedBuffer fixed = {}) override;
  // Records the submission (with a copy of buffer), passes the write on, records the completion before done
  // runs. Completion contract of block_device.h.
  void write(Bytes offset, std::span<const std::byte> buffer, IoCallback done,
             FixedBuffer fixed = {}) override;
  // As write(), without data.
  void write_zeroes(Bytes offset, Bytes length, bool may_unmap, IoCallback done) override;
  // Records the submission, passes the flush on, records the completion before done runs.
  void flush(IoCallback done) override;

 private:
  BlockDevice& inner_;
  WriteLog& log_;
  const DeviceId id_;
};

}  // namespace kcopyfs
