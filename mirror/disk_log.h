// DiskLog: the kernel's "disk" dirty log (kernel-dm-notes.md §5.3-§5.5), byte-compatible with dm-log version
// 2, so a log device moves between kcopyfs and the kernel. Only the clean bitset is stored: header and bitset
// are read and written together as one I/O from byte 0 (disk_log_format.h holds the layout).
//
// Opening is the kernel's resume. The log device is read; a magic that does not match, or a sync mode other
// than by_log, makes a new log (nothing stored is trusted); version 1 is read as version 2. Regions the
// stored header does not describe (a new log, a grown mirror) are new: clean for nosync, dirty otherwise. The
// sync bits start as the clean bits, so exactly the regions not clean on disk are resynced. The result is
// written back with the mirror's region count and the log device flushed before open() returns.
//
// Durability protocol of flush() (§5.5), one flush in flight at a time (see DirtyLog::flush for the
// queueing):
//   - nothing touched since the last flush: no I/O;
//   - regions cleaned (or resync bits set): FlushLegs first, with the clean bits as they were when the flush
//     started, so that no clean bit reaches the disk before the data it covers. If the legs cannot be
//     flushed, no clean bit can be trusted any more: all are cleared, for good (clear_region() is ignored
//     from then on);
//   - the header and bitset are written (a plain write);
//   - regions dirtied: the log device is flushed, so the marks are durable before flush() calls back and the
//     mirror writes the data.
// A failed write sets health 'D', a failed log-device flush 'F'; what the failed flush should have made
// durable is written again by the next one. Neither is a reason to stop: as the kernel, the log keeps going.
//
// Threading: see DirtyLog. Buffers are aligned to the log device's memory alignment, for O_DIRECT.
#pragma once

#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "engine/aligned_memory.h"
#include "engine/block_device.h"
#include "engine/io_ring.h"
#include "engine/result.h"
#include "mirror/region_bits.h"

namespace kcopyfs {

class DiskLog final : public BitsetLog {
 public:
  // Opens (resumes) the log on log_device for a mirror of mirror_size sectors, synchronously. Refused, with
  // nothing written: a region size breaking the kernel's rules (region.h), a log device too small for the
  // header and bitset (the message names both sizes), a read-only device, a stored log of a version other
  // than 1 or 2 (the message names it). A failed read is not refused (as in the kernel): the device is marked
  // failed ('D') and the log starts as a new one. A failed write-back sets 'D' or 'F' likewise. flush_legs
  // may be empty (no legs to flush). log_device must outlive the log. Must not run on an I/O completion
  // thread.
  static Result<std::unique_ptr<DiskLog>> open(BlockDevice& log_device, Sector region_size,
                                               Sector mirror_size, SyncMode mode, FlushLegs flush_legs);

  // The log device size a mirror of mirror_size sectors needs: header and bitset rounded up to 4 KiB (so the
  // same file serves any logical block size up to 4 KiB).
  static Bytes device_size_for(Sector mirror_size, Sector region_size);

  // Waits for a flush in flight (and its callbacks), so it must not run on an I/O completion thread. Writes
  // nothing: the kernel's log is flushed by the mirror's suspend, not by its destruction.
  ~DiskLog() override;

  void flush(std::function<void(bool ok)> done) override;
  // "3 disk <path> <A|D|F>".
  std::string status_info() const override;
  // "disk 2 <path> <region_size> ", or "disk 3 <path> <region_size> <sync|nosync> ".
  std::string status_table() const override;
  char health() const override;

  // The size of the one I/O that reads or writes header and bitset.
  Bytes io_size() const { return io_size_; }
  BlockDevice& device() const { return device_; }

 private:
  struct FlushRun;

  DiskLog(BlockDevice& device, const RegionGeometry& geometry, SyncMode mode, FlushLegs flush_legs,
          IoRing& ring, Bytes io_size);

  // The steps of one flush. start_flush runs with flushing_ set by its caller; none holds the lock.
  void start_flush();
  void write_log(std::shared_ptr<FlushRun> run, bool legs_ok);
  void after_write(std::shared_ptr<FlushRun> run, std::error_code ec);
  void after_device_flush(std::shared_ptr<FlushRun> run, std::error_code ec);
  void finish(std::shared_ptr<FlushRun> run, bool ok);
  // Puts the header with the current region count and the clean bits into buffer_. Requires mutex_.
  void encode_locked();

  BlockDevice& device_;
  const FlushLegs flush_legs_;
  IoRing& ring_;
  const Bytes io_size_;
  // The log device's first io_size_ bytes as they are to be written. Only the flush in flight (or open) uses
  // it: bytes 16..1023 and the padding after the bitset are kept as read.
  AlignedBytes buffer_;

  // Guarded by mutex_ (BitsetLog's).
  bool flushing_ = false;                           // a flush is in flight
  std::vector<std::function<void(bool)>> waiting_;  // requests for the next flush
  bool device_failed_ = false;                      // an I/O to the log device failed: 'D'
  bool device_flush_failed_ = false;                // a flush of the log device failed: 'F'
  std::condition_variable idle_;                    // flushing_ became false
};

}  // namespace kcopyfs
