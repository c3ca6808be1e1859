#include "snapshot/snapshot.h"

#include <algorithm>

#include "engine/fan_in.h"
#include "engine/file_device.h"
#include "engine/io_ring.h"
#include "snapshot/origin.h"

namespace kcopyfs {

namespace {

std::error_code eio() { return std::error_code(EIO, std::generic_category()); }

}  // namespace

std::string SnapshotStatus::kernel_status() const {
  if (!valid) return "Invalid";
  if (merge_failed) return "Merge failed";
  if (overflow) return "Overflow";
  return std::to_string(usage.allocated.value()) + "/" + std::to_string(usage.total.value()) + " " +
         std::to_string(usage.metadata.value());
}

Snapshot::Snapshot(Origin& origin, std::string name, std::unique_ptr<BlockDevice> cow,
                   std::unique_ptr<ExceptionStore> store, bool writable)
    : origin_(origin),
      name_(std::move(name)),
      cow_(std::move(cow)),
      store_(std::move(store)),
      geometry_(store_->chunk_size()),
      writable_(writable) {}

Snapshot::~Snapshot() = default;

SnapshotStatus Snapshot::status() const {
  std::lock_guard lock(origin_.mutex_);
  return status_locked();
}

SnapshotStatus Snapshot::status_locked() const {
  SnapshotStatus s;
  s.valid = valid_;
  s.reason = invalid_reason_;
  s.overflow = overflow_;
  s.merge_failed = merge_failed_;
  s.persistent = store_->type_letter() == 'P';
  s.writable = writable_;
  s.chunk_size = geometry_.chunk_size();
  s.usage = store_->usage();
  s.exceptions = table_.size();
  s.merging = origin_.merging_ == this;
  return s;
}

Bytes Snapshot::size() const { return origin_.size(); }

uint32_t Snapshot::logical_block_size() const {
  return std::max(origin_.logical_block_size(), cow_->logical_block_size());
}

PendingException* Snapshot::find_pending_locked(ChunkIndex chunk) {
  auto it = pending_.find(chunk.value());
  return it == pending_.end() ? nullptr : it->second.get();
}

PendingException* Snapshot::new_pending_locked(ChunkIndex chunk) {
  auto slot = store_->prepare_exception();
  if (!slot) return nullptr;
  auto pe = std::make_unique<PendingException>();
  pe->snapshot = this;
  pe->old_chunk = chunk;
  pe->new_chunk = *slot;
  pe->sequence = next_sequence_++;
  PendingException* raw = pe.get();
  pending_[chunk.value()] = std::move(pe);
  return raw;
}

void Snapshot::untrack_read_locked(ChunkIndex chunk, std::vector<std::function<void()>>& after) {
  auto it = tracked_reads_.find(chunk.value());
  if (--it->second > 0) return;
  tracked_reads_.erase(it);
  auto waiters = read_drain_waiters_.find(chunk.value());
  if (waiters == read_drain_waiters_.end()) return;
  for (auto& w : waiters->second) after.push_back(std::move(w));
  read_drain_waiters_.erase(waiters);
}

void Snapshot::read(Bytes offset, std::span<std::byte> buffer, IoCallback done, FixedBuffer /*fixed*/) {
  if (offset.value() > size().value() || buffer.size() > size().value() - offset.value())
    return origin_.fail_async(std::move(done), EINVAL);
  // A piece: a contiguous part of the request served by one device.
  struct Piece {
    bool from_cow;
    Bytes device_offset;
    size_t buffer_offset;
    size_t length;
    std::vector<uint64_t> tracked;  // origin chunks this piece holds tracked
  };
  std::vector<Piece> pieces;
  {
    std::lock_guard lock(origin_.mutex_);
    // A merging snapshot's own view fails, as the kernel's does once snapshot-merge takes over.
    if (!valid_ || origin_.merging_ == this) return origin_.fail_async(std::move(done), EIO);
    const uint64_t chunk_bytes = geometry_.chunk_bytes().value();
    uint64_t pos = offset.value();
    const uint64_t end = offset.value() + buffer.size();
    while (pos < end) {
      const ChunkIndex chunk(pos / chunk_bytes);
      const uint64_t in_chunk = pos % chunk_bytes;
      const uint64_t len = std::min(chunk_bytes - in_chunk, end - pos);
      auto cow = table_.lookup(chunk);
      const bool from_cow = cow.has_value();
      const uint64_t dev_off = from_cow ? cow->value() * chunk_bytes + in_chunk : pos;
      const size_t buf_off = pos - offset.value();
      Piece* last = pieces.empty() ? nullptr : &pieces.back();
      if (last && last->from_cow == from_cow && last->device_offset.value() + last->length == dev_off) {
        last->length += len;
      } else {
        pieces.push_back(Piece{from_cow, Bytes(dev_off), buf_off, len, {}});
      }
      if (!from_cow) {
        ++tracked_reads_[chunk.value()];
        pieces.back().tracked.push_back(chunk.value());
      }
      pos += len;
    }
  }
  auto fan = std::make_shared<FanIn>(static_cast<unsigned>(pieces.size()) + 1, std::move(done));
  for (Piece& p : pieces) {
    auto span = buffer.subspan(p.buffer_offset, p.length);
    if (p.from_cow) {
      cow_->read(p.device_offset, span, [fan](std::error_code ec) { fan->arrive(ec); });
    } else {
      origin_.device_->read(p.device_offset, span,
                            [this, fan, tracked = std::move(p.tracked)](std::error_code ec) {
                              std::vector<std::function<void()>> after;
                              bool invalidated = false;
                              {
                                std::lock_guard lock(origin_.mutex_);
                                for (uint64_t c : tracked) untrack_read_locked(ChunkIndex(c), after);
                                // Invalidated while this read was at the origin: a failed copy does not wait
                                // for the reads of its chunk (only a committed exception does, above), so the
                                // origin write may have overtaken this read and it may hold the new data. The
                                // snapshot is invalid anyway: EIO, never the wrong data. (The invalidation is
                                // set before the origin write is let go.)
                                invalidated = !valid_;
                              }
                              for (auto& a : after) a();
                              fan->arrive(ec ? ec : invalidated ? eio() : std::error_code());
                            });
    }
  }
  fan->arrive({});
}

void Snapshot::write(Bytes offset, std::span<const std::byte> buffer, IoCallback done,
                     FixedBuffer /*fixed*/) {
  if (!writable_) return origin_.fail_async(std::move(done), EROFS);
  if (offset.value() > size().value() || buffer.size() > size().value() - offset.value())
    return origin_.fail_async(std::move(done), EINVAL);
  Origin::Actions after;
  std::shared_ptr<FanIn> fan;
  {
    std::lock_guard lock(origin_.mutex_);
    if (!valid_ || overflow_ || origin_.merging_ == this) return origin_.fail_async(std::move(done), EIO);
    ++writes_in_flight_;
    fan = std::make_shared<FanIn>(1, [this, done = std::move(done)](std::error_code ec) {
      {
        std::lock_guard l(origin_.mutex_);
        if (--writes_in_flight_ == 0) origin_.changed_.notify_all();
      }
      done(ec);
    });
    const uint64_t chunk_bytes = geometry_.chunk_bytes().value();
    const uint64_t end = offset.value() + buffer.size();
    std::vector<PendingException*> fresh;
    for (uint64_t pos = offset.value(); pos < end;) {
      const ChunkIndex chunk(pos / chunk_bytes);
      const uint64_t in_chunk = pos % chunk_bytes;
      const uint64_t len = std::min(chunk_bytes - in_chunk, end - pos);
      auto data = buffer.subspan(pos - offset.value(), len);
      fan->add();
      // Writes the piece into the chunk's COW copy at new_chunk.
      auto write_piece = [this, fan, data, in_chunk, chunk_bytes](ChunkIndex new_chunk) {
        cow_->write(Bytes(new_chunk.value() * chunk_bytes + in_chunk), data,
                    [fan](std::error_code ec) { fan->arrive(ec); });
      };
      if (auto cow = table_.lookup(chunk)) {
        const ChunkIndex target = *cow;
        after.push_back([write_piece, target] { write_piece(target); });
      } else if (PendingException* pe = find_pending_locked(chunk)) {
        pe->copy_waiters.push_back([write_piece, fan, pe_new = pe->new_chunk](bool ok) {
          if (ok)
            write_piece(pe_new);
          else
            fan->arrive(eio());
        });
      } else if (PendingException* fresh_pe = new_pending_locked(chunk)) {
        if (len == chunk_bytes && !fresh_pe->copy_started) {
          // The write replaces the whole chunk: it is the copy. It is acknowledged once written (deferred
          // commit): the exception becomes durable in the group commit that follows, which flush() waits for.
          fresh_pe->copy_started = true;
          fresh_pe->copy_waiters.push_back([fan](bool ok) { fan->arrive(ok ? std::error_code() : eio()); });
          after.push_back([this, fresh_pe, data, chunk_bytes] {
            cow_->write(Bytes(fresh_pe->new_chunk.value() * chunk_bytes), data,
                        [this, fresh_pe](std::error_code ec) { origin_.copy_finished({fresh_pe}, !ec); });
          });
        } else {
          fresh_pe->copy_waiters.push_back([write_piece, fan, pe_new = fresh_pe->new_chunk](bool ok) {
            if (ok)
              write_piece(pe_new);
            else
              fan->arrive(eio());
          });
          fresh.push_back(fresh_pe);
        }
      } else {
        // The COW store is full on a snapshot write: the kernel's PO store reports Overflow and fails the
        // write; reads keep working.
        overflow_ = true;
        fan->arrive(eio());  // the reference this piece took; the request cannot complete before ours
        break;
      }
      pos += len;
    }
    origin_.start_copies_locked(fresh, after);
  }
  Origin::run(after);
  fan->arrive({});
}

void Snapshot::flush(IoCallback done) {
  auto fan = std::make_shared<FanIn>(2, std::move(done));
  {
    std::lock_guard lock(origin_.mutex_);
    // Exceptions allocated so far include those of every acknowledged write; their commits must be durable
    // before the flush completes, or a crash after it would lose the writes' chunks.
    const uint64_t mark = next_sequence_;
    if (durable_through_ < mark) {
      fan->add();
      durability_waiters_.emplace_back(mark,
                                       [fan](bool valid) { fan->arrive(valid ? std::error_code() : eio()); });
    }
  }
  // Data written into chunks that already had an exception is made durable by the COW flush alone.
  cow_->flush([fan](std::error_code ec) { fan->arrive(ec); });
  fan->arrive({});
}

void Snapshot::commit_done_locked(uint64_t sequence, std::vector<std::function<void()>>& after) {
  if (sequence != durable_through_) {
    durable_ahead_.insert(sequence);
    return;
  }
  ++durable_through_;
  while (!durable_ahead_.empty() && *durable_ahead_.begin() == durable_through_) {
    durable_ahead_.erase(durable_ahead_.begin());
    ++durable_through_;
  }
  auto ready = std::partition(durability_waiters_.begin(), durability_waiters_.end(),
                              [this](const auto& w) { return w.first > durable_through_; });
  for (auto it = ready; it != durability_waiters_.end(); ++it)
    after.push_back([fn = std::move(it->second), valid = valid_] { fn(valid); });
  durability_waiters_.erase(ready, durability_waiters_.end());
}

void Snapshot::write_zeroes(Bytes offset, Bytes length, bool /*may_unmap*/, IoCallback done) {
  write_zeroes_by_writing(*this, offset, length, std::move(done));
}

}  // namespace kcopyfs
