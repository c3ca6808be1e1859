// BufferPool: the fixed data-buffer budget of one kcopyd client.
//
// The pool is one page-aligned mapping of num_pages × 4 KiB made at construction, registered with the IoRing
// as a fixed buffer when the kernel allows it. allocate() hands out contiguous runs of pages (first fit over
// a free-extent map, coalesced on release); nothing else is ever allocated for data, so the budget is a hard
// bound. A request that does not fit now returns nullopt and the caller waits for a release: since every
// allocation is released when its I/O ends, a request of at most capacity() pages is always satisfied
// eventually. Not thread-safe: the owning kcopyd worker is its only user.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <span>

#include "engine/block_device.h"

namespace kcopyfs {

class IoRing;

struct PoolBuffer {
  std::span<std::byte> bytes;
  uint32_t first_page = 0;
  uint32_t pages = 0;
  FixedBuffer fixed;
};

class BufferPool {
 public:
  // ring: where to register the mapping (nullptr: not registered). Aborts on mmap failure (out of memory).
  BufferPool(uint32_t num_pages, IoRing* ring);
  ~BufferPool();
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  uint32_t capacity_pages() const { return num_pages_; }
  // Result: `pages` contiguous pages, or nullopt if no run that long is free now. Precondition: 0 < pages <=
  // capacity_pages().
  std::optional<PoolBuffer> allocate(uint32_t pages);
  void release(const PoolBuffer& buffer);

  uint32_t pages_in_use() const { return in_use_; }
  // The most pages ever in use at once (for tests that check the budget holds).
  uint32_t peak_pages_in_use() const { return peak_; }

 private:
  uint32_t num_pages_;
  std::byte* base_ = nullptr;
  IoRing* ring_ = nullptr;
  int fixed_index_ = -1;
  std::map<uint32_t, uint32_t> free_;  // first page -> run length
  uint32_t in_use_ = 0;
  uint32_t peak_ = 0;
};

}  // namespace kcopyfs
