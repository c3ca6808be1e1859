#include "engine/buffer_pool.h"

#include <sys/mman.h>

#include <cstdio>
#include <cstdlib>

#include "engine/io_ring.h"

namespace kcopyfs {

BufferPool::BufferPool(uint32_t num_pages, IoRing* ring) : num_pages_(num_pages), ring_(ring) {
  void* p = ::mmap(nullptr, size_t{num_pages} * kPageSize, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    std::perror("kcopyd buffer pool: mmap");
    std::abort();
  }
  base_ = static_cast<std::byte*>(p);
  free_[0] = num_pages;
  if (ring_ != nullptr) {
    auto index = ring_->register_buffer(base_, uint64_t{num_pages} * kPageSize);
    if (index) fixed_index_ = *index;
  }
}

BufferPool::~BufferPool() {
  if (fixed_index_ >= 0) ring_->unregister_buffer(fixed_index_);
  ::munmap(base_, size_t{num_pages_} * kPageSize);
}

std::optional<PoolBuffer> BufferPool::allocate(uint32_t pages) {
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < pages) continue;
    const uint32_t first = it->first;
    const uint32_t left = it->second - pages;
    free_.erase(it);
    if (left > 0) free_[first + pages] = left;
    in_use_ += pages;
    if (in_use_ > peak_) peak_ = in_use_;
    PoolBuffer b;
    b.bytes = {base_ + size_t{first} * kPageSize, size_t{pages} * kPageSize};
    b.first_page = first;
    b.pages = pages;
    if (fixed_index_ >= 0) b.fixed = FixedBuffer{ring_, fixed_index_};
    return b;
  }
  return std::nullopt;
}

void BufferPool::release(const PoolBuffer& buffer) {
  uint32_t first = buffer.first_page;
  uint32_t len = buffer.pages;
  in_use_ -= len;
  auto next = free_.lower_bound(first);
  if (next != free_.end() && first + len == next->first) {
    len += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == first) {
      prev->second += len;
      return;
    }
  }
  free_[first] = len;
}

}  // namespace kcopyfs
