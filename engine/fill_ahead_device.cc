#include "engine/fill_ahead_device.h"

#include <algorithm>

#include "engine/fan_in.h"
#include "engine/file_device.h"

namespace kcopyfs {

std::unique_ptr<BlockDevice> FillAheadDevice::wrap_if_sparse_file(std::unique_ptr<BlockDevice> inner,
                                                                  const Options& options) {
  if (inner == nullptr || inner->read_only() || inner->as_file() == nullptr) return inner;
  return std::make_unique<FillAheadDevice>(std::move(inner), options);
}

FillAheadDevice::FillAheadDevice(std::unique_ptr<BlockDevice> inner, const Options& options)
    : inner_(std::move(inner)),
      max_ahead_(options.max_ahead.value()),
      unit_(std::max<uint64_t>(options.unit.value(), inner_->logical_block_size())),
      refill_divisor_(std::max(options.refill_divisor, 1u)),
      grow_within_(options.grow_within),
      small_write_(options.small_write.value()) {}

FillAheadDevice::~FillAheadDevice() {
  std::unique_lock lock(mutex_);
  idle_.wait(lock, [this] { return busy_ == 0; });
}

FillAheadDevice::Stats FillAheadDevice::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

bool FillAheadDevice::wait_idle(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  return idle_.wait_for(lock, timeout, [this] { return busy_ == 0 && !refilling_; });
}

void FillAheadDevice::read(Bytes offset, std::span<std::byte> buffer, IoCallback done, FixedBuffer fixed) {
  // A hole being filled reads as zeros before, during and after the fill.
  inner_->read(offset, buffer, std::move(done), fixed);
}

void FillAheadDevice::write(Bytes offset, std::span<const std::byte> buffer, IoCallback done,
                            FixedBuffer fixed) {
  submit(offset, Bytes(buffer.size()), [this, offset, buffer, done = std::move(done), fixed]() mutable {
    inner_->write(offset, buffer, std::move(done), fixed);
  });
}

void FillAheadDevice::write_zeroes(Bytes offset, Bytes length, bool may_unmap, IoCallback done) {
  submit(offset, length, [this, offset, length, may_unmap, done = std::move(done)]() mutable {
    inner_->write_zeroes(offset, length, may_unmap, std::move(done));
  });
}

void FillAheadDevice::flush(IoCallback done) {
  // A flush covers the writes completed before it; a write held behind a fill has not completed.
  inner_->flush(std::move(done));
}

void FillAheadDevice::submit(Bytes offset, Bytes length, std::function<void()> issue) {
  const uint64_t from = offset.value();
  const uint64_t to = from + length.value();
  Range fill;
  {
    std::lock_guard lock(mutex_);
    if (from < fill_.to && fill_.from < to) {
      ++stats_.writes_waited;
      waiting_.push_back(Held{to, std::move(issue)});
      return;
    }
    if (to > high_water_) {
      mean_advancing_write_ = (mean_advancing_write_ * 7 + length.value()) / 8;
      // From here on no fill may start below `to`: this write may be in flight there.
      high_water_ = to;
    }
    fill = claim_fill_locked();
  }
  issue();
  if (fill.to > fill.from) run_fill(fill);
}

FillAheadDevice::Range FillAheadDevice::claim_fill_locked() {
  if (stats_.error != 0 || fill_.to > fill_.from || high_water_ == 0) return {};
  const uint64_t block = inner_->logical_block_size();
  const uint64_t device_end = inner_->size().value() / block * block;
  if (!refilling_) {
    const uint64_t left = filled_through_ > high_water_ ? filled_through_ - high_water_ : 0;
    if (window_ != 0 && left >= window_ / refill_divisor_) return {};
    if (high_water_ >= device_end || mean_advancing_write_ > small_write_) return {};
    const auto now = std::chrono::steady_clock::now();
    if (window_ == 0)
      window_ = unit_;
    else if (now - last_refill_ < grow_within_)
      window_ = std::min(max_ahead_, window_ * 2);
    last_refill_ = now;
    refilling_ = true;
    burst_zeroed_ = 0;
  }
  uint64_t from = std::max(filled_through_, high_water_);
  from = (from + block - 1) / block * block;
  const uint64_t end = std::min(high_water_ + window_, device_end);
  if (from >= end) {
    refilling_ = false;
    return {};
  }
  fill_ = Range{from, std::min(from + unit_, end)};
  ++busy_;
  return fill_;
}

void FillAheadDevice::run_fill(Range r) {
  const uint64_t block = inner_->logical_block_size();
  // The holes of r, rounded inwards to whole blocks (the filesystem's holes are larger than a block anyway).
  std::vector<Range> holes;
  for (uint64_t at = r.from; at < r.to;) {
    const Extent e = inner_->extent_at(Bytes(at));
    const uint64_t next = std::min(r.to, at + std::max<uint64_t>(e.length.value(), block));
    if (!e.data) {
      const uint64_t from = (at + block - 1) / block * block;
      const uint64_t to = next / block * block;
      if (to > from) holes.push_back({from, to});
    }
    at = next;
  }
  uint64_t zeroed = 0;
  for (const Range& h : holes) zeroed += h.to - h.from;
  if (holes.empty()) return finish_fill(r, 0, {});
  auto fan = std::make_shared<FanIn>(static_cast<unsigned>(holes.size()) + 1,
                                     [this, r, zeroed](std::error_code ec) { finish_fill(r, zeroed, ec); });
  for (const Range& h : holes)
    write_zeroes_by_writing(*inner_, Bytes(h.from), Bytes(h.to - h.from),
                            [fan](std::error_code ec) { fan->arrive(ec); });
  fan->arrive();
}

void FillAheadDevice::finish_fill(Range r, uint64_t zeroed, std::error_code ec) {
  std::vector<Held> released;
  Range next;
  bool flush_now = false;
  {
    std::lock_guard lock(mutex_);
    fill_ = Range{};
    released = std::move(waiting_);
    waiting_.clear();
    if (ec) {
      // A full filesystem or a failing disk: the writer will meet it on its own; filling only stops.
      stats_.error = ec.value();
      refilling_ = false;
    } else {
      ++stats_.fills;
      stats_.bytes_zeroed += zeroed;
      burst_zeroed_ += zeroed;
      filled_through_ = std::max(filled_through_, r.to);
    }
    // The held writes go to the inner device now, so the next fill must start above them.
    for (const Held& h : released) high_water_ = std::max(high_water_, h.to);
    const bool was_refilling = refilling_;
    next = claim_fill_locked();
    // The end of a burst: one flush commits the allocations of all its fills.
    if (was_refilling && !refilling_ && burst_zeroed_ > 0) {
      flush_now = true;
      ++busy_;
    }
    if (--busy_ == 0 && !refilling_) idle_.notify_all();
  }
  for (Held& h : released) h.issue();
  if (flush_now) {
    inner_->flush([this](std::error_code) {
      std::lock_guard lock(mutex_);
      if (--busy_ == 0 && !refilling_) idle_.notify_all();
    });
  }
  // Runs on a completion thread or in the writer's call; a fill that needs no I/O finishes inline, so the
  // depth of this recursion is bounded by max_ahead_ / unit_.
  if (next.to > next.from) run_fill(next);
}

}  // namespace kcopyfs
