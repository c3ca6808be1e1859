#include "snapshot/chunk.h"

namespace kcopyfs {

std::string check_chunk_size(Sector chunk_size, uint32_t origin_block_size, uint32_t cow_block_size) {
  const uint64_t sectors = chunk_size.value();
  const std::string what = "chunk size " + std::to_string(sectors) + " sectors";
  if (sectors == 0 || (sectors & (sectors - 1)) != 0) return what + " is not a power of 2";
  if (chunk_size < kMinChunkSize)
    return what + " is too small (the smallest is " + std::to_string(kMinChunkSize.value()) +
           " sectors, 4 KiB)";
  if (chunk_size > kMaxChunkSize)
    return what + " is too high (the largest is " + std::to_string(kMaxChunkSize.value()) +
           " sectors, 512 KiB)";
  const uint64_t bytes = to_bytes(chunk_size).value();
  for (const uint32_t block : {origin_block_size, cow_block_size}) {
    // 0: that device is not known yet (the other one is checked alone).
    if (block != 0 && bytes % block != 0)
      return what + " is not a multiple of device blocksize " + std::to_string(block) + " bytes";
  }
  return {};
}

}  // namespace kcopyfs
