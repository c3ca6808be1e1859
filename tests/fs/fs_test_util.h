// Helpers for the fs/ suites: image-backed devices and synchronous wrappers over VolumeIo.
#pragma once

#include <gtest/gtest.h>

#include <future>
#include <memory>
#include <string>
#include <vector>

#include "engine/file_device.h"
#include "fs/volume_io.h"

namespace kcopyfs::fs::test {

// An image file opened as a FileDevice without a lock, so the test may also read the file directly.
inline std::shared_ptr<FileDevice> open_image(const std::string& path, bool read_only = false) {
  OpenOptions options;
  options.access = read_only ? Access::read_only : Access::read_write;
  options.sharing = Sharing::none;
  auto device = FileDevice::open(path, options);
  if (!device.ok()) throw std::runtime_error(device.error().message());
  return std::shared_ptr<FileDevice>(std::move(device).value());
}

struct ReadResult {
  int err;
  std::vector<std::byte> data;
};

inline ReadResult read_io(VolumeIo& io, uint64_t offset, size_t length) {
  auto promise = std::make_shared<std::promise<ReadResult>>();
  auto future = promise->get_future();
  io.read(offset, length, [promise](int err, std::span<const std::byte> data) {
    promise->set_value({err, std::vector<std::byte>(data.begin(), data.end())});
  });
  return future.get();
}

inline std::pair<int, size_t> write_io(VolumeIo& io, uint64_t offset, std::span<const std::byte> data) {
  auto promise = std::make_shared<std::promise<std::pair<int, size_t>>>();
  auto future = promise->get_future();
  io.write(offset, data, [promise](int err, size_t n) { promise->set_value({err, n}); });
  return future.get();
}

}  // namespace kcopyfs::fs::test
