#include "mirror/disk_log.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <new>

#include "engine/sync_io.h"
#include "mirror/disk_log_format.h"

namespace kcopyfs {

namespace fmt = disk_log_format;

// One flush in flight: the requests it serves and what it found touched when it started.
struct DiskLog::FlushRun {
  std::vector<std::function<void(bool)>> callbacks;
  RegionBits::Touched touched;
};

namespace {

std::string describe_log(const BlockDevice& device) {
  std::string s = "disk log ";
  s += device.path();
  return s;
}

}  // namespace

DiskLog::DiskLog(BlockDevice& device, const RegionGeometry& geometry, SyncMode mode, FlushLegs flush_legs,
                 IoRing& ring, Bytes io_size)
    : BitsetLog(geometry, mode),
      device_(device),
      flush_legs_(std::move(flush_legs)),
      ring_(ring),
      io_size_(io_size) {
  buffer_ = allocate_aligned(io_alignment(device), io_size.value());
  std::memset(buffer_.get(), 0, io_size.value());
}

Bytes DiskLog::device_size_for(Sector mirror_size, Sector region_size) {
  const uint64_t regions = (mirror_size.value() + region_size.value() - 1) / region_size.value();
  return disk_log_format::io_bytes(regions, 4096);
}

Result<std::unique_ptr<DiskLog>> DiskLog::open(BlockDevice& log_device, Sector region_size,
                                               Sector mirror_size, SyncMode mode, FlushLegs flush_legs) {
  const std::string rule = check_region_size(region_size, mirror_size);
  if (!rule.empty()) return Error::invalid(describe_log(log_device) + ": " + rule);
  const RegionGeometry geometry(region_size, mirror_size);
  const uint64_t regions = geometry.region_count();
  const Bytes io_size = fmt::io_bytes(regions, log_device.logical_block_size());
  if (log_device.size() < io_size) {
    std::string m = "log device ";
    m += log_device.path();
    m += " too small: ";
    m += std::to_string(log_device.size().value());
    m += " bytes; the disk log of ";
    m += std::to_string(regions);
    m += " regions needs ";
    m += std::to_string(io_size.value());
    m += " bytes (header and bitset)";
    return Error(std::make_error_code(std::errc::no_space_on_device), m);
  }
  if (log_device.read_only()) return Error::from_errno(EROFS, describe_log(log_device));
  auto ring = IoRing::shared();
  if (!ring) return ring.error();

  std::unique_ptr<DiskLog> log(
      new DiskLog(log_device, geometry, mode, std::move(flush_legs), *ring.value(), io_size));
  std::byte* buffer = log->buffer_.get();
  const std::span<std::byte> io_span(buffer, io_size.value());

  // 1. Read header and bitset. A device that cannot be read holds nothing to trust: everything starts as new.
  const bool read_failed = static_cast<bool>(read_sync(log_device, Bytes(0), io_span));
  uint64_t stored_regions = 0;
  if (read_failed || mode != SyncMode::by_log || fmt::load_le32(buffer + fmt::kMagicOffset) != fmt::kMagic) {
    std::memset(buffer, 0, io_size.value());
  } else {
    const uint32_t version = fmt::load_le32(buffer + fmt::kVersionOffset);
    if (version != fmt::kVersion && version != fmt::kUpgradableVersion) {
      // The kernel goes on with such a log as with an unreadable one and overwrites it; kcopyfs refuses it
      // instead, so that a log of an unknown format is never destroyed.
      std::string m = describe_log(log_device);
      m += ": incompatible disk log version ";
      m += std::to_string(version);
      m += " (kcopyfs reads versions 1 and 2)";
      return Error::invalid(m);
    }
    stored_regions = fmt::load_le64(buffer + fmt::kRegionCountOffset);
  }

  // 2-4. New regions, padding, sync bits = clean bits.
  {
    std::lock_guard lock(log->mutex_);
    log->bits_.resume_from(
        std::span<const std::byte>(buffer + fmt::kBitsetOffset.value(), fmt::bitset_bytes(regions).value()),
        stored_regions, mode == SyncMode::nosync);
    log->encode_locked();
  }
  // 5. Write back with this mirror's region count (and version 2), then make it durable. No one else can
  // reach the log yet, so the flags are set without the lock.
  log->device_failed_ = read_failed;
  if (write_sync(log_device, Bytes(0), io_span)) {
    log->device_failed_ = true;
  } else if (flush_sync(log_device)) {
    log->device_flush_failed_ = true;
    log->device_failed_ = true;
  }
  return log;
}

DiskLog::~DiskLog() {
  std::unique_lock lock(mutex_);
  idle_.wait(lock, [this] { return !flushing_; });
}

void DiskLog::encode_locked() {
  std::byte* buffer = buffer_.get();
  fmt::store_le32(buffer + fmt::kMagicOffset, fmt::kMagic);
  fmt::store_le32(buffer + fmt::kVersionOffset, fmt::kVersion);
  fmt::store_le64(buffer + fmt::kRegionCountOffset, bits_.region_count());
  const auto clean = bits_.clean_bitset();
  std::memcpy(buffer + fmt::kBitsetOffset.value(), clean.data(), clean.size());
}

void DiskLog::flush(std::function<void(bool ok)> done) {
  {
    std::lock_guard lock(mutex_);
    waiting_.push_back(std::move(done));
    if (flushing_) return;  // the flush in flight starts the next one when it ends
    flushing_ = true;
  }
  start_flush();
}

void DiskLog::start_flush() {
  auto run = std::make_shared<FlushRun>();
  {
    std::lock_guard lock(mutex_);
    run->callbacks.swap(waiting_);
    run->touched = bits_.take_touched();
    // The clean bits are taken now, before the legs are flushed: a region cleaned later may have had its
    // last write complete after the legs' flush began, so it waits for the next flush.
    if (run->touched.any()) encode_locked();
  }
  if (!run->touched.any()) {
    ring_.defer([this, run] { finish(run, true); });
    return;
  }
  if (run->touched.cleaned && flush_legs_) {
    flush_legs_([this, run](bool ok) { write_log(run, ok); });
    return;
  }
  write_log(run, true);
}

void DiskLog::write_log(std::shared_ptr<FlushRun> run, bool legs_ok) {
  if (!legs_ok) {
    std::lock_guard lock(mutex_);
    bits_.forget_clean();
    // Clearing bits dirties: the log device is flushed after this write.
    run->touched.dirtied = true;
    encode_locked();
  }
  device_.write(Bytes(0), std::span<const std::byte>(buffer_.get(), io_size_.value()),
                [this, run](std::error_code ec) { after_write(run, ec); });
}

void DiskLog::after_write(std::shared_ptr<FlushRun> run, std::error_code ec) {
  if (ec) {
    {
      std::lock_guard lock(mutex_);
      device_failed_ = true;
      bits_.retouch(run->touched);
    }
    return finish(run, false);
  }
  if (run->touched.dirtied) {
    device_.flush([this, run](std::error_code flush_ec) { after_device_flush(run, flush_ec); });
    return;
  }
  finish(run, true);
}

void DiskLog::after_device_flush(std::shared_ptr<FlushRun> run, std::error_code ec) {
  if (ec) {
    {
      std::lock_guard lock(mutex_);
      device_flush_failed_ = true;
      device_failed_ = true;
      // The bits are on the device but may not be durable: the next flush writes and flushes again.
      bits_.retouch(RegionBits::Touched{false, true});
    }
    return finish(run, false);
  }
  finish(run, true);
}

void DiskLog::finish(std::shared_ptr<FlushRun> run, bool ok) {
  for (auto& callback : run->callbacks) callback(ok);
  bool again = false;
  {
    std::lock_guard lock(mutex_);
    again = !waiting_.empty();
    if (!again) {
      flushing_ = false;
      idle_.notify_all();
    }
  }
  if (again) start_flush();
}

std::string DiskLog::status_info() const {
  std::string out = "3 disk ";
  out += device_.path();
  out += ' ';
  out += health();
  return out;
}

std::string DiskLog::status_table() const {
  std::string out = "disk ";
  out += std::to_string(table_argument_count(2));
  out += ' ';
  out += device_.path();
  out += ' ';
  append_table_tail(out);
  return out;
}

char DiskLog::health() const {
  std::lock_guard lock(mutex_);
  return device_flush_failed_ ? 'F' : device_failed_ ? 'D' : 'A';
}

}  // namespace kcopyfs
