// RegionHash: the per-region state of a mirror (kernel-dm-notes.md §6), kept only for regions with activity;
// every other region takes its state from the dirty log (in sync: CLEAN, otherwise NOSYNC).
//
// Transitions (§6.3):
//   - a write begins: pending++; CLEAN -> DIRTY marks the region in the log (the mirror flushes the log
//     before any leg is written). A write to a RECOVERING region does not begin: it is parked on the region
//     and handed back when the recovery ends.
//   - a write ends: pending--; at 0 a RECOVERING region is quiesced (ready for its copy), a DIRTY one turns
//     CLEAN and joins the clean list; NOSYNC stays.
//   - a leg failed a write: the log's sync bit is cleared and the region turns NOSYNC (a region already
//     RECOVERING stays so: its copy, issued after the writes drain, brings the healthy legs together).
//   - update pass: the clean list is cleared in the log (the clean bits become durable at the log's next
//     flush, after the legs are flushed) and those regions leave the hash.
//   - recovery: begin_recovery marks a region RECOVERING and reports it quiesced at once or when its writes
//     drain; end_recovery records the result in the log and releases the parked writes.
//
// Not thread-safe: the mirror's one mutex guards it. It never does I/O; the log calls it makes never block.
#pragma once

#include <cstdint>
#include <functional>
#include <unordered_map>
#include <vector>

#include "mirror/dirty_log.h"
#include "mirror/region.h"

namespace kcopyfs {

enum class RegionState : uint8_t { clean = 0x01, dirty = 0x02, nosync = 0x04, recovering = 0x08 };

class RegionHash {
 public:
  using Parked = std::function<void()>;

  explicit RegionHash(DirtyLog& log) : log_(log) {}

  RegionState state(RegionIndex r) const;
  bool in_sync(RegionIndex r) const {
    const RegionState s = state(r);
    return s == RegionState::clean || s == RegionState::dirty;
  }
  bool recovering(RegionIndex r) const { return state(r) == RegionState::recovering; }

  // A write to r begins (r must not be RECOVERING: park the write with park() instead).
  void begin_write(RegionIndex r);
  // A write to r ended. Result: true when r was RECOVERING and is now quiesced (its copy may start).
  bool end_write(RegionIndex r);
  // Parks `retry` on r, which must be RECOVERING; it is handed back by end_recovery.
  void park(RegionIndex r, Parked retry);
  // A leg failed a write to r.
  void mark_nosync(RegionIndex r);

  // Marks r (handed out by the log's get_resync_work) RECOVERING. Result: true when no write is pending on
  // it, so the copy may start now; otherwise end_write reports it quiesced.
  bool begin_recovery(RegionIndex r);
  // The copy of r ended. ok: r is in sync (clean in the log); otherwise it stays out of sync. The parked
  // writes are appended to `released`, to run after the mirror's mutex is released.
  void end_recovery(RegionIndex r, bool ok, std::vector<Parked>& released);

  // Clears the clean list in the log and drops those regions. Result: how many were cleared (the log needs a
  // flush when any were).
  size_t clear_clean_regions();

  // Forgets every region (the caller has drained writes and recoveries; the log has been reset).
  void reset();

  size_t tracked() const { return regions_.size(); }

 private:
  struct Entry {
    RegionState state = RegionState::clean;
    unsigned pending = 0;
    bool on_clean_list = false;
    std::vector<Parked> parked;
  };
  Entry& lookup(RegionIndex r);
  // Drops an entry that holds nothing the log does not know (CLEAN, idle, not listed).
  void maybe_drop(RegionIndex r, Entry& e);

  DirtyLog& log_;
  std::unordered_map<uint64_t, Entry> regions_;
  std::vector<RegionIndex> clean_list_;
};

}  // namespace kcopyfs
