// MemoryDevice: a BlockDevice over a byte vector, for the fuzz targets. The data is copied when a call is
// made; its completion runs on the one shared completion thread, never inside the call, as the contract of
// engine/block_device.h asks.
#pragma once

#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "engine/block_device.h"

namespace kcopyfs::fuzz {

// One thread that runs completions in order, for the life of the process.
class CompletionThread {
 public:
  static CompletionThread& get() {
    static CompletionThread* instance = new CompletionThread();  // never destroyed: the thread runs to exit
    return *instance;
  }
  void post(std::function<void()> fn) {
    {
      std::lock_guard lock(mutex_);
      queue_.push_back(std::move(fn));
    }
    wake_.notify_one();
  }

 private:
  CompletionThread() {
    std::thread([this] { run(); }).detach();
  }
  void run() {
    for (;;) {
      std::function<void()> fn;
      {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [this] { return !queue_.empty(); });
        fn = std::move(queue_.front());
        queue_.pop_front();
      }
      fn();
    }
  }
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> queue_;
};

class MemoryDevice final : public BlockDevice {
 public:
  // data.size() must be a multiple of block_size (a multiple of 512).
  MemoryDevice(std::vector<std::byte> data, uint32_t block_size, bool read_only = false)
      : data_(std::move(data)), block_size_(block_size), read_only_(read_only) {}

  const std::string& path() const override { return path_; }
  Bytes size() const override { return Bytes(data_.size()); }
  uint32_t logical_block_size() const override { return block_size_; }
  bool read_only() const override { return read_only_; }
  const std::vector<std::byte>& data() const { return data_; }
  uint64_t writes() const {
    std::lock_guard lock(mutex_);
    return writes_;
  }

  void read(Bytes offset, std::span<std::byte> buffer, IoCallback done, FixedBuffer = {}) override {
    std::error_code ec = check(offset, Bytes(buffer.size()));
    if (!ec) {
      std::lock_guard lock(mutex_);
      std::memcpy(buffer.data(), data_.data() + offset.value(), buffer.size());
    }
    complete(std::move(done), ec);
  }
  void write(Bytes offset, std::span<const std::byte> buffer, IoCallback done, FixedBuffer = {}) override {
    std::error_code ec = check(offset, Bytes(buffer.size()));
    if (!ec && read_only_) ec = std::make_error_code(std::errc::read_only_file_system);
    if (!ec) {
      std::lock_guard lock(mutex_);
      std::memcpy(data_.data() + offset.value(), buffer.data(), buffer.size());
      ++writes_;
    }
    complete(std::move(done), ec);
  }
  void flush(IoCallback done) override { complete(std::move(done), {}); }
  void write_zeroes(Bytes offset, Bytes length, bool, IoCallback done) override {
    std::error_code ec = check(offset, length);
    if (!ec && read_only_) ec = std::make_error_code(std::errc::read_only_file_system);
    if (!ec) {
      std::lock_guard lock(mutex_);
      std::memset(data_.data() + offset.value(), 0, length.value());
      ++writes_;
    }
    complete(std::move(done), ec);
  }

 private:
  // An I/O outside the device or not aligned to the block size is a bug of the caller: the fuzzer stops.
  std::error_code check(Bytes offset, Bytes length) const {
    if (offset.value() % block_size_ != 0 || length.value() % block_size_ != 0 ||
        offset.value() > data_.size() || length.value() > data_.size() - offset.value())
      __builtin_trap();
    return {};
  }
  static void complete(IoCallback done, std::error_code ec) {
    CompletionThread::get().post([done = std::move(done), ec] { done(ec); });
  }

  const std::string path_ = "/fuzz/memory";
  std::vector<std::byte> data_;
  const uint32_t block_size_;
  const bool read_only_;
  mutable std::mutex mutex_;
  uint64_t writes_ = 0;
};

}  // namespace kcopyfs::fuzz
