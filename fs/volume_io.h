// VolumeIo: file semantics over a BlockDevice, as a block-device file has them, for the FUSE adapter.
//
// - Any offset and length: requests that are not multiples of the device's logical block size go through an
//   aligned bounce buffer; the partial blocks at either edge of a write are read, patched and written back
//   (read-modify-write) under an exclusive RangeLock on the blocks touched, and aligned writes take the same
//   range shared, so that neither an unaligned nor an aligned write to the same block can be lost.
// - The end of the device: a read at or past it returns 0 bytes, one crossing it is short; a write at or past
//   it fails with ENOSPC, one crossing it is short.
// - Asynchronous: every call returns without waiting for I/O. Its callback runs exactly once, either inside
// the
//   call (for answers that need no I/O: the end of the device, zero lengths) or on an I/O completion thread.
//   Callbacks must not block.
// Thread-safe. Holds the device (shared) for as long as it lives.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>

#include "engine/block_device.h"
#include "fs/range_lock.h"

namespace kcopyfs::fs {

class VolumeIo {
 public:
  explicit VolumeIo(std::shared_ptr<BlockDevice> device);

  // err: 0 or a positive errno. data is valid only during the callback (it may be shorter than asked).
  using ReadDone = std::function<void(int err, std::span<const std::byte> data)>;
  // written: bytes written (short at the end of the device) when err is 0.
  using WriteDone = std::function<void(int err, size_t written)>;
  using FlushDone = std::function<void(int err)>;

  void read(uint64_t offset, size_t length, ReadDone done);
  // data is copied before the call returns, so the caller's buffer may be reused at once.
  void write(uint64_t offset, std::span<const std::byte> data, WriteDone done);
  // Makes every write completed before the call durable.
  void flush(FlushDone done);

  uint64_t size() const { return size_; }
  BlockDevice& device() const { return *device_; }
  const RangeLock& range_lock() const { return locks_; }

 private:
  struct WriteOp;
  void start_write(const std::shared_ptr<WriteOp>& op);
  void write_bounce(const std::shared_ptr<WriteOp>& op);

  std::shared_ptr<BlockDevice> device_;
  uint64_t size_;
  uint64_t block_;  // logical block size, a power of two
  RangeLock locks_;
};

}  // namespace kcopyfs::fs
