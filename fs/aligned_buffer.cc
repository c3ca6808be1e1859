#include "fs/aligned_buffer.h"

#include <array>
#include <bit>
#include <cstdlib>
#include <mutex>
#include <new>
#include <utility>
#include <vector>

namespace kcopyfs::fs {
namespace {

constexpr size_t kAlignment = 4096;
constexpr size_t kMinClass = 4096;
constexpr size_t kMaxClass = 1 << 20;
constexpr int kClasses = 9;           // 4 KiB .. 1 MiB
constexpr size_t kKeepPerClass = 32;  // bounds the cache at ~64 MiB in the worst case

struct Cache {
  std::mutex mutex;
  std::array<std::vector<std::byte*>, kClasses> free;
  ~Cache() {
    for (auto& list : free)
      for (std::byte* p : list) std::free(p);
  }
};

Cache& cache() {
  static Cache* instance = new Cache;  // never destroyed: buffers may be freed during static destruction
  return *instance;
}

int class_index(size_t capacity) { return std::countr_zero(capacity) - std::countr_zero(kMinClass); }

std::byte* allocate(size_t bytes) {
  void* p = std::aligned_alloc(kAlignment, (bytes + kAlignment - 1) / kAlignment * kAlignment);
  if (p == nullptr) throw std::bad_alloc();
  return static_cast<std::byte*>(p);
}

}  // namespace

AlignedBuffer::AlignedBuffer(size_t size) : size_(size) {
  if (size == 0) return;
  if (size > kMaxClass) {
    data_ = allocate(size);
    return;
  }
  capacity_ = std::max(kMinClass, std::bit_ceil(size));
  auto& c = cache();
  {
    std::lock_guard lock(c.mutex);
    auto& list = c.free[class_index(capacity_)];
    if (!list.empty()) {
      data_ = list.back();
      list.pop_back();
      return;
    }
  }
  data_ = allocate(capacity_);
}

AlignedBuffer::AlignedBuffer(AlignedBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      capacity_(std::exchange(other.capacity_, 0)) {}

AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& other) noexcept {
  if (this != &other) {
    release();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    capacity_ = std::exchange(other.capacity_, 0);
  }
  return *this;
}

AlignedBuffer::~AlignedBuffer() { release(); }

void AlignedBuffer::release() {
  if (data_ == nullptr) return;
  if (capacity_ != 0) {
    auto& c = cache();
    std::lock_guard lock(c.mutex);
    auto& list = c.free[class_index(capacity_)];
    if (list.size() < kKeepPerClass) {
      list.push_back(std::exchange(data_, nullptr));
      return;
    }
  }
  std::free(std::exchange(data_, nullptr));
}

}  // namespace kcopyfs::fs
