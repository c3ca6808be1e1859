// Helpers of the mirror suites: leg images opened as FileDevices behind FaultDevices (the test keeps the
// FaultDevice pointers to inject faults and read the records), page-aligned buffers, blocking I/O through the
// mirror with a bounded wait, and image comparison.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <future>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/fault_device.h"
#include "engine/file_device.h"
#include "mirror/core_log.h"
#include "mirror/disk_log.h"
#include "mirror/mirror.h"
#include "tests/support/test_support.h"

namespace kcopyfs::test {

inline constexpr auto kMirrorTimeout = std::chrono::seconds(60);
inline constexpr Sector kTestRegion = Sector(128);  // 64 KiB
inline constexpr uint64_t kRegionBytes = 64 * 1024;
inline constexpr uint64_t kBlock = 4096;

// A page-aligned byte buffer (O_DIRECT legs).
class AlignedBuffer {
 public:
  explicit AlignedBuffer(size_t size) : size_(size) {
    p_ = static_cast<std::byte*>(std::aligned_alloc(kBlock, (size + kBlock - 1) / kBlock * kBlock));
    if (p_ == nullptr) throw std::bad_alloc();
    std::memset(p_, 0, size);
  }
  ~AlignedBuffer() { std::free(p_); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  std::span<std::byte> span() { return {p_, size_}; }
  std::vector<std::byte> vec() const { return std::vector<std::byte>(p_, p_ + size_); }
  void fill(const std::vector<std::byte>& v) { std::memcpy(p_, v.data(), std::min(v.size(), size_)); }

 private:
  std::byte* p_;
  size_t size_;
};

inline std::error_code wait_io(std::function<void(IoCallback)> start) {
  auto p = std::make_shared<std::promise<std::error_code>>();
  auto f = p->get_future();
  start([p](std::error_code ec) { p->set_value(ec); });
  if (f.wait_for(kMirrorTimeout) != std::future_status::ready) {
    ADD_FAILURE() << "I/O not completed within the timeout";
    throw std::runtime_error("timeout");
  }
  return f.get();
}

inline std::error_code mirror_write(BlockDevice& m, uint64_t offset, const std::vector<std::byte>& data) {
  AlignedBuffer b(data.size());
  b.fill(data);
  return wait_io([&](IoCallback done) { m.write(Bytes(offset), b.span(), std::move(done)); });
}

inline std::error_code mirror_read(BlockDevice& m, uint64_t offset, std::vector<std::byte>& out) {
  AlignedBuffer b(out.size());
  const auto ec = wait_io([&](IoCallback done) { m.read(Bytes(offset), b.span(), std::move(done)); });
  out = b.vec();
  return ec;
}

// Leg images in a temporary directory, each a FileDevice wrapped by a FaultDevice handed to the mirror.
class LegSet {
 public:
  // n legs of `regions` test regions; leg i filled with pattern(seeds[i]) (same seed: identical legs).
  LegSet(unsigned n, uint64_t regions, std::vector<uint64_t> seeds) : regions_(regions) {
    for (unsigned i = 0; i < n; ++i) {
      paths_.push_back(dir_.file("leg" + std::to_string(i) + ".img"));
      write_pattern_file(paths_.back(), bytes(), seeds.at(i));
    }
  }
  uint64_t bytes() const { return regions_ * kRegionBytes; }
  uint64_t regions() const { return regions_; }
  const std::string& path(unsigned i) const { return paths_.at(i); }
  std::string file(const std::string& name) const { return dir_.file(name); }

  // Opens every leg; the FaultDevices stay reachable through fault(i) while the mirror lives. Closes what an
  // earlier open() opened: the mirror made over those must be gone.
  std::vector<std::unique_ptr<BlockDevice>> open() {
    close();
    std::vector<std::unique_ptr<BlockDevice>> out;
    for (const auto& p : paths_) out.push_back(open_one(p));
    return out;
  }
  std::unique_ptr<BlockDevice> open_one(const std::string& p) {
    auto dev = FileDevice::open(p, OpenOptions{});
    if (!dev) throw std::runtime_error(dev.error().message());
    files_.push_back(std::move(dev).value());
    auto fault = std::make_unique<FaultDevice>(*files_.back());
    faults_.push_back(fault.get());
    return fault;
  }
  // Closes the files (after the mirror over them is gone), so another process may open them.
  void close() {
    faults_.clear();
    files_.clear();
  }
  FaultDevice& fault(unsigned i) { return *faults_.at(i); }
  std::vector<std::byte> image(unsigned i) const { return read_file(paths_.at(i), 0, bytes()); }
  std::vector<std::byte> image(const std::string& p) const { return read_file(p, 0, bytes()); }

 private:
  TempDir dir_;
  uint64_t regions_;
  std::vector<std::string> paths_;
  // Outlive the mirrors made over them (a mirror is always destroyed before its LegSet).
  std::vector<std::unique_ptr<FileDevice>> files_;
  std::vector<FaultDevice*> faults_;
};

inline MirrorOptions test_options() {
  MirrorOptions o;
  o.region_size = kTestRegion;
  o.update_interval = std::chrono::milliseconds(20);
  return o;
}

inline std::unique_ptr<Mirror> make_core_mirror(LegSet& legs, SyncMode mode,
                                                MirrorOptions o = test_options()) {
  auto devices = legs.open();
  auto log = CoreLog::create(o.region_size, Mirror::size_of(devices), mode);
  if (!log) throw std::runtime_error(log.error().message());
  auto m = Mirror::create(std::move(devices), std::unique_ptr<DirtyLog>(std::move(log).value()), o);
  if (!m) throw std::runtime_error(m.error().message());
  return std::move(m).value();
}

// A mirror over legs with a disk log on log_device (which must outlive it).
inline Result<std::unique_ptr<Mirror>> make_disk_mirror(LegSet& legs, BlockDevice& log_device, SyncMode mode,
                                                        MirrorOptions o = test_options()) {
  return Mirror::create(
      legs.open(),
      [&log_device, mode, o](Sector size, FlushLegs flush_legs) -> Result<std::unique_ptr<DirtyLog>> {
        auto log = DiskLog::open(log_device, o.region_size, size, mode, std::move(flush_legs));
        if (!log) return log.error();
        return std::unique_ptr<DirtyLog>(std::move(log).value());
      },
      o);
}

// Counts the operations of kind op in a FaultDevice's records.
inline size_t count_ops(const FaultDevice& f, FaultDevice::Op op) {
  size_t n = 0;
  for (const auto& r : f.records()) n += r.op == op ? 1 : 0;
  return n;
}

}  // namespace kcopyfs::test
