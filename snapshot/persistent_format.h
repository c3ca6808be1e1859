// The byte layout of the kernel's persistent COW store (dm-snapshot "P", disk version 1). The format itself
// is specified in kernel-dm-notes.md §3; this file only names its constants (§3.2 header, §3.4 record) and
// the interleaving of metadata areas and data chunks (§3.3). Nothing else in kcopyfs knows these numbers.
#pragma once

#include <cstddef>
#include <cstdint>

#include "engine/little_endian.h"
#include "engine/units.h"
#include "snapshot/chunk.h"

namespace kcopyfs::cow_format {

// Header, chunk 0 (§3.2). Four LE32 fields; the rest of the chunk is zero.
inline constexpr uint32_t kMagic = 0x70416e53;  // "SnAp" on disk
inline constexpr uint32_t kVersion = 1;
inline constexpr size_t kMagicOffset = 0;
inline constexpr size_t kValidOffset = 4;
inline constexpr size_t kVersionOffset = 8;
inline constexpr size_t kChunkSizeOffset = 12;  // in sectors
inline constexpr size_t kHeaderBytes = 16;
inline constexpr uint64_t kHeaderChunks = 1;

// Exception record (§3.4): LE64 old_chunk (origin), LE64 new_chunk (COW). new_chunk == 0 ends the list.
inline constexpr size_t kRecordBytes = 16;
inline constexpr size_t kRecordOldOffset = 0;
inline constexpr size_t kRecordNewOffset = 8;

// The first chunk a fresh store hands out: after the header and area 0 (§3.6).
inline constexpr ChunkIndex kFirstDataChunk = ChunkIndex(2);

// Records per metadata area: one chunk of 16-byte records, chunk_sectors * 32 (§3.3).
constexpr uint64_t exceptions_per_area(Sector chunk_size) {
  return chunk_size.value() * (kSectorSize / kRecordBytes);
}

// The chunk holding metadata area `area` (an ordinal, 0 first): each area is followed by its epa data chunks.
constexpr ChunkIndex area_location(Sector chunk_size, uint64_t area) {
  return ChunkIndex(kHeaderChunks + area * (exceptions_per_area(chunk_size) + 1));
}

// Whether chunk c of the COW holds a metadata area (never data).
constexpr bool is_metadata_chunk(Sector chunk_size, ChunkIndex c) {
  return c.value() % (exceptions_per_area(chunk_size) + 1) == kHeaderChunks;
}

// Little-endian fields: engine/little_endian.h.
using kcopyfs::load_le32;
using kcopyfs::load_le64;
using kcopyfs::store_le32;
using kcopyfs::store_le64;

}  // namespace kcopyfs::cow_format
