// Helpers shared by the exception-store suites: COW image files opened as devices (optionally behind a
// FaultDevice), waiting for store callbacks with a bounded timeout, and raw access to the on-disk layout.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <future>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/fault_device.h"
#include "engine/file_device.h"
#include "snapshot/exception_store.h"
#include "snapshot/persistent_format.h"
#include "snapshot/persistent_store.h"
#include "tests/support/test_support.h"

namespace kcopyfs::test {

// Every wait in these suites gives up (and fails the test) after this long.
inline constexpr auto kStoreTimeout = std::chrono::seconds(60);

inline std::unique_ptr<FileDevice> open_file_device(const std::string& path) {
  auto dev = FileDevice::open(path, OpenOptions{});
  if (!dev) throw std::runtime_error(dev.error().message());
  return std::move(dev).value();
}

// A COW image: the file, its device, and a FaultDevice over it for recording, delaying and failing I/O.
// Stores must be destroyed before the image (they wait for their own I/O).
struct CowImage {
  std::string path;
  std::unique_ptr<FileDevice> file;
  std::unique_ptr<FaultDevice> fault;

  // A sparse all-zero image of `size` bytes.
  CowImage(std::string p, uint64_t size) : path(std::move(p)) {
    make_sparse_file(path, size);
    reopen();
  }
  // Opens an existing image file.
  explicit CowImage(std::string p) : path(std::move(p)) { reopen(); }

  void close() {
    fault.reset();
    file.reset();
  }
  void reopen() {
    close();
    file = open_file_device(path);
    fault = std::make_unique<FaultDevice>(*file);
  }
  BlockDevice& dev() { return *fault; }
};

// Waits for a one-shot callback.
template <class T>
T wait_value(std::future<T>& f) {
  if (f.wait_for(kStoreTimeout) != std::future_status::ready) {
    ADD_FAILURE() << "callback not called within the timeout";
    throw std::runtime_error("timeout");
  }
  return f.get();
}

inline bool commit_sync(ExceptionStore& store, uint64_t old_chunk, ChunkIndex new_chunk,
                        bool copy_ok = true) {
  auto p = std::make_shared<std::promise<bool>>();
  auto f = p->get_future();
  store.commit_exception(Exception{ChunkIndex(old_chunk), new_chunk}, copy_ok,
                         [p](bool v) { p->set_value(v); });
  return wait_value(f);
}

inline bool invalidate_sync(ExceptionStore& store) {
  auto p = std::make_shared<std::promise<bool>>();
  auto f = p->get_future();
  store.invalidate([p](bool ok) { p->set_value(ok); });
  return wait_value(f);
}

inline bool commit_merge_sync(ExceptionStore& store, unsigned n) {
  auto p = std::make_shared<std::promise<bool>>();
  auto f = p->get_future();
  store.commit_merge(n, [p](bool ok) { p->set_value(ok); });
  return wait_value(f);
}

// Counts callbacks from many commits; each slot must be called exactly once.
class CallbackLedger {
 public:
  explicit CallbackLedger(size_t n) : calls_(n, 0), values_(n, false) {}
  std::function<void(bool)> slot(size_t i) {
    return [this, i](bool v) {
      std::lock_guard lock(mutex_);
      ++calls_[i];
      values_[i] = v;
      ++total_;
      cv_.notify_all();
    };
  }
  // Waits until every slot was called at least once. Result: false on timeout.
  bool wait_all() {
    std::unique_lock lock(mutex_);
    return cv_.wait_for(lock, kStoreTimeout, [this] { return total_ >= calls_.size(); });
  }
  int calls(size_t i) const {
    std::lock_guard lock(mutex_);
    return calls_[i];
  }
  bool value(size_t i) const {
    std::lock_guard lock(mutex_);
    return values_[i];
  }

 private:
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<int> calls_;
  std::vector<bool> values_;
  size_t total_ = 0;
};

// Raw layout access, by file offset, independent of the store's code.
inline uint64_t raw_le64(const std::vector<std::byte>& bytes, size_t offset) {
  return cow_format::load_le64(bytes.data() + offset);
}
inline uint32_t raw_le32(const std::vector<std::byte>& bytes, size_t offset) {
  return cow_format::load_le32(bytes.data() + offset);
}
inline std::vector<std::byte> le64_bytes(uint64_t v) {
  std::vector<std::byte> out(8);
  cow_format::store_le64(out.data(), v);
  return out;
}
inline std::vector<std::byte> le32_bytes(uint32_t v) {
  std::vector<std::byte> out(4);
  cow_format::store_le32(out.data(), v);
  return out;
}

inline std::vector<std::byte> whole_file(const std::string& path) {
  return read_file(path, 0, std::filesystem::file_size(path));
}

// Opens a store and collects its exceptions in on-disk order.
struct Loaded {
  std::unique_ptr<PersistentStore> store;
  std::vector<Exception> exceptions;
};
inline Result<Loaded> load(BlockDevice& cow, Sector origin_size) {
  Loaded out;
  auto store =
      PersistentStore::open(cow, origin_size, [&](const Exception& e) { out.exceptions.push_back(e); });
  if (!store) return store.error();
  out.store = std::move(store).value();
  return out;
}

}  // namespace kcopyfs::test
