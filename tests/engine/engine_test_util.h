// Helpers shared by the engine suites: opening image files as devices, waiting for kcopyd callbacks with a
// bounded timeout, and comparing file content against test::pattern().
#pragma once

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <stdlib.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/fault_device.h"
#include "engine/file_device.h"
#include "engine/kcopyd.h"
#include "tests/support/test_support.h"

namespace kcopyfs::test {

// Every wait in these suites gives up (and fails the test) after this long.
inline constexpr auto kTimeout = std::chrono::seconds(60);

// A fresh directory on /dev/shm (tmpfs), removed with its contents on destruction.
class ShmDir {
 public:
  ShmDir() {
    std::string tmpl = "/dev/shm/kcopyfs-test.XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp on /dev/shm failed");
    path_ = tmpl;
  }
  ~ShmDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ShmDir(const ShmDir&) = delete;
  ShmDir& operator=(const ShmDir&) = delete;
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Reports a wait that timed out and ends the test process at once: the objects still waiting for the lost
// work (a kcopyd client, an IoRing) would otherwise block forever in their destructors.
[[noreturn]] inline void fail_timeout(const std::string& what) {
  ADD_FAILURE() << "timed out after " << kTimeout.count() << " s waiting for " << what;
  std::fflush(stdout);
  std::fflush(stderr);
  std::_Exit(1);
}

// Opens path as a FileDevice; throws (failing the test) when it cannot.
inline std::unique_ptr<FileDevice> open_device(const std::string& path, OpenOptions options = {}) {
  auto dev = FileDevice::open(path, options);
  if (!dev) throw std::runtime_error(dev.error().message());
  return std::move(dev).value();
}

// An image file opened as a FileDevice, wrapped in a FaultDevice so tests can record, delay and fail its I/O.
struct Image {
  std::string path;
  std::unique_ptr<FileDevice> file;
  std::unique_ptr<FaultDevice> fault;

  Image(std::string p, OpenOptions options = {}) : path(std::move(p)) {
    file = open_device(path, options);
    fault = std::make_unique<FaultDevice>(*file);
  }
  // A pattern-filled image of `size` bytes.
  static std::unique_ptr<Image> with_pattern(const std::string& path, uint64_t size, uint64_t seed) {
    write_pattern_file(path, size, seed);
    return std::make_unique<Image>(path);
  }
  // An all-zero sparse image of `size` bytes.
  static std::unique_ptr<Image> sparse(const std::string& path, uint64_t size) {
    make_sparse_file(path, size);
    return std::make_unique<Image>(path);
  }
  FaultDevice& dev() { return *fault; }
  Region region(Sector start, Sector count) { return Region{fault.get(), start, count}; }
};

// Collects kcopyd callbacks: per-job results and counts, and lets the test wait for a number of them.
class Callbacks {
 public:
  struct Result {
    int calls = 0;
    bool read_error = false;
    uint32_t write_errors = 0;
  };

  explicit Callbacks(size_t jobs = 1) : results_(jobs) {}

  CopyCallback make(size_t job = 0) {
    return [this, job](bool read_error, uint32_t write_errors) {
      std::lock_guard lock(mutex_);
      Result& r = results_.at(job);
      ++r.calls;
      r.read_error = read_error;
      r.write_errors = write_errors;
      ++total_;
      cv_.notify_all();
    };
  }

  // Waits until at least n callbacks ran; fails the test and exits after kTimeout. Returns true.
  bool wait_for(size_t n) {
    std::unique_lock lock(mutex_);
    if (!cv_.wait_for(lock, kTimeout, [&] { return total_ >= n; }))
      fail_timeout(std::to_string(n) + " kcopyd callbacks (" + std::to_string(total_) + " ran)");
    return true;
  }
  bool wait_all() { return wait_for(results_.size()); }

  Result result(size_t job = 0) const {
    std::lock_guard lock(mutex_);
    return results_.at(job);
  }
  size_t total() const {
    std::lock_guard lock(mutex_);
    return total_;
  }

 private:
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<Result> results_;
  size_t total_ = 0;
};

inline std::unique_ptr<KcopydClient> make_client(const KcopydOptions& options = {}) {
  auto c = KcopydClient::create(options);
  if (!c) throw std::runtime_error(c.error().message());
  return std::move(c).value();
}

// Whether path's bytes [offset, offset+length) equal pattern(seed, pattern_offset, length). Reports the first
// differing byte on failure.
inline ::testing::AssertionResult file_matches_pattern(const std::string& path, uint64_t offset,
                                                       uint64_t length, uint64_t seed,
                                                       uint64_t pattern_offset) {
  const auto got = read_file(path, offset, length);
  if (got.size() != length)
    return ::testing::AssertionFailure() << path << ": short read " << got.size() << " of " << length;
  const auto want = pattern(seed, pattern_offset, length);
  for (uint64_t i = 0; i < length; ++i) {
    if (got[i] != want[i])
      return ::testing::AssertionFailure() << path << ": byte at " << offset + i << " differs from pattern("
                                           << seed << ") at " << pattern_offset + i;
  }
  return ::testing::AssertionSuccess();
}

// Whether path's bytes [offset, offset+length) are all zero.
inline ::testing::AssertionResult file_is_zero(const std::string& path, uint64_t offset, uint64_t length) {
  const auto got = read_file(path, offset, length);
  if (got.size() != length)
    return ::testing::AssertionFailure() << path << ": short read " << got.size() << " of " << length;
  for (uint64_t i = 0; i < length; ++i) {
    if (got[i] != std::byte{0})
      return ::testing::AssertionFailure() << path << ": byte at " << offset + i << " is not zero";
  }
  return ::testing::AssertionSuccess();
}

// Allocated bytes of a file (st_blocks × 512).
inline uint64_t allocated_bytes(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw std::runtime_error("stat " + path);
  return static_cast<uint64_t>(st.st_blocks) * 512;
}

// The records of op kind `op`.
inline std::vector<FaultDevice::Record> records_of(const FaultDevice& dev, FaultDevice::Op op) {
  std::vector<FaultDevice::Record> out;
  for (const auto& r : dev.records())
    if (r.op == op) out.push_back(r);
  return out;
}

// Whether [a, a+an) and [b, b+bn) overlap.
inline bool overlaps(Sector a, Sector an, Sector b, Sector bn) { return a < b + bn && b < a + an; }

constexpr uint64_t KiB = 1024;
constexpr uint64_t MiB = 1024 * KiB;
constexpr uint64_t GiB = 1024 * MiB;

inline Sector sectors_of_bytes(uint64_t bytes) { return to_sectors(Bytes(bytes)); }

}  // namespace kcopyfs::test
