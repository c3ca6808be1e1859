// Mirror: the kernel's dm-raid1 "mirror" target (kernel-dm-notes.md §4) as a BlockDevice over 2..9 legs and a
// dirty log (§5), with the region hash of §6 (region_hash.h).
//
// Writes. The regions a write touches begin a write in the region hash (CLEAN -> DIRTY marks the log); the
// log is flushed, so the marks are durable, before any leg is written; then every healthy leg is written in
// parallel and the write completes when all have answered. A leg that fails a write gets health 'D' and
// leaves the set (no more I/O goes to it); the regions of the write turn NOSYNC in the log. The writer sees
// success while one leg got the data, EIO only when none did. A write to a region under recovery waits for
// the recovery to end. Regions turn clean lazily: a background pass (every update_interval) clears the clean
// list in the log and flushes it; the disk log flushes the legs before it writes clean bits (FlushLegs).
//
// Reads. A range whose regions are all in sync is read from one healthy leg: the least loaded of the legs
// without errors, round-robin among equals (beyond the kernel, which reads the default leg); a range with a
// region out of sync from the default leg only. A failed read marks the leg 'R' (it keeps being written) and
// is retried on another leg that holds the data; when every leg failed a read spanning regions, it is retried
// region by region (the kernel's bios never span a region), so each region may come from another leg; EIO
// only when no leg is left for a region.
//
// Resync (recovery.cc). Out-of-sync regions are copied from the default leg to the other healthy legs by
// kcopyd, one job per region and up to resync_window regions at once (the kernel does one). The default
// window is 64 regions (it was 8): a region's copy reads, then writes, so 8 regions of 512 KiB kept only
// about 4 MiB on the device and the resync ran at 0.6-0.85x of fio's copy; 32 MiB in flight, as fio's and the
// copy verb's, reaches it. A failed copy marks the leg 'S' ('S' on the default leg for a read error).
// Progress and rate are in status(); the throttle (percent, bytes/s) may change at any time. A failing
// default leg hands the role to the first healthy leg known to hold every region (see below).
//
// The default role moves only to a leg that holds every region: a leg of a mirror that was in sync, or one
// that has been in the set through a complete resync since it joined. A leg added by replace_leg, and at
// creation every leg but the default when the log has regions out of sync, holds only the regions resynced
// so far; handing it the role would make the resync copy its stale regions over the good legs (the storm
// of tests/mirror/mirror_storm_test.cc found this). When no such leg is left, the role stays with the failed
// leg, as the kernel's fail_mirror keeps a primary that failed while out of sync: out-of-sync regions then
// fail with EIO instead of returning stale data, and replace_leg refuses to drop the last complete leg.
//
// Health per leg as the kernel prints it (§4.1): A, F (flush failed), D (write failed), S (resync failed), R
// (read failed). F, D and S legs have left the set; R legs stay in it but are read only when no other leg can
// serve.
//
// Differences from the kernel, for now: handle_errors/keep_log are not modelled (a failed leg always leaves
// the set and writes are never held until suspend); leg error state is not reset once every region is in
// sync; writes to NOSYNC regions go to every leg in the set, not the default leg only; discards are not
// supported.
//
// Thread-safety: every method may be called from any thread, but create, the destructor, resync_all,
// replace_leg and stop/start_resync block and must not run on an I/O completion thread. One mutex guards
// the bookkeeping; it is never held across I/O or callbacks (Actions run after unlocking).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/block_device.h"
#include "engine/kcopyd.h"
#include "engine/result.h"
#include "engine/throttle.h"
#include "mirror/dirty_log.h"
#include "mirror/region.h"
#include "mirror/region_hash.h"

namespace kcopyfs {

inline constexpr unsigned kMinLegs = 2;
inline constexpr unsigned kMaxLegs = kMaxDestinations + 1;  // the kernel's MAX_NR_MIRRORS

struct MirrorOptions {
  Sector region_size = kDefaultRegionSize;
  unsigned resync_window = 64;  // regions copied at once (see the header)
  unsigned throttle_percent = 100;
  uint64_t throttle_bytes_per_second = 0;  // 0: no cap
  // How often idle regions are cleaned in the log (and resync work looked for).
  std::chrono::milliseconds update_interval{100};
  bool start_resync = true;  // start the resync at creation (else start_resync())
  // The resync's kcopyd buffer budget in 4 KiB pages (it was 2048): 32 MiB holds a whole default window of
  // 512 KiB regions, so the pool does not cap the window.
  uint32_t kcopyd_pages = 8192;
};

enum class LegHealth : char {
  alive = 'A',
  flush_error = 'F',
  write_error = 'D',
  sync_error = 'S',
  read_error = 'R'
};

struct MirrorStatus {
  struct Leg {
    std::string path;
    char health = 'A';
    bool in_set = true;  // still written and read (not F, D or S)
    bool is_default = false;
  };
  std::vector<Leg> legs;
  uint64_t regions_in_sync = 0;
  uint64_t regions_total = 0;
  bool resyncing = false;              // regions are out of sync and the resync runs
  uint64_t regions_resynced = 0;       // copies completed successfully since creation
  uint64_t bytes_resynced = 0;         // their size
  double resync_bytes_per_second = 0;  // over the current resync run
  unsigned throttle_percent = 100;     // the resync's limits now (set_throttle)
  uint64_t throttle_bytes_per_second = 0;
  char log_health = 'A';
  std::string state() const {
    return regions_in_sync == regions_total ? "in-sync" : resyncing ? "resyncing" : "out-of-sync";
  }
};

class Mirror final : public BlockDevice {
 public:
  // Builds the log once the mirror knows its size; flush_legs is the mirror's FlushLegs, for DiskLog::open.
  using LogFactory =
      std::function<Result<std::unique_ptr<DirtyLog>>(Sector mirror_size, FlushLegs flush_legs)>;

  // Result: the mirror (resync started unless options say otherwise), or EINVAL for a leg count outside
  // 2..9, a region size against the rules, a log whose geometry differs, a read-only leg.
  static Result<std::unique_ptr<Mirror>> create(std::vector<std::unique_ptr<BlockDevice>> legs,
                                                LogFactory make_log, const MirrorOptions& options);
  // With a log made beforehand (a core log, or a disk log whose FlushLegs is not connected to the legs).
  static Result<std::unique_ptr<Mirror>> create(std::vector<std::unique_ptr<BlockDevice>> legs,
                                                std::unique_ptr<DirtyLog> log, const MirrorOptions& options);
  // The size a mirror over these legs has: the smallest leg's.
  static Sector size_of(const std::vector<std::unique_ptr<BlockDevice>>& legs);

  // Precondition: no caller I/O in flight. Stops the resync, waits for its copies, cleans idle regions and
  // flushes the log (the kernel's suspend), then closes.
  ~Mirror() override;

  // BlockDevice. Completion contract as BlockDevice's.
  const std::string& path() const override { return name_; }
  Bytes size() const override { return to_bytes(geometry_.mirror_size()); }
  uint32_t logical_block_size() const override { return block_size_; }
  uint32_t memory_alignment() const override { return alignment_; }
  bool read_only() const override { return false; }
  void read(Bytes offset, std::span<std::byte> buffer, IoCallback done, FixedBuffer fixed = {}) override;
  void write(Bytes offset, std::span<const std::byte> buffer, IoCallback done,
             FixedBuffer fixed = {}) override;
  void flush(IoCallback done) override;
  void write_zeroes(Bytes offset, Bytes length, bool may_unmap, IoCallback done) override;

  // Resync control (recovery.cc).
  void start_resync();
  // Stops handing out regions and waits for the copies in flight.
  void stop_resync();
  // Forced resync (the kernel's "sync"): every region out of sync, then copied again.
  Status resync_all();
  void set_throttle(unsigned percent, uint64_t bytes_per_second);
  // Waits until every region is in sync (or the timeout passes). Result: true when in sync.
  bool wait_in_sync(std::chrono::milliseconds timeout);

  // Online migration: leg `index` (or the leg opened from old_path) is replaced by new_leg, which starts out
  // of sync everywhere and is resynced. Result: the old leg's device. Errors: no such leg, new_leg too small
  // or read-only, the old leg being the only one holding the data.
  // while_suspended, if given, runs after the log durably marks every region out of sync and before I/O
  // resumes: a caller that records the leg set elsewhere (the daemon's volume table) does it there, so that
  // no crash pairs the old leg set with regions the resync has since marked in sync for the new one.
  Result<std::unique_ptr<BlockDevice>> replace_leg(unsigned index, std::unique_ptr<BlockDevice> new_leg,
                                                   const std::function<void()>& while_suspended = {});
  Result<std::unique_ptr<BlockDevice>> replace_leg(const std::string& old_path,
                                                   std::unique_ptr<BlockDevice> new_leg);

  // The kernel's INFO line with paths: "<#legs> <dev>... <in_sync>/<total> 1 <health> <log info>".
  std::string status_info() const;
  // The kernel's TABLE line: "<log table><#legs> <dev> 0 ...".
  std::string status_table() const;
  MirrorStatus status() const;
  unsigned leg_count() const { return static_cast<unsigned>(legs_.size()); }
  unsigned default_leg() const;
  const RegionGeometry& geometry() const { return geometry_; }
  DirtyLog& log() { return *log_; }

 private:
  struct Leg {
    std::unique_ptr<BlockDevice> device;
    unsigned error_kinds = 0;  // bits of ErrorKind
    uint64_t errors = 0;
    uint64_t reads_in_flight = 0;
    // Holds every region (may be the default leg); false from replace_leg until every region is in sync.
    bool complete = true;
  };
  enum ErrorKind : unsigned { kWriteError = 1, kFlushError = 2, kSyncError = 4, kReadError = 8 };
  struct WriteOp;
  struct ReadOp;
  using Actions = std::vector<std::function<void()>>;

  Mirror(std::vector<std::unique_ptr<BlockDevice>> legs, const RegionGeometry& geometry,
         const MirrorOptions& options);
  static Status check_legs(const std::vector<std::unique_ptr<BlockDevice>>& legs,
                           const MirrorOptions& options);
  Status finish_create(std::unique_ptr<DirtyLog> log);

  // Requires mutex_.
  bool in_set_locked(unsigned leg) const { return (legs_[leg].error_kinds & ~unsigned{kReadError}) == 0; }
  // The first leg in the set, other than `except`, that may be the default: -1 when none.
  int complete_leg_locked(int except) const;
  // Every region is in sync: every leg in the set holds them all.
  void mark_legs_complete_locked();
  void fail_leg_locked(unsigned leg, ErrorKind kind);
  bool range_in_sync_locked(RegionIndex first, RegionIndex last) const;
  // A leg to read a range from, not in `tried`: -1 when none holds the data.
  int choose_read_leg_locked(bool in_sync, uint32_t tried);
  static char health_char(const Leg& leg);
  // Whether w overlaps a write in flight or one waiting (other than w).
  bool overlaps_locked(const WriteOp& w) const;
  // Starts (through `after`) the waiting writes that no longer overlap anything before them.
  void release_overlapping_locked(Actions& after);

  void start_write(const std::shared_ptr<WriteOp>& w);
  void issue_leg_writes(const std::shared_ptr<WriteOp>& w);
  void leg_write_done(const std::shared_ptr<WriteOp>& w, unsigned leg, std::error_code ec);
  void issue_read(const std::shared_ptr<ReadOp>& r);
  void read_done(const std::shared_ptr<ReadOp>& r, unsigned leg, std::error_code ec);
  // A read every leg failed, spanning regions: retried as one read per region (their I/O already counted).
  void split_read(const std::shared_ptr<ReadOp>& r);
  // Flushes every leg in the set; done(ok) with ok false when any failed (each such leg gets 'F'). Result of
  // the caller's flush: EIO when no leg flushed.
  void flush_legs(std::function<void(bool all_ok, bool any_ok)> done);
  void io_done_locked();
  static void run(Actions& after);
  static void complete_async(IoCallback done, int error);

  // Holding I/O for replace and forced resync: new caller I/O waits; returns once writes, reads, flushes
  // and copies in flight have drained. resume() releases what waited.
  Status suspend(std::unique_lock<std::mutex>& lock);
  void resume(std::unique_lock<std::mutex>& lock);
  // Marks every region out of sync (and dirty in the log), then flushes the log. Requires suspend.
  void mark_all_out_of_sync_locked();

  // recovery.cc
  void worker_loop();
  void update_pass();
  void schedule_recovery_locked(Actions& after);
  void start_copy_locked(RegionIndex r, Actions& after);
  void copy_done(RegionIndex r, unsigned source, const std::vector<unsigned>& dests, bool read_error,
                 uint32_t write_errors);
  void finish_recovery_locked(RegionIndex r, bool ok, Actions& after);
  // Wakes the worker's update pass when no copy is in flight (the resync ended or found nothing to hand out).
  void wake_if_resync_idle_locked();
  void flush_log_wait();

  // Constant after construction.
  const std::string name_;
  const RegionGeometry geometry_;
  const MirrorOptions options_;
  uint32_t block_size_ = kSectorSize;
  uint32_t alignment_ = kSectorSize;
  std::shared_ptr<Throttle> throttle_;
  std::unique_ptr<DirtyLog> log_;  // reset by the destructor before the legs: its flush may flush them
  std::unique_ptr<KcopydClient> kcopyd_;

  mutable std::mutex mutex_;
  std::condition_variable changed_;  // I/O drained, copies ended, resync state changed
  std::condition_variable wake_;     // the worker's
  // Guarded by mutex_.
  std::vector<Leg> legs_;
  unsigned default_leg_ = 0;
  unsigned next_read_leg_ = 0;
  std::unique_ptr<RegionHash> hash_;  // over *log_
  uint64_t io_in_flight_ = 0;         // caller reads, writes and flushes, and leg flushes for the log
  bool holding_ = false;
  Actions held_;
  // Writes whose leg writes are in flight, and writes waiting because they overlap one (or an earlier waiting
  // one: FIFO among overlapping writes). Two overlapping writes in flight at once could reach the legs in
  // different orders and leave them different for good, while the log calls the region clean; one at a time,
  // every leg sees the same last write.
  std::vector<const WriteOp*> writing_;
  std::deque<std::shared_ptr<WriteOp>> overlap_waiting_;
  bool resync_enabled_ = false;
  unsigned copies_in_flight_ = 0;  // regions RECOVERING (quiescing or copying)
  bool log_touched_ = false;       // regions cleaned since the last log flush
  bool log_failed_ = false;
  bool stopping_ = false;
  uint64_t regions_resynced_ = 0;
  uint64_t bytes_resynced_ = 0;
  std::chrono::steady_clock::time_point rate_start_{};
  uint64_t rate_start_bytes_ = 0;

  std::thread worker_;
};

}  // namespace kcopyfs
