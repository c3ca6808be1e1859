// FaultyFile: an image file opened as a FileDevice behind a FaultDevice, as one BlockDevice that owns both,
// so that it can be handed to an Origin (which owns its devices) while the test keeps adding rules through
// fault(). No GoogleTest here: the crash workload executable uses it too.
#pragma once

#include <memory>
#include <stdexcept>
#include <string>

#include "engine/fault_device.h"
#include "engine/file_device.h"

namespace kcopyfs::test {

class FaultyFile final : public BlockDevice {
 public:
  // Throws std::runtime_error when the file cannot be opened.
  static std::unique_ptr<FaultyFile> open(const std::string& path) {
    auto file = FileDevice::open(path, OpenOptions{});
    if (!file) throw std::runtime_error(file.error().message());
    return std::unique_ptr<FaultyFile>(new FaultyFile(std::move(file).value()));
  }

  // Valid as long as this device.
  FaultDevice& fault() { return fault_; }

  const std::string& path() const override { return fault_.path(); }
  Bytes size() const override { return fault_.size(); }
  uint32_t logical_block_size() const override { return fault_.logical_block_size(); }
  uint32_t memory_alignment() const override { return fault_.memory_alignment(); }
  bool read_only() const override { return fault_.read_only(); }
  Extent extent_at(Bytes offset) const override { return fault_.extent_at(offset); }
  void read(Bytes offset, std::span<std::byte> buffer, IoCallback done, FixedBuffer fixed = {}) override {
    fault_.read(offset, buffer, std::move(done), fixed);
  }
  void write(Bytes offset, std::span<const std::byte> buffer, IoCallback done,
             FixedBuffer fixed = {}) override {
    fault_.write(offset, buffer, std::move(done), fixed);
  }
  void flush(IoCallback done) override { fault_.flush(std::move(done)); }
  void write_zeroes(Bytes offset, Bytes length, bool may_unmap, IoCallback done) override {
    fault_.write_zeroes(offset, length, may_unmap, std::move(done));
  }

 private:
  explicit FaultyFile(std::unique_ptr<FileDevice> file) : file_(std::move(file)), fault_(*file_) {}

  std::unique_ptr<FileDevice> file_;
  FaultDevice fault_;  // destroyed first: it refers to file_
};

}  // namespace kcopyfs::test
