// ExceptionStore: where a snapshot keeps its exceptions (old origin chunk -> new COW chunk) and the copied
// data. The kernel's seam (kernel-dm-notes.md §2.7): prepare, commit, drop, usage, and the two merge steps.
// Implementations: PersistentStore (the kernel's on-disk format, persistent_store.h) and TransientStore
// (memory).
//
// Threading: prepare_exception() and usage() are called with the owning origin's lock held and never block.
// prepare_merge() may block on a metadata read; the merge calls it without locks held. commit_exception(),
// commit_merge() and invalidate() are asynchronous: on success of the call the callback is always called
// exactly once, on an I/O completion thread, never inside the call; callers issue commits in allocation order
// (the order prepare_exception() returned the chunks).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>

#include "engine/units.h"
#include "snapshot/chunk.h"

namespace kcopyfs {

struct Exception {
  ChunkIndex old_chunk;  // on the origin
  ChunkIndex new_chunk;  // on the COW device
};

// The kernel's usage figures (§2.1): allocated and total sectors of the COW, and the metadata among them.
struct StoreUsage {
  Sector allocated;
  Sector total;
  Sector metadata;
};

class ExceptionStore {
 public:
  virtual ~ExceptionStore() = default;

  virtual Sector chunk_size() const = 0;
  // 'P' (persistent) or 'N' (transient), as in the kernel's table line.
  virtual char type_letter() const = 0;
  // False once invalidated (or loaded with valid = 0).
  virtual bool valid() const = 0;

  // Allocates the COW chunk for a new exception. Result: the chunk, or nullopt when the store is full.
  virtual std::optional<ChunkIndex> prepare_exception() = 0;
  // Records e durably (its data chunk has already been written). copy_ok = false invalidates the store.
  // done(valid): valid is false when the store is (now) invalid and e was not recorded. Commits that arrive
  // while an earlier commit is being written are written together (group commit). For writable snapshots
  // the caller acknowledges the write before done() (deferred commit, snapshot.h) and its flush waits for
  // done(), so a store may batch freely but must call done() only once e is durable.
  virtual void commit_exception(const Exception& e, bool copy_ok, std::function<void(bool valid)> done) = 0;
  // Marks the store invalid for good (persistent: rewrites the header with valid = 0). done(ok) after it is
  // durable; ok is false if the write failed (the store is invalid in memory all the same).
  virtual void invalidate(std::function<void(bool ok)> done) = 0;

  virtual StoreUsage usage() const = 0;

  // Merge (persistent stores only). Result: the number N >= 1 of exceptions in the newest run (the last N
  // records, consecutive in old and new chunk, within one metadata area) with `last` set to the newest of
  // them; 0 when no exception is left; -errno on a read error or when merging is unsupported (-EOPNOTSUPP).
  virtual int prepare_merge(Exception& last) = 0;
  // Removes the newest n exceptions durably (after the origin holds their data). done(ok).
  virtual void commit_merge(unsigned n, std::function<void(bool ok)> done) = 0;
};

}  // namespace kcopyfs
