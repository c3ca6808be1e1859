// ExceptionTable: a snapshot's completed exceptions in memory (old origin chunk -> new COW chunk).
//
// Design. Exceptions are packed into runs, as the kernel does in memory (kernel-dm-notes.md §2.3): one
// 16-byte Run covers up to 256 chunks that are consecutive on both the origin and the COW device, which is
// what a large write or a sequential fill produces. Runs are kept in a sorted vector (binary search, no
// per-entry heap node), plus a small sorted delta vector that takes new runs cheaply and is merged into the
// main vector when it grows past a bound that scales with sqrt(size). So memory stays at or below 16 bytes
// per exception, a lookup is two binary searches, and each snapshot has its own table: the cost does not
// depend on how many snapshots exist.
//
// Not thread-safe: the owning snapshot guards it (readers shared, writers exclusive).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "snapshot/chunk.h"
#include "snapshot/exception_store.h"

namespace kcopyfs {

class ExceptionTable {
 public:
  // Result: the COW chunk holding old's data, or nullopt when old has no exception.
  std::optional<ChunkIndex> lookup(ChunkIndex old) const;
  // Precondition: old has no exception yet.
  void insert(ChunkIndex old, ChunkIndex new_chunk);
  // Loads many exceptions at once (a store being opened). Precondition: no old chunk repeats, here or in the
  // table.
  void insert_bulk(std::span<const Exception> exceptions);
  // Removes old's exception (a merge step). Result: false when old had none.
  bool remove(ChunkIndex old);

  // Number of exceptions (chunks), not runs.
  uint64_t size() const { return size_; }
  size_t runs() const { return main_.size() + delta_.size(); }
  // Bytes held by the table's storage (for the bytes-per-exception target).
  size_t memory_bytes() const;
  // Calls fn(old, new, count) for every run in ascending old order.
  template <class Fn>
  void for_each_run(Fn&& fn) const;

 private:
  struct Run {
    uint64_t old_start;
    uint64_t packed;  // low 56 bits: new_start; high 8 bits: count - 1
    uint64_t new_start() const { return packed & kNewMask; }
    uint64_t count() const { return (packed >> 56) + 1; }
    bool contains(uint64_t old) const { return old >= old_start && old - old_start < count(); }
    static Run make(uint64_t old, uint64_t new_chunk, uint64_t count) {
      return Run{old, (new_chunk & kNewMask) | ((count - 1) << 56)};
    }
  };
  static_assert(sizeof(Run) == 16);
  static constexpr uint64_t kNewMask = (uint64_t{1} << 56) - 1;
  static constexpr uint64_t kMaxRun = 256;

  // The run of v containing old, or v.end().
  static std::vector<Run>::iterator find_in(std::vector<Run>& v, uint64_t old);
  static std::vector<Run>::const_iterator find_in(const std::vector<Run>& v, uint64_t old);
  // Extends a neighbouring run in v by (old, new) if they line up. Result: true when it did.
  static bool try_extend(std::vector<Run>& v, uint64_t old, uint64_t new_chunk);
  void merge_delta();
  size_t delta_limit() const;

  std::vector<Run> main_;   // sorted by old_start, runs never overlap
  std::vector<Run> delta_;  // same, small
  uint64_t size_ = 0;
};

template <class Fn>
void ExceptionTable::for_each_run(Fn&& fn) const {
  auto a = main_.begin(), b = delta_.begin();
  while (a != main_.end() || b != delta_.end()) {
    const Run& r = (b == delta_.end() || (a != main_.end() && a->old_start < b->old_start)) ? *a++ : *b++;
    fn(ChunkIndex(r.old_start), ChunkIndex(r.new_start()), r.count());
  }
}

}  // namespace kcopyfs
