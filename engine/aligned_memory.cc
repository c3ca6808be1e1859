#include "engine/aligned_memory.h"

#include <algorithm>
#include <new>

#include "engine/block_device.h"

namespace kcopyfs {

AlignedBytes allocate_aligned(size_t alignment, size_t length) {
  const size_t rounded = (std::max<size_t>(length, 1) + alignment - 1) / alignment * alignment;
  auto* p = static_cast<std::byte*>(std::aligned_alloc(alignment, rounded));
  if (p == nullptr) throw std::bad_alloc();
  return AlignedBytes(p);
}

size_t io_alignment(const BlockDevice& dev) { return std::max<size_t>(dev.memory_alignment(), kPageSize); }

}  // namespace kcopyfs
