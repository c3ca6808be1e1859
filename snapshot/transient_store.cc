#include "snapshot/transient_store.h"

#include <cerrno>
#include <thread>

#include "engine/io_ring.h"

namespace kcopyfs {

namespace {

// Completes a callback on an I/O completion thread, never inside the call (the ExceptionStore contract).
void call_later(std::function<void()> fn) {
  auto ring = IoRing::shared();
  if (ring) {
    ring.value()->defer(std::move(fn));
    return;
  }
  // Unreachable in practice: a FileDevice cannot exist without the shared ring.
  std::thread(std::move(fn)).detach();
}

}  // namespace

Result<std::unique_ptr<TransientStore>> TransientStore::create(BlockDevice& cow, Sector chunk_size) {
  const uint32_t block = cow.logical_block_size();
  const std::string rule = check_chunk_size(chunk_size, block, block);
  if (!rule.empty()) return Error::invalid("COW " + cow.path() + ": " + rule);
  return std::unique_ptr<TransientStore>(new TransientStore(cow, chunk_size));
}

bool TransientStore::valid() const {
  std::lock_guard lock(mutex_);
  return valid_;
}

std::optional<ChunkIndex> TransientStore::prepare_exception() {
  std::lock_guard lock(mutex_);
  if (cow_.size_in_sectors() < next_free_ + chunk_size_) return std::nullopt;
  const ChunkIndex chunk = ChunkGeometry(chunk_size_).chunk_of(next_free_);
  next_free_ += chunk_size_;
  return chunk;
}

void TransientStore::commit_exception(const Exception&, bool copy_ok, std::function<void(bool valid)> done) {
  bool valid = false;
  {
    std::lock_guard lock(mutex_);
    if (!copy_ok) valid_ = false;
    valid = valid_;
  }
  call_later([valid, done = std::move(done)] { done(valid); });
}

void TransientStore::invalidate(std::function<void(bool ok)> done) {
  {
    std::lock_guard lock(mutex_);
    valid_ = false;
  }
  call_later([done = std::move(done)] { done(true); });
}

StoreUsage TransientStore::usage() const {
  std::lock_guard lock(mutex_);
  return StoreUsage{next_free_, cow_.size_in_sectors(), Sector(0)};
}

int TransientStore::prepare_merge(Exception&) { return -EOPNOTSUPP; }

void TransientStore::commit_merge(unsigned, std::function<void(bool ok)> done) {
  call_later([done = std::move(done)] { done(false); });
}

}  // namespace kcopyfs
