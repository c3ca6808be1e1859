// Helpers shared by the dirty-log suites: log images opened as devices behind a FaultDevice, waiting for
// flush callbacks with a bounded timeout, a stand-in for the mirror's leg flush, and raw access to the
// on-disk layout computed from kernel-dm-notes.md §5.3 rather than from mirror/disk_log_format.h.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "engine/fault_device.h"
#include "engine/file_device.h"
#include "engine/io_ring.h"
#include "mirror/core_log.h"
#include "mirror/disk_log.h"
#include "tests/support/test_support.h"

namespace kcopyfs::test {

// Every wait in these suites gives up (and fails the test) after this long.
inline constexpr auto kLogTimeout = std::chrono::seconds(60);
inline constexpr Sector kRegion = Sector(1024);

// A mirror of exactly `regions` regions of kRegion sectors.
inline Sector mirror_of(uint64_t regions) { return Sector(regions * kRegion.value()); }

// A log image: the file (or block device), its device, and a FaultDevice over it for recording and failing
// I/O. Logs must be destroyed before the image.
struct LogImage {
  std::string path;
  std::unique_ptr<FileDevice> file;
  std::unique_ptr<FaultDevice> fault;

  // A sparse all-zero image file of `size` bytes.
  LogImage(std::string p, uint64_t size) : path(std::move(p)) {
    make_sparse_file(path, size);
    reopen();
  }
  // Opens an existing image file or block device.
  explicit LogImage(std::string p) : path(std::move(p)) { reopen(); }

  void reopen() {
    fault.reset();
    file.reset();
    auto dev = FileDevice::open(path, OpenOptions{});
    if (!dev) throw std::runtime_error(dev.error().message());
    file = std::move(dev).value();
    fault = std::make_unique<FaultDevice>(*file);
  }
  BlockDevice& dev() { return *fault; }
};

inline std::unique_ptr<DiskLog> open_log(LogImage& image, uint64_t regions, SyncMode mode = SyncMode::by_log,
                                         FlushLegs legs = {}) {
  auto log = DiskLog::open(image.dev(), kRegion, mirror_of(regions), mode, std::move(legs));
  if (!log) throw std::runtime_error(log.error().message());
  return std::move(log).value();
}

// The result of one flush and where its callback ran.
struct FlushOutcome {
  bool ok = false;
  std::thread::id thread;
  size_t records_seen = 0;  // how many log-device operations had completed when the callback ran
};

// Flushes and waits for the callback. fault: the log's FaultDevice, to count records at callback time.
inline FlushOutcome flush_wait(DirtyLog& log, FaultDevice* fault = nullptr) {
  auto p = std::make_shared<std::promise<FlushOutcome>>();
  auto f = p->get_future();
  log.flush([p, fault](bool ok) {
    p->set_value(FlushOutcome{ok, std::this_thread::get_id(), fault ? fault->records().size() : 0});
  });
  if (f.wait_for(kLogTimeout) != std::future_status::ready) {
    ADD_FAILURE() << "flush callback not called within the timeout";
    throw std::runtime_error("timeout");
  }
  return f.get();
}

// Stands in for the mirror's leg flush: counts calls, notes how many log-device operations had completed at
// each call, completes with a chosen result, and can hold completions until released.
class FakeLegs {
 public:
  explicit FakeLegs(FaultDevice* watched = nullptr) : watched_(watched) {}

  FlushLegs callback() {
    return [this](std::function<void(bool)> done) {
      std::unique_lock lock(mutex_);
      records_at_call_.push_back(watched_ ? watched_->records().size() : 0);
      cv_.notify_all();
      if (hold_) {
        held_.push_back(std::move(done));
        return;
      }
      const bool ok = ok_;
      lock.unlock();
      // Completed from another thread, as a real leg flush would be.
      auto ring = IoRing::shared();
      ring.value()->defer([done = std::move(done), ok] { done(ok); });
    };
  }

  void set_result(bool ok) {
    std::lock_guard lock(mutex_);
    ok_ = ok;
  }
  void hold() {
    std::lock_guard lock(mutex_);
    hold_ = true;
  }
  // Completes every held call with the current result and stops holding.
  void release() {
    std::vector<std::function<void(bool)>> held;
    bool ok = false;
    {
      std::lock_guard lock(mutex_);
      hold_ = false;
      held.swap(held_);
      ok = ok_;
    }
    for (auto& done : held) done(ok);
  }
  // Waits until the legs were asked to flush n times in all. Result: false on timeout.
  bool wait_calls(size_t n) {
    std::unique_lock lock(mutex_);
    return cv_.wait_for(lock, kLogTimeout, [&] { return records_at_call_.size() >= n; });
  }
  size_t calls() const {
    std::lock_guard lock(mutex_);
    return records_at_call_.size();
  }
  std::vector<size_t> records_at_call() const {
    std::lock_guard lock(mutex_);
    return records_at_call_;
  }

 private:
  FaultDevice* watched_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  bool ok_ = true;
  bool hold_ = false;
  std::vector<std::function<void(bool)>> held_;
  std::vector<size_t> records_at_call_;
};

// Brings every region of log to clean and in sync on disk, as a completed resync does.
inline void resync_all(DirtyLog& log) {
  while (auto r = log.get_resync_work()) {
    log.set_region_sync(*r, true);
    log.clear_region(*r);
  }
  ASSERT_TRUE(flush_wait(log).ok);
  ASSERT_EQ(log.sync_count(), log.region_count());
}

// Raw layout, by file offset, from the specification.
inline constexpr uint64_t kRawBitsetOffset = 1024;

inline uint32_t raw_le32(const std::vector<std::byte>& b, size_t at) {
  return static_cast<uint32_t>(b.at(at)) | static_cast<uint32_t>(b.at(at + 1)) << 8 |
         static_cast<uint32_t>(b.at(at + 2)) << 16 | static_cast<uint32_t>(b.at(at + 3)) << 24;
}
inline uint64_t raw_le64(const std::vector<std::byte>& b, size_t at) {
  return raw_le32(b, at) | static_cast<uint64_t>(raw_le32(b, at + 4)) << 32;
}
inline std::vector<std::byte> le_bytes(uint64_t v, size_t n) {
  std::vector<std::byte> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<std::byte>(v >> (8 * i));
  return out;
}
// Region n's clean bit in an image read from offset 0: byte 1024 + n/8, bit n%8.
inline bool raw_clean(const std::vector<std::byte>& image, uint64_t n) {
  return (static_cast<unsigned>(image.at(kRawBitsetOffset + n / 8)) >> (n % 8)) & 1u;
}
inline std::vector<std::byte> whole_file(const std::string& path) {
  return read_file(path, 0, std::filesystem::file_size(path));
}

// Writes a stored log by hand: header {magic, version, nr_regions} and the clean bitset of `regions` regions
// (every one clean except `dirty`), rounded to 64 regions, at byte 1024.
inline void write_raw_log(const std::string& path, uint32_t version, uint64_t regions,
                          const std::set<uint64_t>& dirty, uint32_t magic = 0x4D695272) {
  std::vector<std::byte> header;
  for (auto part : {le_bytes(magic, 4), le_bytes(version, 4), le_bytes(regions, 8)})
    header.insert(header.end(), part.begin(), part.end());
  write_file(path, 0, header);
  std::vector<std::byte> bits((regions + 63) / 64 * 8, std::byte{0});
  for (uint64_t n = 0; n < regions; ++n)
    if (!dirty.count(n)) bits[n / 8] |= static_cast<std::byte>(1u << (n % 8));
  write_file(path, kRawBitsetOffset, bits);
}

// The regions of log that are not in sync.
inline std::set<uint64_t> out_of_sync(const DirtyLog& log) {
  std::set<uint64_t> out;
  for (uint64_t n = 0; n < log.region_count(); ++n)
    if (!log.in_sync(RegionIndex(n))) out.insert(n);
  return out;
}
inline std::set<uint64_t> not_clean(const DirtyLog& log) {
  std::set<uint64_t> out;
  for (uint64_t n = 0; n < log.region_count(); ++n)
    if (!log.is_clean(RegionIndex(n))) out.insert(n);
  return out;
}
// The regions whose clean bit is 0 in an image read from offset 0.
inline std::set<uint64_t> raw_dirty(const std::vector<std::byte>& image, uint64_t regions) {
  std::set<uint64_t> out;
  for (uint64_t n = 0; n < regions; ++n)
    if (!raw_clean(image, n)) out.insert(n);
  return out;
}

// A compact rendering of a FaultDevice's records: "W0+3 F " (write at sector 0 of 3 sectors, flush).
inline std::string render(const std::vector<FaultDevice::Record>& records, bool with_reads = false) {
  std::string out;
  for (const auto& r : records) {
    switch (r.op) {
      case FaultDevice::Op::read:
        if (!with_reads) continue;
        out += 'R';
        break;
      case FaultDevice::Op::write:
        out += 'W';
        break;
      case FaultDevice::Op::flush:
        out += r.error != 0 ? "F! " : "F ";
        continue;
      case FaultDevice::Op::write_zeroes:
        out += 'Z';
        break;
    }
    out += std::to_string(r.start.value());
    out += '+';
    out += std::to_string(r.count.value());
    if (r.error != 0) out += '!';
    out += ' ';
  }
  return out;
}

}  // namespace kcopyfs::test
