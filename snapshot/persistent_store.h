// PersistentStore: the kernel's persistent exception store, byte-compatible with dm-snapshot ("P", version
// 1), so a COW device moves between kcopyfs and the kernel. The format (header in chunk 0; metadata areas of
// 16-byte little-endian records every exceptions_per_area + 1 chunks; the list ends at the first new_chunk ==
// 0) is stated in kernel-dm-notes.md §3; persistent_format.h holds its constants and layout helpers.
//
// Durability protocol of a commit: the data chunk is written before commit_exception() is called; the store
// flushes the COW device (the data becomes durable), writes the metadata area, flushes again, and only then
// calls back. Commits that arrive while an area write is in flight are written together in the next one
// (group commit); the first flush is skipped for commits that arrived before an earlier batch's last flush
// was issued (their data is durable already), so a busy store pays one flush per batch, not two. When an area
// fills, the next area is zeroed on disk before the full one is written, so a reload always finds a
// terminator.
//
// Thread-safety: all methods may be called from any thread; the store has its own lock.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "engine/block_device.h"
#include "engine/result.h"
#include "snapshot/exception_store.h"

namespace kcopyfs {

struct PersistentHeader {
  bool valid = false;
  Sector chunk_size;
};

class PersistentStore final : public ExceptionStore {
 public:
  // Reads chunk 0 of cow. Result: the header; ENOENT-style error "no snapshot header" when the magic is 0 (a
  // new device); an error naming the fault for anything else that is not a version-1 header.
  static Result<PersistentHeader> read_header(BlockDevice& cow);

  // Writes a new, empty, valid store (area 0 zeroed, then the header; both durable). Refuses a device whose
  // chunk 0 holds a snapshot header (EEXIST: use attach), a chunk size that breaks the rules (chunk.h), and a
  // device too small for header, one area and one data chunk. cow must outlive the store.
  static Result<std::unique_ptr<PersistentStore>> create(BlockDevice& cow, Sector chunk_size);

  // Loads an existing store, validating everything it reads (magic, version, chunk size, every record within
  // the COW device and within an origin of origin_size, no record on the header or a metadata chunk, no
  // duplicate old or new chunk); calls each() for every exception in on-disk order. On any fault nothing is
  // written and the error names it. A header with valid = 0 loads, as invalid. cow must outlive the store.
  static Result<std::unique_ptr<PersistentStore>> open(BlockDevice& cow, Sector origin_size,
                                                       const std::function<void(const Exception&)>& each);

  // The COW size that can hold an exception for every chunk of an origin of origin_size (header, data
  // chunks, their metadata areas and the zeroed next area): such a store never overflows on origin writes.
  static Bytes device_size_for(Bytes origin_size, Sector chunk_size);

  // Waits for the store's own I/O still in flight, so it must not run on an I/O completion thread.
  ~PersistentStore() override;

  Sector chunk_size() const override;
  char type_letter() const override { return 'P'; }
  bool valid() const override;
  std::optional<ChunkIndex> prepare_exception() override;
  void commit_exception(const Exception& e, bool copy_ok, std::function<void(bool valid)> done) override;
  void invalidate(std::function<void(bool ok)> done) override;
  StoreUsage usage() const override;
  // Also -EBUSY (commit_merge: done(false)) while commits are being written: a merging store takes no new
  // exceptions, and the area in memory must not change under the merge.
  int prepare_merge(Exception& last) override;
  void commit_merge(unsigned n, std::function<void(bool ok)> done) override;

  // For tests and the benchmark: how many area writes have been issued.
  uint64_t area_writes() const;

 private:
  struct State;
  explicit PersistentStore(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace kcopyfs
