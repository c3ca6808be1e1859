// Fuzzes the disk-log loader (mirror/disk_log.h): DiskLog::open over a memory device. A log that opens was
// written back in the current format, so opening it again (by_log) must find exactly that and write the same
// bytes; a region marked dirty and flushed must come back dirty.
//
// Input: [flags][region_shift][mirror_sectors LE32][extra][log image...]. flags bit 0: 4096-byte logical
// blocks (else 512); bits 1-2: sync mode (0 by_log, 1 nosync, 2 force_sync, 3 by_log). region_size is
// 2^(region_shift % 40) sectors. The image is zero-padded to whole blocks, plus extra * 4 KiB of zeros.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <memory>
#include <vector>

#include "mirror/disk_log.h"
#include "tests/fuzz/fuzz_input.h"
#include "tests/fuzz/memory_device.h"

using kcopyfs::DiskLog;
using kcopyfs::RegionIndex;
using kcopyfs::Sector;
using kcopyfs::SyncMode;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kcopyfs::fuzz::Input in(data, size);
  const uint8_t flags = in.byte();
  const Sector region_size(uint64_t{1} << (in.byte() % 40));
  const Sector mirror_size(in.le32());
  const size_t extra = size_t{in.byte()} * 4096;
  const uint32_t block = (flags & 1) ? 4096 : 512;
  const unsigned mode_bits = (flags >> 1) & 3;
  const SyncMode mode = mode_bits == 1   ? SyncMode::nosync
                        : mode_bits == 2 ? SyncMode::force_sync
                                         : SyncMode::by_log;
  kcopyfs::fuzz::MemoryDevice dev(in.image(block, extra), block);
  if (dev.size().value() == 0) return 0;

  const std::vector<std::byte> before = dev.data();
  auto log = DiskLog::open(dev, region_size, mirror_size, mode, {});
  static const bool verbose = std::getenv("KCOPYFS_FUZZ_VERBOSE") != nullptr;  // say what the input did
  if (verbose) {
    if (log)
      std::fprintf(stderr, "open: %llu regions, %s\n",
                   static_cast<unsigned long long>(log.value()->region_count()),
                   log.value()->status_info().c_str());
    else
      std::fprintf(stderr, "open: %s\n", log.error().message().c_str());
  }
  if (!log) {
    // Refused: nothing written.
    if (dev.writes() != 0 || dev.data() != before) __builtin_trap();
    return 0;
  }
  if (log.value()->health() != 'A') __builtin_trap();  // a memory device never fails
  (void)log.value()->status_info();
  (void)log.value()->status_table();
  const uint64_t regions = log.value()->region_count();
  if (regions == 0) __builtin_trap();
  log.value().reset();

  // Opening the written-back log again finds it as written and writes the same bytes.
  const std::vector<std::byte> written = dev.data();
  auto again = DiskLog::open(dev, region_size, mirror_size, SyncMode::by_log, {});
  if (!again) __builtin_trap();
  if (dev.data() != written) __builtin_trap();

  // A dirtied region stays dirty across a flush and a reopen.
  const RegionIndex last(regions - 1);
  again.value()->mark_region(last);
  std::promise<bool> flushed;
  again.value()->flush([&](bool ok) { flushed.set_value(ok); });
  if (!flushed.get_future().get()) __builtin_trap();
  again.value().reset();
  auto third = DiskLog::open(dev, region_size, mirror_size, SyncMode::by_log, {});
  if (!third) __builtin_trap();
  if (third.value()->is_clean(last)) __builtin_trap();
  return 0;
}
