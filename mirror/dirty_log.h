// DirtyLog: which regions of a mirror may differ between legs (kernel-dm-notes.md §5). The kernel's seam:
// mark (dirty) before writing, clear (clean) after, flush to make marks durable, and the resync bookkeeping.
// Implementations: CoreLog (memory only; every start resyncs everything unless nosync) and DiskLog (the
// kernel's dm-log disk format on a log device, so only regions dirty at a crash are resynced).
//
// Threading: every method is thread-safe (the logs keep an internal lock, never held while calling out), so
// the mirror may call them under its own lock and its read path may ask in_sync() without it. flush() is
// asynchronous: its callback is always called exactly once, on an I/O completion thread, never inside the
// call.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "mirror/region.h"

namespace kcopyfs {

// How a log starts (§4.6): from what it holds, as all in sync (nosync), or as all out of sync (forced
// resync). It is the optional last word of the log's arguments in a kernel table line, one to one: no word is
// by_log (the kernel's DEFAULTSYNC), "nosync" is nosync, "sync" is force_sync. The status TABLE line prints
// the word back exactly when one was given, so a force_sync log keeps printing "sync" after its resync, as
// the kernel's does.
enum class SyncMode { by_log, nosync, force_sync };

// The table-line word of a mode: "", "nosync" or "sync".
constexpr std::string_view sync_mode_word(SyncMode mode) {
  return mode == SyncMode::nosync ? "nosync" : mode == SyncMode::force_sync ? "sync" : "";
}

// Flushes every mirror leg; done(ok). The disk log calls it before clean bits may become durable (§5.5): in a
// flush() that finds regions cleaned (or, as the kernel counts it, resync bits set) since the last one. It is
// called without any lock of the log held, on the thread calling flush() or on an I/O completion thread, so
// it must not block; done may be called from any thread, inline included. Marking the leg whose flush failed
// is the mirror's business (the kernel's leg health 'F'); the log then stops trusting any clean bit.
using FlushLegs = std::function<void(std::function<void(bool ok)> done)>;

class DirtyLog {
 public:
  virtual ~DirtyLog() = default;

  virtual Sector region_size() const = 0;
  virtual uint64_t region_count() const = 0;

  // Clean: in sync and not being written. Region arguments must be below region_count() (others are ignored,
  // and read as neither clean nor in sync).
  virtual bool is_clean(RegionIndex r) const = 0;
  virtual bool in_sync(RegionIndex r) const = 0;
  // A write is about to go to r: r is no longer clean (durable at the next flush).
  virtual void mark_region(RegionIndex r) = 0;
  // The writes to r have ended and r is in sync: r is clean again (durable at a later flush, after the legs).
  // No effect once a flush of the legs has failed (§5.5).
  virtual void clear_region(RegionIndex r) = 0;
  // Makes the marks durable before data is written, and clean bits only after the legs are flushed.
  // done(ok): ok is false when the log device failed (the log then reports it in its status); a failed flush
  // of the legs alone leaves ok true, as in the kernel (the mirror reports that leg).
  // Concurrent calls are serialized: a flush requested while another is in flight starts when that one has
  // ended, so it covers every mark made before it was requested; the requests that arrive meanwhile are
  // served together by that next flush, and every callback runs exactly once.
  virtual void flush(std::function<void(bool ok)> done) = 0;

  // Resync bookkeeping (§5.6): the next out-of-sync region not already being recovered, or nullopt once the
  // scan has passed the last region (until reset_resync_scan()).
  virtual std::optional<RegionIndex> get_resync_work() = 0;
  // The resync of r ended: r is in sync, or (in_sync false) r is out of sync. Either way it is no longer
  // being recovered.
  virtual void set_region_sync(RegionIndex r, bool in_sync) = 0;
  virtual uint64_t sync_count() const = 0;
  // Restarts the resync scan from region 0 (the kernel does it at resume).
  virtual void reset_resync_scan() = 0;

  // Status words as the kernel prints them (§4.1, §5.6): INFO "1 core" or "3 disk <dev> <A|D|F>"; TABLE
  // "core <n> <region_size> [sync|nosync] " or "disk <n> <dev> <region_size> [sync|nosync] " (trailing space;
  // the word is sync_mode_word()). <dev> is the log device's path where the kernel prints major:minor.
  virtual std::string status_info() const = 0;
  virtual std::string status_table() const = 0;
  // 'A' alive, 'D' an I/O to the log device failed, 'F' a flush of the log device failed (disk log; sticky
  // while the log is open); always 'A' for the core log. A failed FlushLegs is not a log failure.
  virtual char health() const = 0;
};

}  // namespace kcopyfs
