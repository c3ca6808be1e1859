#include "engine/sync_io.h"

#include <future>
#include <memory>

namespace kcopyfs {

namespace {
template <class Start>
std::error_code wait_for(Start start) {
  // Shared with the callback: its thread may still be inside set_value() when get() returns here.
  auto done = std::make_shared<std::promise<std::error_code>>();
  auto result = done->get_future();
  start([done](std::error_code ec) { done->set_value(ec); });
  return result.get();
}
}  // namespace

std::error_code read_sync(BlockDevice& device, Bytes offset, std::span<std::byte> buffer) {
  return wait_for([&](IoCallback cb) { device.read(offset, buffer, std::move(cb)); });
}

std::error_code write_sync(BlockDevice& device, Bytes offset, std::span<const std::byte> buffer) {
  return wait_for([&](IoCallback cb) { device.write(offset, buffer, std::move(cb)); });
}

std::error_code flush_sync(BlockDevice& device) {
  return wait_for([&](IoCallback cb) { device.flush(std::move(cb)); });
}

std::error_code write_zeroes_sync(BlockDevice& device, Bytes offset, Bytes length, bool may_unmap) {
  return wait_for([&](IoCallback cb) { device.write_zeroes(offset, length, may_unmap, std::move(cb)); });
}

}  // namespace kcopyfs
