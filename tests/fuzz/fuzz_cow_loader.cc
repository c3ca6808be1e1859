// Fuzzes the persistent COW loader (snapshot/persistent_store.h): read_header and open over a memory
// device, then, for a store that loads, one commit and a reload that must find every exception again.
//
// Input: [flags][extra][origin_sectors LE32][COW image...]. flags bit 0: 4096-byte logical blocks (else
// 512). The image is zero-padded to whole blocks, then extra * 4 KiB of zeros are appended.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <memory>
#include <set>
#include <utility>
#include <vector>

#include "snapshot/persistent_store.h"
#include "tests/fuzz/fuzz_input.h"
#include "tests/fuzz/memory_device.h"

namespace {

using kcopyfs::ChunkIndex;
using kcopyfs::Exception;
using kcopyfs::PersistentStore;
using kcopyfs::Sector;

struct Loaded {
  std::unique_ptr<PersistentStore> store;
  std::vector<Exception> exceptions;
};

// KCOPYFS_FUZZ_VERBOSE=1: say what each input did (for reading a seed or a reproducer).
const bool verbose = std::getenv("KCOPYFS_FUZZ_VERBOSE") != nullptr;

Loaded load(kcopyfs::BlockDevice& cow, Sector origin_size) {
  Loaded out;
  auto store =
      PersistentStore::open(cow, origin_size, [&](const Exception& e) { out.exceptions.push_back(e); });
  if (store) out.store = std::move(store).value();
  if (verbose) {
    if (store)
      std::fprintf(stderr, "open: %s, %zu exceptions\n", out.store->valid() ? "valid" : "invalid",
                   out.exceptions.size());
    else
      std::fprintf(stderr, "open: %s\n", store.error().message().c_str());
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kcopyfs::fuzz::Input in(data, size);
  const uint8_t flags = in.byte();
  const size_t extra = size_t{in.byte()} * 4096;
  const Sector origin_size(in.le32());
  const uint32_t block = (flags & 1) ? 4096 : 512;
  kcopyfs::fuzz::MemoryDevice cow(in.image(block, extra), block);
  if (cow.size().value() == 0) return 0;

  (void)PersistentStore::read_header(cow);
  const std::vector<std::byte> before = cow.data();
  Loaded first = load(cow, origin_size);
  // A store loads without writing anything, and a refused one leaves the device as it was.
  if (cow.writes() != 0 || cow.data() != before) __builtin_trap();
  if (!first.store || !first.store->valid()) return 0;

  // The loaded state must be one the store can go on from: commit one more exception and reload.
  const uint64_t chunk_bytes = first.store->chunk_size().value() * 512;
  const uint64_t origin_chunks = (origin_size.value() * 512 + chunk_bytes - 1) / chunk_bytes;
  std::set<uint64_t> used;
  for (const Exception& e : first.exceptions) used.insert(e.old_chunk.value());
  uint64_t old_chunk = 0;
  while (used.count(old_chunk) != 0) ++old_chunk;
  if (old_chunk >= origin_chunks) return 0;
  const std::optional<ChunkIndex> new_chunk = first.store->prepare_exception();
  if (!new_chunk) return 0;
  std::promise<bool> committed;
  first.store->commit_exception(Exception{ChunkIndex(old_chunk), *new_chunk}, true,
                                [&](bool valid) { committed.set_value(valid); });
  const bool valid = committed.get_future().get();
  first.store.reset();
  if (!valid) return 0;  // e.g. the last area filled and the next one lies beyond the device

  Loaded second = load(cow, origin_size);
  if (!second.store) __builtin_trap();  // a store that committed must load again
  if (second.exceptions.size() != first.exceptions.size() + 1) __builtin_trap();
  const Exception& last = second.exceptions.back();
  if (last.old_chunk.value() != old_chunk || last.new_chunk != *new_chunk) __builtin_trap();
  return 0;
}
