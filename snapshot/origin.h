// Origin: the snapshot-origin target (kernel-dm-notes.md §2.2, §2.4) as a BlockDevice, and the owner of its
// snapshots.
//
// Reads pass through to the device. A write first makes sure every active snapshot holds the old data of
// every chunk it touches: chunks without an exception get a PendingException in each snapshot that lacks one;
// the old data is copied by kcopyd, reading each chunk once and writing every snapshot's COW store that
// needs it (the kernel copies once per snapshot), in batches of gather jobs (origin.cc,
// start_copies_locked); the exceptions are committed; only then is the write issued to the device, as one
// I/O. Concurrent writes to a chunk wait on its one pending exception; writes to other chunks proceed in
// parallel. (The kernel splits writes at the smallest chunk size so that each bio waits on one chunk per
// snapshot; waiting on every chunk of the write gives the same guarantee with one device write.)
//
// Write-back: a write that has to wait for copy-on-write is, by default, acknowledged as soon as its data is
// copied into memory the origin owns (at most write_back_limit() bytes at once), as a disk's volatile write
// cache acknowledges a write. The chain above is unchanged: the write reaches the device only after its
// exceptions are durable, so no crash can find a snapshot without the old data. Until it lands, reads and
// writes that overlap it wait for it; flush() waits for every write acknowledged before it to land, then
// flushes the device, and fails with the error of any write-back write that failed to land since the last
// flush (as fsync reports a page-cache write-back error). What a crash of the process loses is what a power
// cut loses on a disk with a write cache: writes acknowledged but not flushed. With the limit at 0 every
// write is acknowledged only once it is on the device (the kernel's behaviour).
//
// Snapshot creation is atomic with respect to origin writes: new writes are held and in-flight ones drained
// before the snapshot joins, so a write acknowledged before creation is in the snapshot and one issued after
// it is not. A snapshot whose COW store fills on an origin write is invalidated; the origin write proceeds
// and other snapshots are unaffected.
//
// Thread-safety: every method may be called from any thread. One mutex guards the snapshot list and all
// snapshots' exception state; it is held only for bookkeeping, never across I/O or callbacks.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "engine/aligned_memory.h"
#include "engine/block_device.h"
#include "engine/kcopyd.h"
#include "engine/result.h"
#include "snapshot/chunk.h"
#include "snapshot/snapshot.h"

namespace kcopyfs {

struct SnapshotOptions {
  Sector chunk_size = kDefaultChunkSize;
  bool persistent = true;  // false: the transient (N) store
  bool writable = false;
};

class Origin final : public BlockDevice {
  using Actions = std::vector<std::function<void()>>;

 public:
  // Takes the origin device. Result: the origin, or the error of creating its kcopyd client.
  static Result<std::unique_ptr<Origin>> create(std::unique_ptr<BlockDevice> device);
  // Precondition: no I/O in flight on the origin or its snapshots. Waits for background copies and commits
  // (a writable snapshot's acknowledged writes may still be committing: snapshot.h), then closes.
  ~Origin() override;

  // Makes a new snapshot with an empty store on cow (persistent: the kernel's format, written now). Errors: a
  // name in use, a chunk size against the rules, a COW device that already holds a header (use attach), a COW
  // device too small. Atomic with respect to origin writes (see above). The snapshot lives until removed.
  Result<Snapshot*> create_snapshot(const std::string& name, std::unique_ptr<BlockDevice> cow,
                                    const SnapshotOptions& options);
  // Adopts the persistent store on cow (made by kcopyfs or the kernel). Errors: a name in use, a damaged
  // store (nothing is written to it). A store marked invalid attaches, as invalid.
  Result<Snapshot*> attach_snapshot(const std::string& name, std::unique_ptr<BlockDevice> cow, bool writable);
  // Precondition: no I/O in flight on the snapshot. Waits for its pending exceptions, then drops it (its COW
  // device is closed, not erased).
  Status remove_snapshot(const std::string& name);
  // Whether snapshots made or attached from now on fill their COW file's holes ahead of its allocation point
  // in the background (engine/fill_ahead_device.h; only for COW devices that are regular files). Default on:
  // a first write into a hole of a sparse file costs the filesystem's block allocation on the latency path.
  void set_cow_fill_ahead(bool on) { cow_fill_ahead_ = on; }
  // Called when a snapshot was invalidated but its store could not record it (the header write with valid = 0
  // failed: the COW device is failing), with the snapshot's name and a continuation. The origin writes that
  // caused the invalidation wait until the continuation runs, so a caller that records the invalidation
  // elsewhere (the daemon's volume table) does so before the origin changes under the snapshot. Without a
  // recorder they go on at once, as the kernel's do, and a reload would find the snapshot valid. Set it
  // before any I/O; it runs on an I/O completion thread and must not block (hand the work to another thread).
  using InvalidationRecorder = std::function<void(const std::string& name, std::function<void()> done)>;
  void set_invalidation_recorder(InvalidationRecorder recorder) { recorder_ = std::move(recorder); }
  // Called when a write acknowledged by write-back failed to reach the origin device, with its place and the
  // device's error. The next flush fails with that error as well; a caller that never flushes learns of the
  // loss only here (the kernel logs a lost asynchronous write the same way). Set it before any I/O; it runs
  // on an I/O completion thread, without the origin's lock, and must not block (nor make or remove a snapshot
  // or start a merge of this origin: those wait for the very write being reported).
  using LandingFailureReporter = std::function<void(Bytes offset, Bytes length, std::error_code error)>;
  void set_landing_failure_reporter(LandingFailureReporter reporter) {
    landing_reporter_ = std::move(reporter);
  }
  // Write-back (above): at most limit bytes of acknowledged writes wait for their copy-on-write at once;
  // Bytes(0) turns it off. Takes effect for writes issued after the call.
  static constexpr Bytes kDefaultWriteBackLimit{16ull << 20};
  void set_write_back_limit(Bytes limit);
  Bytes write_back_limit() const;
  // Makes the snapshot invalid (EIO for its I/O from now on; reason shows in its status) and writes that into
  // its store's header. For a snapshot the caller knows was invalidated before (a reload whose header write
  // had failed). Errors: no such snapshot.
  Status invalidate_snapshot(const std::string& name, const std::string& reason);

  // Starts rolling the origin back to the snapshot (snapshot-merge, kernel-dm-notes.md §2.9; merge.cc). From
  // this call on the origin view shows the snapshot's content and stays usable; the snapshot's own view fails
  // with EIO. The merge runs in the background, newest exceptions first, one durable step per run of chunks;
  // when it is done the snapshot is removed and on_done runs with success, or with the error that stopped it
  // (then the snapshot's status is "Merge failed"). An interrupted merge (unmount, crash) resumes by
  // attaching the snapshot and calling start_merge again; destroying the Origin mid-merge stops it between
  // steps without calling on_done. Errors: no such snapshot, a transient or invalid
  // one, another merge running.
  Status start_merge(const std::string& name, std::function<void(Status)> on_done);
  struct MergeProgress {
    std::string snapshot;  // empty when no merge runs
    uint64_t done_chunks = 0;
    uint64_t total_chunks = 0;
  };
  MergeProgress merge_progress() const;

  Snapshot* find_snapshot(const std::string& name) const;
  // The status of the snapshot called name, if the origin still has it: unlike find_snapshot()->status(),
  // safe while a merge may finish (and drop the snapshot) at any moment.
  std::optional<SnapshotStatus> snapshot_status(const std::string& name) const;
  std::vector<Snapshot*> snapshots() const;
  const BlockDevice& device() const { return *device_; }

  // BlockDevice: the origin view. Completion contract as BlockDevice's.
  const std::string& path() const override { return device_->path(); }
  Bytes size() const override { return device_->size(); }
  uint32_t logical_block_size() const override { return device_->logical_block_size(); }
  uint32_t memory_alignment() const override { return device_->memory_alignment(); }
  bool read_only() const override { return device_->read_only(); }
  void read(Bytes offset, std::span<std::byte> buffer, IoCallback done, FixedBuffer fixed = {}) override;
  void write(Bytes offset, std::span<const std::byte> buffer, IoCallback done,
             FixedBuffer fixed = {}) override;
  void flush(IoCallback done) override;
  void write_zeroes(Bytes offset, Bytes length, bool may_unmap, IoCallback done) override;

 private:
  friend class Snapshot;
  // One origin write: the caller's request, held while the snapshots copy the chunks it overwrites.
  struct Write {
    Bytes offset;
    std::span<const std::byte> buffer;
    FixedBuffer fixed;
    IoCallback done;  // empty for a write-back write (acknowledged already)
    // Write-back: the copy of the caller's data that buffer points to once acknowledged, and the write's
    // sequence number (0: not a write-back write).
    AlignedBytes owned;
    uint64_t sequence = 0;
    // The device write is issued when this reaches 0: the copy-on-write is done and, for a write-back write,
    // the data is copied.
    std::atomic<int> gates{1};
  };
  // A write-back write between its acknowledgement and its device write's completion.
  struct Landing {
    uint64_t end = 0;  // bytes; the map key is the start
    uint64_t sequence = 0;
    Actions waiters;  // overlapping reads and writes, issued again once it has landed
  };

  explicit Origin(std::unique_ptr<BlockDevice> device);
  Result<Snapshot*> add_snapshot(std::unique_ptr<Snapshot> snapshot);

  // Mutex held for all *_locked. `after` collects what must run once the mutex is released.
  // Makes every active snapshot but the merging one hold the old data of sectors [first, last], then runs
  // ready (without the mutex). Result: false when nothing needed copying (ready is not called).
  bool protect_range_locked(Sector first, Sector last, std::function<void()> ready, Actions& after);
  void write_during_merge_locked(const std::shared_ptr<Write>& w, Actions& after);
  // Queues fresh exceptions for copying; launches what is queued as one batch of kcopyd jobs while fewer
  // than a few batches are in flight (origin.cc).
  void start_copies_locked(std::vector<PendingException*>& fresh, Actions& after);
  void launch_copies_locked(Actions& after);
  // Marks s invalid and writes its header; the origin writes that must not overtake that header wait for it
  // through s.header_waiters_.
  // reason: why, for the status (kept if the snapshot was invalidated already).
  void invalidate_locked(Snapshot& s, Actions& after, const std::string& reason);
  void commit_in_order_locked(Snapshot& s, Actions& after);
  void complete_pending_locked(PendingException* pe, bool ok, Actions& after);

  // Called without the mutex.
  void copy_finished(std::vector<PendingException*> pes, bool ok);
  void copy_batch_done();
  void commit_finished(PendingException* pe, bool valid);
  void issue_device_write(const std::shared_ptr<Write>& w);
  // Write-back (mutex held): the landing write overlapping [begin, end) bytes, or landing_.end(); what to do
  // once w has landed.
  std::map<uint64_t, Landing>::iterator find_landing_locked(uint64_t begin, uint64_t end);
  void landed_locked(const Write& w, std::error_code ec, Actions& after);
  // Flushes the device; done gets the error of a write-back write up to sequence `mark` that failed to land.
  void flush_now(uint64_t mark, IoCallback done);
  void read_during_merge(Bytes offset, std::span<std::byte> buffer, IoCallback done);
  void merge_loop();
  Status merge_step(Snapshot& s, const Exception& last, unsigned n);
  void stop_merge();
  void fail_async(IoCallback done, int error);
  static void run(Actions& after);

  // Constant after construction.
  const std::unique_ptr<BlockDevice> device_;
  std::unique_ptr<KcopydClient> kcopyd_;
  std::atomic<bool> cow_fill_ahead_{true};   // set between snapshot creations, read when one is made
  InvalidationRecorder recorder_;            // set before any I/O
  LandingFailureReporter landing_reporter_;  // set before any I/O

  mutable std::mutex mutex_;
  std::condition_variable changed_;  // writes drained, pending exceptions completed
  // Guarded by mutex_.
  std::vector<std::unique_ptr<Snapshot>> snapshots_;
  unsigned writes_in_flight_ = 0;
  bool holding_writes_ = false;
  Actions held_writes_;
  std::vector<PendingException*> copy_queue_;  // allocated, waiting for a copy batch
  unsigned copy_batches_ = 0;                  // copy batches in flight
  // Write-back, guarded by mutex_ (landing_count_ mirrors landing_.size() for the lock-free fast paths).
  uint64_t write_back_limit_ = kDefaultWriteBackLimit.value();
  uint64_t write_back_bytes_ = 0;         // data held by landing writes
  uint64_t write_back_sequence_ = 0;      // the last sequence number given
  std::map<uint64_t, Landing> landing_;   // start byte -> landing write; never overlapping
  std::set<uint64_t> landing_sequences_;  // their sequence numbers
  std::atomic<size_t> landing_count_{0};
  std::deque<std::pair<uint64_t, IoCallback>> flush_waiters_;  // flushes waiting for sequences <= first
  // Write-back writes that failed to land and no flush has reported yet: sequence -> errno.
  std::map<uint64_t, int> landing_errors_;
  // Merge state (merge.cc), guarded by mutex_.
  Snapshot* merging_ = nullptr;
  std::atomic<bool> merge_active_{false};     // merging_ != nullptr, readable without the mutex
  uint64_t merge_first_ = 0, merge_end_ = 0;  // old chunks [first, end) of the step being copied back
  Actions held_for_merge_;                    // writes to those chunks, run again when the step ends
  std::unordered_map<uint64_t, unsigned> merge_cow_writes_;  // chunk -> writes in flight to the merging COW
  // Reads and flushes in flight on the merging COW device; the merge's end waits for them before closing it.
  unsigned merge_cow_io_ = 0;
  uint64_t merge_total_ = 0;
  bool merge_stop_ = false;
  std::function<void(Status)> merge_done_;
  std::thread merge_thread_;
};

}  // namespace kcopyfs
