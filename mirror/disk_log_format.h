// The byte layout of the kernel's dm-log "disk" dirty log (MIRROR_DISK_VERSION 2). The format itself is
// specified in kernel-dm-notes.md §5.3; this file only names its constants and the arithmetic on them.
// Nothing else in kcopyfs knows these numbers: the disk log and the region bitsets use the helpers below.
//
// Layout, from byte 0 of the log device, read and written as one I/O of io_bytes():
//   0  LE32 magic, 4  LE32 version, 8  LE64 nr_regions (how many regions the bitset describes),
//   16..1023 unused (kept as found), 1024.. the clean bitset, then padding up to the logical block size.
// The bitset numbers its bits little-endian: region n is bit (n & 7) of byte (n >> 3), 1 = clean.
#pragma once

#include <cstddef>
#include <cstdint>

#include "engine/little_endian.h"
#include "engine/units.h"

namespace kcopyfs::disk_log_format {

inline constexpr uint32_t kMagic = 0x4D695272;  // bytes 72 52 69 4D on disk
inline constexpr uint32_t kVersion = 2;
// Version 1 stored the bitset as native-endian longs, which on the little-endian hosts kcopyfs runs on are
// the same bytes as version 2: the kernel reads it as version 2 and writes it back as such.
inline constexpr uint32_t kUpgradableVersion = 1;

inline constexpr size_t kMagicOffset = 0;
inline constexpr size_t kVersionOffset = 4;
inline constexpr size_t kRegionCountOffset = 8;
inline constexpr size_t kHeaderBytes = 16;

// The bitset starts LOG_OFFSET = 2 sectors into the device.
inline constexpr Bytes kBitsetOffset = Bytes(1024);
// The kernel sizes the bitset in unsigned longs; the 64-bit hosts it shares logs with give 64 regions a word.
inline constexpr uint64_t kRegionsPerWord = 64;
inline constexpr uint64_t kBytesPerWord = kRegionsPerWord / 8;

// Bytes of bitset for region_count regions: whole 64-region words.
constexpr Bytes bitset_bytes(uint64_t region_count) {
  return Bytes((region_count + kRegionsPerWord - 1) / kRegionsPerWord * kBytesPerWord);
}

// The one I/O that reads or writes header and bitset together: rounded up to the device's logical block size.
constexpr Bytes io_bytes(uint64_t region_count, uint32_t logical_block_size) {
  const uint64_t raw = kBitsetOffset.value() + bitset_bytes(region_count).value();
  return Bytes((raw + logical_block_size - 1) / logical_block_size * logical_block_size);
}

// Little-endian bit numbering, independent of the CPU.
constexpr uint64_t bit_byte(uint64_t region) { return region >> 3; }
constexpr std::byte bit_mask(uint64_t region) { return static_cast<std::byte>(1u << (region & 7)); }

// Little-endian fields (engine/little_endian.h). Word w of a bitset (load_le64 at byte 8w) holds regions
// 64w..64w+63, region 64w+k in bit k.
using kcopyfs::load_le32;
using kcopyfs::load_le64;
using kcopyfs::store_le32;
using kcopyfs::store_le64;

}  // namespace kcopyfs::disk_log_format
