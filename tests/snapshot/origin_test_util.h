// Helpers for the Origin/Snapshot suites: bounded waits for asynchronous I/O, whole-view reads, byte
// comparisons that name the first difference, a gate that holds a FaultDevice hook, and raw header access.
// Every wait gives up after kWait and fails the test.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <future>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "engine/file_device.h"
#include "engine/result.h"
#include "snapshot/origin.h"
#include "snapshot/persistent_format.h"
#include "tests/snapshot/fault_file.h"
#include "tests/support/test_support.h"

namespace kcopyfs::test {

inline constexpr auto kWait = std::chrono::seconds(60);

// With 4 KiB chunks, a persistent store's metadata area 0 is chunk 1 (sectors 8-15); data starts at chunk 2.
inline constexpr Sector kArea0Of4K{8};

// Whether a FaultDevice's records hold a completed write to area 0 of a store with 4 KiB chunks.
inline bool area0_written(const std::vector<FaultDevice::Record>& records) {
  for (const auto& r : records) {
    if (r.op == FaultDevice::Op::write && r.start == kArea0Of4K && r.error == 0) return true;
  }
  return false;
}

inline std::unique_ptr<FileDevice> open_file(const std::string& path) {
  auto dev = FileDevice::open(path, OpenOptions{});
  if (!dev) throw std::runtime_error(dev.error().message());
  return std::move(dev).value();
}

// Starts an asynchronous operation with a callback and waits for the callback, at most kWait.
template <class Start>
std::error_code await_io(Start start, const std::string& what) {
  auto p = std::make_shared<std::promise<std::error_code>>();
  auto f = p->get_future();
  start([p](std::error_code ec) { p->set_value(ec); });
  if (f.wait_for(kWait) != std::future_status::ready) {
    ADD_FAILURE() << what << ": no completion within " << kWait.count() << " s";
    throw std::runtime_error(what + ": timeout");
  }
  return f.get();
}

inline std::error_code read_at(BlockDevice& d, uint64_t offset, std::vector<std::byte>& out) {
  return await_io([&](IoCallback cb) { d.read(Bytes(offset), out, std::move(cb)); }, "read of " + d.path());
}
inline std::error_code write_at(BlockDevice& d, uint64_t offset, const std::vector<std::byte>& data) {
  return await_io([&](IoCallback cb) { d.write(Bytes(offset), data, std::move(cb)); },
                  "write to " + d.path());
}
inline std::error_code flush_dev(BlockDevice& d) {
  return await_io([&](IoCallback cb) { d.flush(std::move(cb)); }, "flush of " + d.path());
}

// The whole view; a failed read fails the test and returns what was read.
inline std::vector<std::byte> read_all(BlockDevice& d) {
  std::vector<std::byte> out(d.size().value());
  const std::error_code ec = read_at(d, 0, out);
  EXPECT_FALSE(ec) << "read of all of " << d.path() << ": " << ec.message();
  return out;
}

inline ::testing::AssertionResult same_bytes(const std::vector<std::byte>& got,
                                             const std::vector<std::byte>& want) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << "size " << got.size() << " != expected " << want.size();
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] != want[i])
      return ::testing::AssertionFailure() << "first difference at byte " << i << " (sector " << i / 512
                                           << ", 4K chunk " << i / 4096 << ")";
  }
  return ::testing::AssertionSuccess();
}

inline void put(std::vector<std::byte>& image, uint64_t offset, const std::vector<std::byte>& data) {
  std::copy(data.begin(), data.end(), image.begin() + static_cast<long>(offset));
}

// The valid field of the header of the COW image file at path, read from the file itself.
inline uint32_t header_valid_on_disk(const std::string& path) {
  return cow_format::load_le32(read_file(path, cow_format::kValidOffset, 4).data());
}

// The result of a merge, delivered to start_merge's on_done.
struct MergeResult {
  std::shared_ptr<std::promise<Status>> promise = std::make_shared<std::promise<Status>>();
  std::future<Status> future = promise->get_future();
  std::function<void(Status)> callback() {
    auto p = promise;
    return [p](Status s) { p->set_value(std::move(s)); };
  }
  // Waits (at most kWait) for the merge to end. Result: its status.
  Status wait() {
    if (future.wait_for(kWait) != std::future_status::ready) {
      ADD_FAILURE() << "merge did not finish within " << kWait.count() << " s";
      throw std::runtime_error("merge timeout");
    }
    return future.get();
  }
};

// Holds whatever thread runs hook() until open() (or kWait passes), and tells the test it got there.
class Gate {
 public:
  static std::shared_ptr<Gate> make() { return std::make_shared<Gate>(); }
  static std::function<void()> hook(const std::shared_ptr<Gate>& g) {
    return [g] {
      std::unique_lock lock(g->mutex_);
      g->reached_ = true;
      g->cv_.notify_all();
      g->cv_.wait_for(lock, kWait, [&] { return g->open_; });
    };
  }
  // Result: false when nothing reached the gate within kWait.
  bool wait_reached() {
    std::unique_lock lock(mutex_);
    return cv_.wait_for(lock, kWait, [&] { return reached_; });
  }
  void open() {
    std::lock_guard lock(mutex_);
    open_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool reached_ = false;
  bool open_ = false;
};

// Runs fn on a thread and waits for it at most kWait; past that the process cannot go on safely (the thread
// still uses the test's objects), so it aborts after reporting.
inline void run_bounded(const std::function<void()>& fn, const char* what) {
  auto done = std::make_shared<std::promise<void>>();
  auto f = done->get_future();
  std::thread t([&fn, done] {
    fn();
    done->set_value();
  });
  if (f.wait_for(kWait) != std::future_status::ready) {
    std::fprintf(stderr, "FATAL: %s did not finish within %lld s\n", what,
                 static_cast<long long>(kWait.count()));
    std::abort();
  }
  t.join();
}

}  // namespace kcopyfs::test
