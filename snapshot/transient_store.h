// TransientStore: the kernel's transient exception store ("N", kernel-dm-notes.md §2.8). Exceptions live only
// in memory; COW chunk 0 holds data (no header, no metadata); commits complete at once (asynchronously); the
// store cannot merge. Thread-safe.
#pragma once

#include <memory>
#include <mutex>

#include "engine/block_device.h"
#include "engine/result.h"
#include "snapshot/exception_store.h"

namespace kcopyfs {

class TransientStore final : public ExceptionStore {
 public:
  // cow must outlive the store. Refuses a chunk size that breaks the rules (chunk.h).
  static Result<std::unique_ptr<TransientStore>> create(BlockDevice& cow, Sector chunk_size);

  Sector chunk_size() const override { return chunk_size_; }
  char type_letter() const override { return 'N'; }
  bool valid() const override;
  std::optional<ChunkIndex> prepare_exception() override;
  void commit_exception(const Exception& e, bool copy_ok, std::function<void(bool valid)> done) override;
  void invalidate(std::function<void(bool ok)> done) override;
  StoreUsage usage() const override;
  int prepare_merge(Exception& last) override;
  void commit_merge(unsigned n, std::function<void(bool ok)> done) override;

 private:
  TransientStore(BlockDevice& cow, Sector chunk_size) : cow_(cow), chunk_size_(chunk_size) {}

  BlockDevice& cow_;
  const Sector chunk_size_;
  mutable std::mutex mutex_;
  Sector next_free_;   // guarded by mutex_; in sectors, as the kernel keeps it
  bool valid_ = true;  // guarded by mutex_
};

}  // namespace kcopyfs
