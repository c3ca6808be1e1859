// PendingException: a chunk of one snapshot on its way from the origin to the COW store
// (kernel-dm-notes.md §2.4). Its life: allocated (store.prepare_exception) → data copied (a kcopyd job, or a
// snapshot write that covers the whole chunk) → committed in allocation order (store.commit_exception) →
// completed: the chunk enters the snapshot's ExceptionTable and every waiter runs. Origin writes to the chunk
// wait for it so that the snapshot keeps the old data; snapshot writes wait so that they land on the copy. A
// writable snapshot's chunk enters the table (and snapshot writes go on) once copied, before it is committed
// (deferred commit, snapshot.h); the exception stays pending until the commit is durable.
//
// Guarded by the owning Origin's mutex.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "snapshot/chunk.h"

namespace kcopyfs {

class Snapshot;

struct PendingException {
  Snapshot* snapshot = nullptr;
  ChunkIndex old_chunk;
  ChunkIndex new_chunk;
  uint64_t sequence = 0;  // allocation order within the snapshot's store
  bool copy_started = false;
  bool copy_done = false;
  bool copy_ok = true;
  // Run when the exception is complete (ok = committed durably) or has failed (ok = false: the snapshot is
  // invalid). Origin writes wait here: the origin chunk must not change before the snapshot's record of it is
  // durable.
  std::vector<std::function<void(bool ok)>> waiters;
  // Snapshot writes wait here: in a writable snapshot they run as soon as the copy is in place (deferred
  // commit: the chunk is then `visible` in the snapshot's table, its commit not yet durable); otherwise, or
  // on failure, together with `waiters`.
  std::vector<std::function<void(bool ok)>> copy_waiters;
  bool visible = false;
};

}  // namespace kcopyfs
