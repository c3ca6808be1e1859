// FileDevice: a BlockDevice over a regular file (an image) or a block device, doing its I/O on an IoRing.
//
// Opening follows interface.md's DEVICE rules: the size is the file size or BLKGETSIZE64 and must be a
// multiple of 512; exclusive opens hold block devices with O_EXCL and files with an OFD lock, so a second
// holder (another target, another process) is refused with a message saying so. O_DIRECT is used wherever the
// filesystem supports it (statx DIOALIGN, or the open succeeding); elsewhere (tmpfs, some FUSE files) the
// device falls back to buffered I/O, which flush() makes durable all the same.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>

#include "engine/block_device.h"
#include "engine/io_ring.h"
#include "engine/result.h"
#include "engine/unique_fd.h"

namespace kcopyfs {

enum class Access { read_only, read_write };
// exclusive: no other holder (block devices O_EXCL; files a write lock, or a read lock for read-only opens,
// which excludes writers only). shared: files take a read lock, so an exclusive holder refuses it. none: no
// lock.
enum class Sharing { exclusive, shared, none };
enum class CacheMode { direct_if_possible, buffered };

struct OpenOptions {
  Access access = Access::read_write;
  Sharing sharing = Sharing::exclusive;
  CacheMode cache = CacheMode::direct_if_possible;
  IoRing* ring = nullptr;  // nullptr: IoRing::shared()
};

class FileDevice final : public BlockDevice {
 public:
  // Result: the open device, or an error naming the path and the reason (missing, not a file or block device,
  // held by another, size not a multiple of 512, io_uring unavailable).
  static Result<std::unique_ptr<FileDevice>> open(const std::string& path, const OpenOptions& options);

  // Releases the file lock explicitly before closing: io_uring may hold the file a moment longer, and a lock
  // that outlived the device would refuse the next open. For a block device held with O_EXCL, which only the
  // file's last reference releases, waits (at most kReleaseWait) until the kernel lets the device go, so that
  // whoever opens it next (losetup -d, mount, another target) finds it free.
  ~FileDevice() override;
  static constexpr std::chrono::milliseconds kReleaseWait{2000};

  const std::string& path() const override { return path_; }
  Bytes size() const override { return size_; }
  uint32_t logical_block_size() const override { return logical_block_size_; }
  uint32_t memory_alignment() const override { return memory_alignment_; }
  bool read_only() const override { return read_only_; }

  void read(Bytes offset, std::span<std::byte> buffer, IoCallback done, FixedBuffer fixed = {}) override;
  void write(Bytes offset, std::span<const std::byte> buffer, IoCallback done,
             FixedBuffer fixed = {}) override;
  void flush(IoCallback done) override;
  void write_zeroes(Bytes offset, Bytes length, bool may_unmap, IoCallback done) override;
  Extent extent_at(Bytes offset) const override;
  FileDevice* as_file() override { return is_block_device_ ? nullptr : this; }

  // Regular files only, before any I/O: extends the file to new_size (a multiple of 512) and the device with
  // it.
  Status grow_file(Bytes new_size);

  bool is_block_device() const { return is_block_device_; }
  bool direct_io() const { return direct_io_; }
  int fd() const { return fd_.get(); }
  // The filesystem holding a regular file (st_dev), for deciding whether copy offload can apply.
  dev_t filesystem() const { return filesystem_; }
  IoRing& ring() const { return *ring_; }

 private:
  FileDevice() = default;
  // Completes done with err on the completion thread (never inline).
  void fail(IoCallback done, int err);
  bool check_range(Bytes offset, uint64_t length, IoCallback& done);

  // Constant after open.
  std::string path_;
  UniqueFd fd_;
  IoRing* ring_ = nullptr;
  Bytes size_;
  uint32_t logical_block_size_ = kSectorSize;
  uint32_t memory_alignment_ = kSectorSize;
  bool read_only_ = false;
  bool is_block_device_ = false;
  bool direct_io_ = false;
  bool locked_ = false;     // holds an OFD lock on the file
  bool exclusive_ = false;  // a block device opened with O_EXCL
  dev_t filesystem_ = 0;

  // Learned on first use: whether fallocate can zero (or punch) ranges here.
  std::atomic<bool> fallocate_zero_works_{true};
  std::atomic<bool> fallocate_punch_works_{true};
};

// A process-wide read-only region of zeros (1 MiB, page aligned), for writing zeros without allocating.
std::span<const std::byte> zero_region();

// Zeroes [offset, offset+length) of device with ordinary writes from zero_region(), through the device's own
// write path (so a target's write rules, such as copy-on-write, apply). Completion contract as BlockDevice's.
void write_zeroes_by_writing(BlockDevice& device, Bytes offset, Bytes length, IoCallback done);

}  // namespace kcopyfs
