#include "fs/volume_io.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "engine/fan_in.h"
#include "fs/aligned_buffer.h"

namespace kcopyfs::fs {

namespace {
int errno_of(std::error_code ec) { return ec ? (ec.value() != 0 ? ec.value() : EIO) : 0; }
}  // namespace

// One write in progress: the aligned span [start, end) of the device it covers, the bounce buffer holding the
// new bytes at their place in it, and which edge blocks must be read first.
struct VolumeIo::WriteOp {
  uint64_t start = 0;
  uint64_t end = 0;
  uint64_t user_offset = 0;  // of the new bytes within the buffer
  size_t user_length = 0;
  bool head_partial = false;
  bool tail_partial = false;
  AlignedBuffer buffer;
  RangeLock::Ticket ticket = 0;
  WriteDone done;
};

VolumeIo::VolumeIo(std::shared_ptr<BlockDevice> device)
    : device_(std::move(device)),
      size_(device_->size().value()),
      block_(std::max<uint64_t>(device_->logical_block_size(), kSectorSize)) {}

void VolumeIo::read(uint64_t offset, size_t length, ReadDone done) {
  if (offset >= size_ || length == 0) {
    done(0, {});
    return;
  }
  const uint64_t len = std::min<uint64_t>(length, size_ - offset);
  const uint64_t start = offset & ~(block_ - 1);
  const uint64_t end = std::min(size_, (offset + len + block_ - 1) & ~(block_ - 1));
  auto buffer = std::make_shared<AlignedBuffer>(end - start);
  const std::span<std::byte> target = buffer->span();
  // Reads need no lock: a read racing a write to the same bytes may see either, as with any block device.
  device_->read(Bytes(start), target,
                [buffer, skip = offset - start, len, done = std::move(done)](std::error_code ec) {
                  if (ec) {
                    done(errno_of(ec), {});
                    return;
                  }
                  done(0, std::span<const std::byte>(buffer->data() + skip, len));
                });
}

void VolumeIo::write(uint64_t offset, std::span<const std::byte> data, WriteDone done) {
  if (data.empty()) {
    done(0, 0);
    return;
  }
  if (offset >= size_) {
    done(ENOSPC, 0);
    return;
  }
  auto op = std::make_shared<WriteOp>();
  op->user_length = static_cast<size_t>(std::min<uint64_t>(data.size(), size_ - offset));
  op->start = offset & ~(block_ - 1);
  op->end = std::min(size_, (offset + op->user_length + block_ - 1) & ~(block_ - 1));
  op->user_offset = offset - op->start;
  op->head_partial = op->user_offset != 0;
  op->tail_partial = offset + op->user_length != op->end;
  op->buffer = AlignedBuffer(op->end - op->start);
  std::memcpy(op->buffer.data() + op->user_offset, data.data(), op->user_length);
  op->done = std::move(done);
  const bool rmw = op->head_partial || op->tail_partial;
  locks_.lock(op->start, op->end, rmw, [this, op](RangeLock::Ticket ticket) {
    op->ticket = ticket;
    start_write(op);
  });
}

void VolumeIo::start_write(const std::shared_ptr<WriteOp>& op) {
  if (!op->head_partial && !op->tail_partial) {
    write_bounce(op);
    return;
  }
  // Read the edge blocks into a side buffer and copy in only the bytes the write does not replace.
  const uint64_t head_block = op->start;
  const uint64_t tail_block = op->end - block_;
  const bool two = op->head_partial && op->tail_partial && tail_block != head_block;
  auto edges = std::make_shared<AlignedBuffer>(block_ * (two ? 2 : 1));
  auto fan = std::make_shared<FanIn>(1, [this, op, edges, two, tail_block](std::error_code ec) {
    if (ec) {
      const int err = errno_of(ec);
      locks_.unlock(op->ticket);
      op->done(err, 0);
      return;
    }
    std::byte* buf = op->buffer.data();
    const uint64_t user_end = op->user_offset + op->user_length;
    if (op->head_partial) {
      // Bytes [0, user_offset) of the head block, or all but the new bytes when one block holds everything.
      std::memcpy(buf, edges->data(), op->user_offset);
      if (!two && op->tail_partial)
        std::memcpy(buf + user_end, edges->data() + user_end, (tail_block - op->start) + block_ - user_end);
    }
    if (op->tail_partial && (two || !op->head_partial)) {
      const std::byte* tail = edges->data() + (two ? block_ : 0);
      const uint64_t tail_off = tail_block - op->start;  // where the tail block starts within buf
      std::memcpy(buf + user_end, tail + (user_end - tail_off), tail_off + block_ - user_end);
    }
    write_bounce(op);
  });
  if (op->head_partial) {
    fan->add();
    device_->read(Bytes(head_block), std::span<std::byte>(edges->data(), block_),
                  [fan](std::error_code ec) { fan->arrive(ec); });
  }
  if (op->tail_partial && (two || !op->head_partial)) {
    fan->add();
    device_->read(Bytes(tail_block), std::span<std::byte>(edges->data() + (two ? block_ : 0), block_),
                  [fan](std::error_code ec) { fan->arrive(ec); });
  }
  fan->arrive();
}

void VolumeIo::write_bounce(const std::shared_ptr<WriteOp>& op) {
  device_->write(Bytes(op->start), std::span<const std::byte>(op->buffer.data(), op->buffer.size()),
                 [this, op](std::error_code ec) {
                   locks_.unlock(op->ticket);
                   op->done(errno_of(ec), ec ? 0 : op->user_length);
                 });
}

void VolumeIo::flush(FlushDone done) {
  device_->flush([done = std::move(done)](std::error_code ec) { done(errno_of(ec)); });
}

}  // namespace kcopyfs::fs
