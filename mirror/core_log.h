// CoreLog: the kernel's "core" dirty log (kernel-dm-notes.md §5.2): the region bitsets in memory only. Every
// region starts clean; in sync for nosync, out of sync otherwise (force_sync starts the same as by_log, since
// there is nothing stored to trust), so without nosync every start resyncs the whole mirror. flush() has
// nothing to make durable and calls back at once (still asynchronously, as the DirtyLog contract asks).
#pragma once

#include <memory>
#include <string>

#include "engine/io_ring.h"
#include "engine/result.h"
#include "mirror/region_bits.h"

namespace kcopyfs {

class CoreLog final : public BitsetLog {
 public:
  // Result: the log, or an error for a region size that breaks the kernel's rules (region.h) or when no
  // io_uring is available to complete flushes on.
  static Result<std::unique_ptr<CoreLog>> create(Sector region_size, Sector mirror_size, SyncMode mode);

  void flush(std::function<void(bool ok)> done) override;
  // "1 core".
  std::string status_info() const override;
  // "core 1 <region_size> ", or "core 2 <region_size> <sync|nosync> ".
  std::string status_table() const override;
  char health() const override { return 'A'; }

 private:
  CoreLog(const RegionGeometry& geometry, SyncMode mode, IoRing& ring)
      : BitsetLog(geometry, mode), ring_(ring) {}

  IoRing& ring_;  // completes flushes; the process-wide ring, which outlives every log
};

}  // namespace kcopyfs
