// Blocking helpers over BlockDevice's asynchronous calls, for code that is not on a hot path (loaders, tools,
// tests). Each returns the I/O's error code after it completed. Must not be called from an I/O completion
// thread (it would wait for itself).
#pragma once

#include <span>
#include <system_error>

#include "engine/block_device.h"

namespace kcopyfs {

std::error_code read_sync(BlockDevice& device, Bytes offset, std::span<std::byte> buffer);
std::error_code write_sync(BlockDevice& device, Bytes offset, std::span<const std::byte> buffer);
std::error_code flush_sync(BlockDevice& device);
std::error_code write_zeroes_sync(BlockDevice& device, Bytes offset, Bytes length, bool may_unmap);

}  // namespace kcopyfs
