// Snapshot: a point-in-time view of an Origin (kernel-dm-notes.md §2.5), as a BlockDevice of the origin's
// size.
//
// Reads of chunks that have an exception come from the COW store; the rest from the origin. A read sent to
// the origin is tracked until it completes, and an exception for that chunk does not complete (so the origin
// write that triggered it does not proceed) while such a read is in flight: a read racing the copy returns
// the old data. Writable snapshots write to the COW store, copying the chunk from the origin first unless the
// write covers the whole chunk.
//
// Deferred commit (writable snapshots): a write that creates an exception is acknowledged once its data (or
// the copy it lands on) is written, before the exception's metadata area is durable, because a durable
// commit per first write (flush, area write, flush) made first writes 3x slower than nbdkit's cow; the
// exception is committed by the store's next group commit right away. flush() completes only once every
// exception allocated before it was called is durable (and fails with EIO if one could not be recorded), so
// fsync keeps its meaning; a crash before that loses only unflushed writes, and the chunk reads its old
// data, since an area is still written only after the data it points at is durable. Origin writes are
// unchanged: they wait for the snapshot's exception of their chunk to be durable.
//
// States (status strings as the kernel's, §2.1): active; invalid (a failed copy or commit, or the COW store
// full on an origin write; persisted in the header; every read and write fails with EIO); overflow (the COW
// store full on a snapshot write: that write fails, reads keep working, not persisted).
//
// Created and owned by the Origin (Origin::create_snapshot / attach_snapshot); all mutable state is guarded
// by the origin's mutex.
#pragma once

#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/block_device.h"
#include "snapshot/exception_store.h"
#include "snapshot/exception_table.h"
#include "snapshot/pending_exception.h"

namespace kcopyfs {

class Origin;

struct SnapshotStatus {
  bool valid = true;
  bool overflow = false;
  bool merge_failed = false;
  bool merging = false;
  bool persistent = true;
  bool writable = false;
  Sector chunk_size;
  StoreUsage usage;
  uint64_t exceptions = 0;
  // When !valid: why, in a few words ("the COW device is full", "copying a chunk to the COW device failed").
  std::string reason;
  // The kernel's status INFO field: "Invalid", "Merge failed", "Overflow" or "<allocated>/<total>
  // <metadata>".
  std::string kernel_status() const;
};

class Snapshot final : public BlockDevice {
 public:
  ~Snapshot() override;

  const std::string& name() const { return name_; }
  SnapshotStatus status() const;

  // BlockDevice: the view. Completion contract as BlockDevice's.
  const std::string& path() const override { return name_; }
  Bytes size() const override;
  uint32_t logical_block_size() const override;
  bool read_only() const override { return !writable_; }
  void read(Bytes offset, std::span<std::byte> buffer, IoCallback done, FixedBuffer fixed = {}) override;
  void write(Bytes offset, std::span<const std::byte> buffer, IoCallback done,
             FixedBuffer fixed = {}) override;
  // Makes completed writes to the snapshot durable: the COW device's data, and the commits of every exception
  // allocated before the call (deferred commit). EIO if one of them failed (the snapshot is then invalid).
  void flush(IoCallback done) override;
  void write_zeroes(Bytes offset, Bytes length, bool may_unmap, IoCallback done) override;

 private:
  friend class Origin;
  Snapshot(Origin& origin, std::string name, std::unique_ptr<BlockDevice> cow,
           std::unique_ptr<ExceptionStore> store, bool writable);

  // All below: the origin's mutex held.
  bool active_locked() const { return valid_; }
  SnapshotStatus status_locked() const;
  PendingException* find_pending_locked(ChunkIndex chunk);
  // Allocates a COW chunk for `chunk`. Result: nullptr when the store is full (the caller decides: invalidate
  // or overflow).
  PendingException* new_pending_locked(ChunkIndex chunk);
  void untrack_read_locked(ChunkIndex chunk, std::vector<std::function<void()>>& after);
  // The commit of the exception with this allocation sequence has finished (durably, or failed): advances
  // durable_through_ and queues in `after` the flushes it releases.
  void commit_done_locked(uint64_t sequence, std::vector<std::function<void()>>& after);

  // Constant after construction.
  Origin& origin_;
  const std::string name_;
  const std::unique_ptr<BlockDevice> cow_;
  const std::unique_ptr<ExceptionStore> store_;
  const ChunkGeometry geometry_;
  const bool writable_;

  // Guarded by the origin's mutex.
  bool valid_ = true;
  std::string invalid_reason_;  // why valid_ became false (the first cause)
  // Invalidated, and the header saying so is not on disk yet: origin writes that skip this snapshot wait in
  // header_waiters_ until it is (the kernel writes the header before any origin write passes an invalid
  // snapshot). The snapshot is not destroyed while this is set.
  bool header_pending_ = false;
  std::vector<std::function<void()>> header_waiters_;
  bool overflow_ = false;
  bool merge_failed_ = false;
  unsigned writes_in_flight_ = 0;  // writes to this view not completed yet (start_merge waits for them)
  ExceptionTable table_;
  std::unordered_map<uint64_t, std::unique_ptr<PendingException>> pending_;  // by old chunk
  uint64_t next_sequence_ = 0;                                               // the next allocation's sequence
  uint64_t next_commit_ = 0;                                // the sequence whose commit goes next
  std::unordered_map<uint64_t, PendingException*> copied_;  // copy done, waiting for its turn to commit
  uint64_t durable_through_ = 0;                            // every sequence below it has finished its commit
  std::set<uint64_t> durable_ahead_;  // sequences at or past durable_through_ + 1 that have finished
  // Flushes waiting for every sequence below `first` to finish; called with the snapshot's validity.
  std::vector<std::pair<uint64_t, std::function<void(bool valid)>>> durability_waiters_;
  std::unordered_map<uint64_t, unsigned> tracked_reads_;  // chunk -> reads in flight on the origin
  std::unordered_map<uint64_t, std::vector<std::function<void()>>> read_drain_waiters_;
};

}  // namespace kcopyfs
