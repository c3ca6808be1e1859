// Chunks: the snapshot targets' unit of copy-on-write (kernel-dm-notes.md §2.1, §3.1).
//
// A ChunkIndex numbers chunks of chunk_size sectors, on the origin (old_chunk) or on the COW device
// (new_chunk). ChunkGeometry converts between chunks and sectors for one chunk size.
#pragma once

#include <cstdint>
#include <string>

#include "engine/units.h"

namespace kcopyfs {

struct ChunkTag {};
using ChunkIndex = Quantity<ChunkTag>;

// Chunk sizes kcopyfs creates and accepts: powers of two from 4 KiB to 512 KiB (interface.md), in sectors.
inline constexpr Sector kMinChunkSize = Sector(8);
inline constexpr Sector kMaxChunkSize = Sector(1024);
inline constexpr Sector kDefaultChunkSize = Sector(8);

class ChunkGeometry {
 public:
  // Precondition: chunk_size is a power of two.
  explicit ChunkGeometry(Sector chunk_size)
      : size_(chunk_size), shift_(static_cast<unsigned>(__builtin_ctzll(chunk_size.value()))) {}

  Sector chunk_size() const { return size_; }
  Bytes chunk_bytes() const { return to_bytes(size_); }
  unsigned shift() const { return shift_; }
  ChunkIndex chunk_of(Sector s) const { return ChunkIndex(s.value() >> shift_); }
  Sector start_of(ChunkIndex c) const { return Sector(c.value() << shift_); }
  Sector offset_in_chunk(Sector s) const { return Sector(s.value() & (size_.value() - 1)); }
  // How many chunks cover `length` sectors (the last one may be partial).
  uint64_t chunks_covering(Sector length) const { return (length.value() + size_.value() - 1) >> shift_; }

 private:
  Sector size_;
  unsigned shift_;
};

// Checks the chunk-size rules of interface.md and the kernel: a power of two from 4K to 512K and a multiple
// of both devices' logical block sizes. Result: empty on success, else the sentence saying which rule failed.
std::string check_chunk_size(Sector chunk_size, uint32_t origin_block_size, uint32_t cow_block_size);

}  // namespace kcopyfs
