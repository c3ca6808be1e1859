#include "engine/file_device.h"

#include "engine/aligned_memory.h"
#include "engine/fan_in.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

namespace kcopyfs {

namespace {

std::error_code to_error(int res) {
  return res < 0 ? std::error_code(-res, std::generic_category()) : std::error_code();
}

}  // namespace

std::span<const std::byte> zero_region() {
  static constexpr size_t kLength = 1 << 20;
  // Deliberately never freed: writers may use it until exit.
  static const std::byte* zeros = [] {
    auto* p = static_cast<std::byte*>(std::aligned_alloc(kPageSize, kLength));
    std::memset(p, 0, kLength);
    return p;
  }();
  return {zeros, kLength};
}

Result<std::unique_ptr<FileDevice>> FileDevice::open(const std::string& path, const OpenOptions& options) {
  std::unique_ptr<FileDevice> dev(new FileDevice());
  dev->path_ = path;
  dev->read_only_ = options.access == Access::read_only;
  if (options.ring != nullptr) {
    dev->ring_ = options.ring;
  } else {
    auto ring = IoRing::shared();
    if (!ring) return Error(ring.error().code(), "open " + path + ": " + ring.error().message());
    dev->ring_ = ring.value();
  }

  struct statx stx {};
  if (::statx(AT_FDCWD, path.c_str(), 0, STATX_BASIC_STATS | STATX_DIOALIGN, &stx) != 0)
    return Error::from_errno(errno, "open " + path);
  const bool is_blk = S_ISBLK(stx.stx_mode);
  if (!is_blk && !S_ISREG(stx.stx_mode))
    return Error::invalid("open " + path + ": not a regular file or a block device");
  dev->is_block_device_ = is_blk;

  bool want_direct = options.cache == CacheMode::direct_if_possible;
  // A filesystem that reports DIO alignment 0 cannot do O_DIRECT on this file.
  if (!is_blk && (stx.stx_mask & STATX_DIOALIGN) && stx.stx_dio_offset_align == 0) want_direct = false;

  int flags = (dev->read_only_ ? O_RDONLY : O_RDWR) | O_CLOEXEC;
  if (is_blk && options.sharing == Sharing::exclusive) flags |= O_EXCL;
  int fd = ::open(path.c_str(), flags | (want_direct ? O_DIRECT : 0));
  if (fd < 0 && want_direct && errno == EINVAL) {
    want_direct = false;
    fd = ::open(path.c_str(), flags);
  }
  if (fd < 0) {
    if (errno == EBUSY && is_blk)
      return Error(std::error_code(EBUSY, std::generic_category()),
                   "open " + path + ": device is held by another process, target or mounted filesystem");
    return Error::from_errno(errno, "open " + path);
  }
  dev->fd_.reset(fd);
  dev->direct_io_ = want_direct;
  dev->exclusive_ = (flags & O_EXCL) != 0;

  if (!is_blk && options.sharing != Sharing::none) {
    struct flock lk {};
    lk.l_type = (options.sharing == Sharing::exclusive && !dev->read_only_) ? F_WRLCK : F_RDLCK;
    lk.l_whence = SEEK_SET;
    if (::fcntl(fd, F_OFD_SETLK, &lk) == 0) {
      dev->locked_ = true;
    } else {
      if (errno == EAGAIN || errno == EACCES)
        return Error(std::error_code(EBUSY, std::generic_category()),
                     "open " + path + ": file is held by another kcopyfs target or process");
      return Error::from_errno(errno, "lock " + path);
    }
  }

  struct stat st {};
  if (::fstat(fd, &st) != 0) return Error::from_errno(errno, "stat " + path);
  dev->filesystem_ = st.st_dev;
  uint64_t size = 0;
  if (is_blk) {
    if (::ioctl(fd, BLKGETSIZE64, &size) != 0) return Error::from_errno(errno, "BLKGETSIZE64 " + path);
    int lbs = 0;
    if (::ioctl(fd, BLKSSZGET, &lbs) != 0) return Error::from_errno(errno, "BLKSSZGET " + path);
    dev->logical_block_size_ = static_cast<uint32_t>(lbs);
    dev->memory_alignment_ = static_cast<uint32_t>(lbs);
  } else {
    size = static_cast<uint64_t>(st.st_size);
    if (dev->direct_io_ && (stx.stx_mask & STATX_DIOALIGN)) {
      dev->logical_block_size_ = std::max<uint32_t>(kSectorSize, stx.stx_dio_offset_align);
      dev->memory_alignment_ = std::max<uint32_t>(1, stx.stx_dio_mem_align);
    } else if (dev->direct_io_) {
      dev->memory_alignment_ = kPageSize;  // unknown: the strictest usual value
    }
  }
  if (size % kSectorSize != 0)
    return Error::invalid("open " + path + ": size " + std::to_string(size) + " is not a multiple of 512");
  dev->size_ = Bytes(size);
  return dev;
}

FileDevice::~FileDevice() {
  if (locked_) {
    struct flock lk {};
    lk.l_type = F_UNLCK;
    lk.l_whence = SEEK_SET;
    ::fcntl(fd_.get(), F_OFD_SETLK, &lk);
  }
  if (!exclusive_) return;
  // A completed request of a submission-polling ring (a flush, done by an io_uring worker) may drop its
  // reference to the file after ours is gone, and the claim lasts until the last one: the device is free
  // once an O_EXCL open of it succeeds. Only the device we held is waited for (the path may name another
  // by now).
  const int saved_errno = errno;
  struct stat held {};
  const bool known = ::fstat(fd_.get(), &held) == 0;
  fd_.reset();
  const auto deadline = std::chrono::steady_clock::now() + kReleaseWait;
  struct stat now {};
  while (known && ::stat(path_.c_str(), &now) == 0 && S_ISBLK(now.st_mode) && now.st_rdev == held.st_rdev) {
    const int probe = ::open(path_.c_str(), O_RDONLY | O_EXCL | O_CLOEXEC | O_NONBLOCK);
    if (probe >= 0) {
      ::close(probe);
      break;
    }
    if (errno != EBUSY || std::chrono::steady_clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  errno = saved_errno;
}

Status FileDevice::grow_file(Bytes new_size) {
  if (is_block_device_) return Error::invalid(path_ + ": a block device cannot grow");
  if (!is_sector_aligned(new_size)) return Error::invalid(path_ + ": size is not a multiple of 512");
  if (new_size <= size_) return {};
  if (::ftruncate(fd_.get(), static_cast<off_t>(new_size.value())) != 0)
    return Error::from_errno(errno, "extend " + path_);
  size_ = new_size;
  return {};
}

void FileDevice::fail(IoCallback done, int err) {
  ring_->defer([done = std::move(done), err] { done(std::error_code(err, std::generic_category())); });
}

bool FileDevice::check_range(Bytes offset, uint64_t length, IoCallback& done) {
  const uint64_t mask = logical_block_size_ - 1;
  if ((offset.value() & mask) != 0 || (length & mask) != 0 || offset.value() > size_.value() ||
      length > size_.value() - offset.value()) {
    fail(std::move(done), EINVAL);
    return false;
  }
  return true;
}

void FileDevice::read(Bytes offset, std::span<std::byte> buffer, IoCallback done, FixedBuffer fixed) {
  if (!check_range(offset, buffer.size(), done)) return;
  IoOp op;
  op.kind = IoOpKind::read;
  op.fd = fd_.get();
  op.offset = offset.value();
  op.length = buffer.size();
  const bool misaligned = direct_io_ && reinterpret_cast<uintptr_t>(buffer.data()) % memory_alignment_ != 0;
  if (misaligned) {
    // Bounce through an aligned buffer; O_DIRECT would refuse the caller's memory.
    auto bounce = std::make_shared<AlignedBytes>(allocate_aligned(kPageSize, buffer.size()));
    op.buffer = bounce->get();
    op.done = [bounce, buffer, done = std::move(done)](int res) {
      if (res >= 0) std::memcpy(buffer.data(), bounce->get(), buffer.size());
      done(to_error(res));
    };
  } else {
    op.buffer = buffer.data();
    op.fixed_index = fixed.ring == ring_ ? fixed.index : -1;
    op.done = [done = std::move(done)](int res) { done(to_error(res)); };
  }
  ring_->submit(std::move(op));
}

void FileDevice::write(Bytes offset, std::span<const std::byte> buffer, IoCallback done, FixedBuffer fixed) {
  if (read_only_) return fail(std::move(done), EROFS);
  if (!check_range(offset, buffer.size(), done)) return;
  IoOp op;
  op.kind = IoOpKind::write;
  op.fd = fd_.get();
  op.offset = offset.value();
  op.length = buffer.size();
  const bool misaligned = direct_io_ && reinterpret_cast<uintptr_t>(buffer.data()) % memory_alignment_ != 0;
  if (misaligned) {
    auto bounce = std::make_shared<AlignedBytes>(allocate_aligned(kPageSize, buffer.size()));
    std::memcpy(bounce->get(), buffer.data(), buffer.size());
    op.buffer = bounce->get();
    op.done = [bounce, done = std::move(done)](int res) { done(to_error(res)); };
  } else {
    // io_uring does not write through the pointer for a write.
    op.buffer = const_cast<std::byte*>(buffer.data());
    op.fixed_index = fixed.ring == ring_ ? fixed.index : -1;
    op.done = [done = std::move(done)](int res) { done(to_error(res)); };
  }
  ring_->submit(std::move(op));
}

void FileDevice::flush(IoCallback done) {
  IoOp op;
  op.kind = IoOpKind::fdatasync;
  op.fd = fd_.get();
  op.done = [done = std::move(done)](int res) { done(to_error(res)); };
  ring_->submit(std::move(op));
}

void FileDevice::write_zeroes(Bytes offset, Bytes length, bool may_unmap, IoCallback done) {
  if (read_only_) return fail(std::move(done), EROFS);
  if (!check_range(offset, length.value(), done)) return;
  if (length.value() == 0) return fail(std::move(done), 0);
  std::atomic<bool>& works = may_unmap ? fallocate_punch_works_ : fallocate_zero_works_;
  if (!works.load(std::memory_order_relaxed))
    return write_zeroes_by_writing(*this, offset, length, std::move(done));
  IoOp op;
  op.kind = IoOpKind::fallocate;
  op.fd = fd_.get();
  op.offset = offset.value();
  op.length = length.value();
  op.fallocate_mode = (may_unmap ? FALLOC_FL_PUNCH_HOLE : FALLOC_FL_ZERO_RANGE) | FALLOC_FL_KEEP_SIZE;
  op.done = [this, offset, length, &works, done = std::move(done)](int res) mutable {
    if (res == -EOPNOTSUPP || res == -EINVAL || res == -ENOTTY) {
      // This filesystem or device cannot; remember it and write zeros instead.
      works.store(false, std::memory_order_relaxed);
      write_zeroes_by_writing(*this, offset, length, std::move(done));
      return;
    }
    done(to_error(res));
  };
  ring_->submit(std::move(op));
}

void write_zeroes_by_writing(BlockDevice& device, Bytes offset, Bytes length, IoCallback done) {
  auto zeros = zero_region();
  const uint64_t piece = zeros.size();
  const uint64_t n = (length.value() + piece - 1) / piece;
  auto fan = std::make_shared<FanIn>(static_cast<unsigned>(n) + 1, std::move(done));
  for (uint64_t i = 0; i < n; ++i) {
    const uint64_t off = offset.value() + i * piece;
    const uint64_t len = std::min<uint64_t>(piece, offset.value() + length.value() - off);
    device.write(Bytes(off), zeros.first(len), [fan](std::error_code ec) { fan->arrive(ec); });
  }
  fan->arrive();
}

Extent FileDevice::extent_at(Bytes offset) const {
  const uint64_t end = size_.value();
  const auto off = static_cast<off_t>(offset.value());
  const off_t data = ::lseek(fd_.get(), off, SEEK_DATA);
  if (data < 0) {
    if (errno == ENXIO) return Extent{false, size_ - offset};  // a hole to the end
    return Extent{true, size_ - offset};                       // cannot tell: treat as data
  }
  if (data > off) {
    // A hole up to `data`, rounded down to a sector so the data after it is never skipped.
    uint64_t hole = std::min<uint64_t>(static_cast<uint64_t>(data), end) - offset.value();
    hole &= ~uint64_t{kSectorSize - 1};
    if (hole > 0) return Extent{false, Bytes(hole)};
  }
  off_t hole_at = ::lseek(fd_.get(), off, SEEK_HOLE);
  uint64_t data_end = hole_at < 0 ? end : std::min<uint64_t>(static_cast<uint64_t>(hole_at), end);
  data_end = (data_end + kSectorSize - 1) & ~uint64_t{kSectorSize - 1};  // round up: never skip data
  if (data_end <= offset.value()) data_end = offset.value() + kSectorSize;
  return Extent{true, Bytes(std::min(data_end, end) - offset.value())};
}

}  // namespace kcopyfs
