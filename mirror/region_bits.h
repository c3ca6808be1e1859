// RegionBits: the three per-region bitsets of the kernel's dirty logs and the bookkeeping on them, shared by
// the core and the disk log (kernel-dm-notes.md §5.2, §5.6); BitsetLog: the DirtyLog half both logs have in
// common (the kernel's disk log reuses the core log's operations the same way).
//
// The bitsets are kept in the disk log's byte layout (disk_log_format.h: little-endian bit numbering, whole
// 64-region words), as the kernel keeps them, so the disk log reads and writes the clean set by copying
// bytes. Bits past region_count are always 0 here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "mirror/dirty_log.h"
#include "mirror/region.h"

namespace kcopyfs {

class RegionBits {
 public:
  // The kernel's starting state (§5.2): every region clean; every region in sync when all_in_sync (nosync),
  // none otherwise; none being recovered; nothing touched.
  RegionBits(uint64_t region_count, bool all_in_sync);

  uint64_t region_count() const { return count_; }

  // Preconditions for every region argument: r < region_count() (others are ignored, and read as false).
  bool is_clean(RegionIndex r) const { return test(clean_, r); }
  bool in_sync(RegionIndex r) const { return test(sync_, r); }
  bool is_recovering(RegionIndex r) const { return test(recovering_, r); }

  // Clears r's clean bit.
  void mark_region(RegionIndex r);
  // Sets r's clean bit, unless clean bits are frozen (forget_clean).
  void clear_region(RegionIndex r);
  // The next region from the scan cursor that is neither in sync nor being recovered, now marked as being
  // recovered; nullopt once the cursor has passed the last region. The cursor moves past what it returns.
  std::optional<RegionIndex> get_resync_work();
  // Ends r's recovery; in_sync sets r's sync bit, otherwise clears it. sync_count follows the bit (the kernel
  // counts every set, even of a bit already set; only the transitions are counted here, so the count cannot
  // pass region_count).
  void set_region_sync(RegionIndex r, bool in_sync);
  uint64_t sync_count() const { return sync_count_; }
  void reset_resync_scan() { search_ = 0; }

  // The disk log's side.
  //
  // The clean bitset as stored on disk: disk_log_format::bitset_bytes(region_count()) bytes.
  std::span<const std::byte> clean_bitset() const { return clean_; }
  // Resume (§5.4 steps 2-4) from a stored clean bitset (at least as long as clean_bitset()): regions below
  // stored_regions keep their stored bit; the others are new, clean when new_regions_clean (nosync) and dirty
  // otherwise; bits past region_count are cleared. Then sync bits = clean bits, sync_count = their number, no
  // region is being recovered, the scan restarts, and nothing counts as touched (the caller writes the
  // result).
  void resume_from(std::span<const std::byte> stored, uint64_t stored_regions, bool new_regions_clean);
  // After a failed flush of the legs no clean bit can be trusted: clears them all and freezes them, so that
  // clear_region() has no effect from now on. Touches nothing (the caller writes the result itself).
  void forget_clean();
  bool clean_frozen() const { return clean_frozen_; }

  // What changed since the last take, with the kernel's rule (§5.2): setting any bit (clean, sync or
  // recovering) counts as cleaned, clearing any bit as dirtied, whether or not the bit changed.
  struct Touched {
    bool cleaned = false;
    bool dirtied = false;
    bool any() const { return cleaned || dirtied; }
  };
  // Returns the touched flags and clears them (a flush takes them).
  Touched take_touched();
  // Gives flags back (a flush that failed to make them durable), merged with any set since.
  void retouch(Touched t);

 private:
  bool test(const std::vector<std::byte>& bits, RegionIndex r) const;
  static void set(std::vector<std::byte>& bits, uint64_t region);
  static void clear(std::vector<std::byte>& bits, uint64_t region);
  // Sets or clears the regions [from, to) of bits.
  static void assign_range(std::vector<std::byte>& bits, uint64_t from, uint64_t to, bool value);
  uint64_t count_clean() const;

  uint64_t count_;
  std::vector<std::byte> clean_;       // 1 = clean: in sync and not being written. The set on disk.
  std::vector<std::byte> sync_;        // 1 = in sync
  std::vector<std::byte> recovering_;  // 1 = a resync of the region is in progress
  uint64_t sync_count_ = 0;
  uint64_t search_ = 0;  // the resync scan cursor
  Touched touched_;
  bool clean_frozen_ = false;
};

// The DirtyLog operations the core and the disk log share, over one RegionBits behind one lock.
class BitsetLog : public DirtyLog {
 public:
  Sector region_size() const override { return geometry_.region_size(); }
  uint64_t region_count() const override { return geometry_.region_count(); }
  SyncMode sync_mode() const { return mode_; }

  bool is_clean(RegionIndex r) const override;
  bool in_sync(RegionIndex r) const override;
  void mark_region(RegionIndex r) override;
  void clear_region(RegionIndex r) override;
  std::optional<RegionIndex> get_resync_work() override;
  void set_region_sync(RegionIndex r, bool in_sync) override;
  uint64_t sync_count() const override;
  void reset_resync_scan() override;

 protected:
  BitsetLog(const RegionGeometry& geometry, SyncMode mode)
      : geometry_(geometry), mode_(mode), bits_(geometry.region_count(), mode == SyncMode::nosync) {}

  // The log's arguments in a status TABLE line after the type name and the argument count's place:
  // "<region_size> " plus "<word> " when a sync word was given. Appended to out.
  void append_table_tail(std::string& out) const;
  // How many log arguments the table line had: fixed ones plus the optional sync word.
  unsigned table_argument_count(unsigned fixed) const { return fixed + (mode_ == SyncMode::by_log ? 0 : 1); }

  const RegionGeometry geometry_;
  const SyncMode mode_;
  mutable std::mutex mutex_;
  RegionBits bits_;  // guarded by mutex_
};

}  // namespace kcopyfs
