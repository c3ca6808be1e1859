// AlignedBytes: owned heap memory aligned for O_DIRECT I/O (std::aligned_alloc, released with std::free).
#pragma once

#include <cstddef>
#include <cstdlib>
#include <memory>

namespace kcopyfs {

class BlockDevice;

struct AlignedFree {
  void operator()(std::byte* p) const { std::free(p); }
};
using AlignedBytes = std::unique_ptr<std::byte, AlignedFree>;

// Result: length bytes rounded up to a multiple of alignment (a power of two, at least sizeof(void*)), not
// zeroed. Throws std::bad_alloc when out of memory.
AlignedBytes allocate_aligned(size_t alignment, size_t length);
// The alignment of buffers dev reads and writes without a bounce copy, at least a page.
size_t io_alignment(const BlockDevice& dev);

}  // namespace kcopyfs
