// BlockDevice: the one interface every backing store implements (image files, block devices, the
// fault-injecting device of the tests) and every layer above does I/O through.
//
// Units: offsets and lengths are Bytes and must be multiples of logical_block_size(); buffers should be
// aligned to memory_alignment() (a misaligned buffer still works, through a bounce copy).
//
// Completion contract, the same for every asynchronous call below: when the call returns, `done` will be
// called exactly once, on an I/O completion thread and never inside the call itself, with an empty error_code
// on success or the errno of the failure. `done` must not block. Calls are thread-safe and may be issued
// concurrently; no ordering holds between operations in flight at the same time (issue a flush after the
// writes that must be durable have completed).
#pragma once

#include <functional>
#include <span>
#include <string>
#include <system_error>

#include "engine/units.h"

namespace kcopyfs {

using IoCallback = std::function<void(std::error_code)>;

class FileDevice;

// A registered buffer (see IoRing::register_buffer) that a buffer handed to read()/write() lies within, so
// the device may use fixed-buffer I/O. Default: none.
struct FixedBuffer {
  const void* ring = nullptr;  // the IoRing the index belongs to
  int index = -1;
};

// What sparse copying asks of a source: whether [offset, offset+length) holds data or a hole.
struct Extent {
  bool data = true;
  Bytes length;  // how far this kind of extent continues from the offset asked about (>= 1 sector)
};

class BlockDevice {
 public:
  virtual ~BlockDevice() = default;

  // The path it was opened from (for messages).
  virtual const std::string& path() const = 0;
  // Size in bytes, fixed while open; a multiple of 512.
  virtual Bytes size() const = 0;
  Sector size_in_sectors() const { return to_sectors(size()); }
  // I/O offsets and lengths must be multiples of this (512 or more).
  virtual uint32_t logical_block_size() const = 0;
  // Buffers aligned to this avoid a bounce copy.
  virtual uint32_t memory_alignment() const { return kSectorSize; }
  virtual bool read_only() const = 0;

  // Reads buffer.size() bytes at offset. Completion contract above.
  virtual void read(Bytes offset, std::span<std::byte> buffer, IoCallback done, FixedBuffer fixed = {}) = 0;
  // Writes buffer at offset. The buffer must stay valid until done runs. Completion contract above.
  virtual void write(Bytes offset, std::span<const std::byte> buffer, IoCallback done,
                     FixedBuffer fixed = {}) = 0;
  // Makes every write completed before this call durable (data and the metadata needed to read it back).
  virtual void flush(IoCallback done) = 0;
  // Makes [offset, offset+length) read as zeros. With may_unmap the space may be deallocated (a hole), which
  // sparse copies ask for; otherwise it stays allocated. Completion contract above.
  virtual void write_zeroes(Bytes offset, Bytes length, bool may_unmap, IoCallback done) = 0;

  // Synchronous and cheap: the extent at offset. Devices that cannot tell report data to the end.
  virtual Extent extent_at(Bytes offset) const { return Extent{true, size() - offset}; }

  // For copy offload: the FileDevice behind this device, if I/O may go to it directly.
  virtual FileDevice* as_file() { return nullptr; }
};

}  // namespace kcopyfs
