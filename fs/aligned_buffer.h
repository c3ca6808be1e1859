// AlignedBuffer: an owned, aligned byte buffer for device I/O (O_DIRECT needs the memory aligned).
//
// Why a cache: FUSE requests are up to 1 MiB, and a fresh 1 MiB allocation comes from mmap, so every request
// would pay page faults on first touch. Freed buffers of power-of-two size classes (4 KiB to 2 MiB) are kept
// in a small process-wide cache and handed out again. Thread-safe.
#pragma once

#include <cstddef>
#include <span>

namespace kcopyfs::fs {

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  // size bytes (not zeroed), aligned to at least 4096 bytes.
  explicit AlignedBuffer(size_t size);
  AlignedBuffer(AlignedBuffer&& other) noexcept;
  AlignedBuffer& operator=(AlignedBuffer&& other) noexcept;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer();

  std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  std::span<std::byte> span() const { return {data_, size_}; }

 private:
  void release();

  std::byte* data_ = nullptr;
  size_t size_ = 0;      // what the user asked for
  size_t capacity_ = 0;  // the size class allocated (0 for sizes beyond the cache)
};

}  // namespace kcopyfs::fs
