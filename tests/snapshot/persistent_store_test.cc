// PersistentStore: creation, the bytes it puts on disk, commits (group commit, durability order, area
// filling), allocation limits, invalidation, usage and merge (kernel-dm-notes.md §3). Layout expectations are
// computed here from the specification, independently of persistent_format.h where it matters.
#include <gtest/gtest.h>

#include <thread>

#include "tests/snapshot/store_test_util.h"

namespace kcopyfs::test {
namespace {

constexpr uint64_t kChunkBytes = 4096;
constexpr Sector kChunk = Sector(8);
// Origin size given to reloads: large enough for every old chunk these tests use.
constexpr Sector kOrigin = Sector(1ull << 30);

std::unique_ptr<PersistentStore> create_store(BlockDevice& dev, Sector chunk = kChunk) {
  auto s = PersistentStore::create(dev, chunk);
  if (!s) throw std::runtime_error(s.error().message());
  return std::move(s).value();
}

Loaded reload(CowImage& cow, Sector origin = kOrigin) {
  cow.reopen();
  auto r = load(cow.dev(), origin);
  if (!r) throw std::runtime_error(r.error().message());
  return std::move(r).value();
}

// Prepares and commits one exception per old chunk, waiting for each. Result: the COW chunks, in order.
std::vector<ChunkIndex> commit_olds(PersistentStore& s, const std::vector<uint64_t>& olds) {
  std::vector<ChunkIndex> out;
  for (uint64_t old : olds) {
    auto c = s.prepare_exception();
    if (!c) throw std::runtime_error("store full");
    EXPECT_TRUE(commit_sync(s, old, *c));
    out.push_back(*c);
  }
  return out;
}

std::vector<uint64_t> iota_olds(uint64_t first, uint64_t n) {
  std::vector<uint64_t> v(n);
  for (uint64_t i = 0; i < n; ++i) v[i] = first + i;
  return v;
}

bool all_zero(const std::vector<std::byte>& b) {
  return std::all_of(b.begin(), b.end(), [](std::byte x) { return x == std::byte{0}; });
}

TEST(PersistentStoreCreate, WritesTheExactHeaderAndZeroesArea0) {
  TempDir dir;
  const std::string path = dir.file("cow.img");
  write_pattern_file(path, 1 << 20, 7);  // a used device: create must not rely on zeros
  CowImage cow(path);
  auto store = create_store(cow.dev());
  const auto chunk0 = read_file(path, 0, kChunkBytes);
  const std::vector<uint8_t> header = {0x53, 0x6E, 0x41, 0x70, 1, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0};
  for (size_t i = 0; i < header.size(); ++i) EXPECT_EQ(chunk0[i], std::byte{header[i]}) << "byte " << i;
  EXPECT_TRUE(all_zero({chunk0.begin() + 16, chunk0.end()})) << "the rest of chunk 0 must be zero";
  EXPECT_TRUE(all_zero(read_file(path, kChunkBytes, kChunkBytes))) << "area 0 must be zeroed";
  EXPECT_EQ(read_file(path, 2 * kChunkBytes, 512), pattern(7, 2 * kChunkBytes, 512))
      << "data chunks untouched";
  auto h = PersistentStore::read_header(cow.dev());
  ASSERT_TRUE(h.ok()) << h.error().message();
  EXPECT_TRUE(h.value().valid);
  EXPECT_EQ(h.value().chunk_size, kChunk);
  EXPECT_TRUE(store->valid());
  EXPECT_EQ(store->type_letter(), 'P');
  EXPECT_EQ(store->chunk_size(), kChunk);
}

TEST(PersistentStoreCreate, Area0IsDurableBeforeTheHeaderThatMakesItReachable) {
  TempDir dir;
  CowImage cow(dir.file("cow.img"), 1 << 20);
  auto store = create_store(cow.dev());
  using Op = FaultDevice::Op;
  std::string seen;
  for (const auto& r : cow.fault->records()) {
    if (r.op == Op::read) continue;  // looking for an existing header
    if (r.op == Op::flush) {
      seen += "F ";
    } else {
      seen += r.op == Op::write ? 'W' : '?';
      seen += std::to_string(r.start.value());
      seen += ' ';
    }
  }
  EXPECT_EQ(seen, "W8 F W0 F ");
}

TEST(PersistentStoreCreate, RefusesADeviceHoldingAHeaderAndLeavesItUntouched) {
  TempDir dir;
  CowImage cow(dir.file("cow.img"), 1 << 20);
  {
    auto store = create_store(cow.dev());
    commit_olds(*store, {5, 6});
  }
  const auto before = whole_file(cow.path);
  auto again = PersistentStore::create(cow.dev(), kChunk);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().errno_value(), EEXIST);
  EXPECT_NE(again.error().message().find("use attach"), std::string::npos) << again.error().message();
  EXPECT_NE(again.error().message().find(cow.path), std::string::npos);
  // An invalidated store is still a store.
  write_file(cow.path, 4, le32_bytes(0));
  auto invalid = PersistentStore::create(cow.dev(), Sector(16));
  ASSERT_FALSE(invalid.ok());
  EXPECT_EQ(invalid.error().errno_value(), EEXIST);
  write_file(cow.path, 4, le32_bytes(1));
  EXPECT_EQ(whole_file(cow.path), before);
}

TEST(PersistentStoreCreate, RefusesATooSmallDeviceNamingTheSizes) {
  TempDir dir;
  CowImage small(dir.file("small.img"), 2 * kChunkBytes);
  auto r = PersistentStore::create(small.dev(), kChunk);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("8192 bytes"), std::string::npos) << r.error().message();
  EXPECT_NE(r.error().message().find("12288 bytes"), std::string::npos) << r.error().message();
  EXPECT_TRUE(all_zero(whole_file(small.path)));
  CowImage enough(dir.file("enough.img"), 3 * kChunkBytes);
  EXPECT_TRUE(PersistentStore::create(enough.dev(), kChunk).ok());
}

TEST(PersistentStoreCreate, RefusesABadChunkSize) {
  TempDir dir;
  CowImage cow(dir.file("cow.img"), 1 << 20);
  auto r = PersistentStore::create(cow.dev(), Sector(12));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("not a power of 2"), std::string::npos) << r.error().message();
  EXPECT_TRUE(all_zero(whole_file(cow.path)));
}

TEST(PersistentStoreLayout, AreasInterleaveWithDataFor4KChunks) {
  TempDir dir;
  CowImage cow(dir.file("cow.img"), 512 * kChunkBytes);
  auto store = create_store(cow.dev());
  const auto chunks = commit_olds(*store, iota_olds(5000, 257));
  for (uint64_t i = 0; i < 256; ++i) ASSERT_EQ(chunks[i], ChunkIndex(2 + i));
  EXPECT_EQ(chunks[256], ChunkIndex(259)) << "chunk 258 holds area 1";
  const auto area0 = read_file(cow.path, 1 * kChunkBytes, kChunkBytes);
  for (uint64_t i = 0; i < 256; ++i) {
    ASSERT_EQ(raw_le64(area0, i * 16), 5000 + i);
    ASSERT_EQ(raw_le64(area0, i * 16 + 8), 2 + i);
  }
  const auto area1 = read_file(cow.path, 258 * kChunkBytes, kChunkBytes);
  EXPECT_EQ(raw_le64(area1, 0), 5256u);
  EXPECT_EQ(raw_le64(area1, 8), 259u);
  EXPECT_TRUE(all_zero({area1.begin() + 16, area1.end()}));
}

TEST(PersistentStoreLayout, AreasInterleaveWithDataFor8KChunks) {
  constexpr uint64_t kBytes = 8192;
  TempDir dir;
  CowImage cow(dir.file("cow.img"), 1100 * kBytes);
  auto store = create_store(cow.dev(), Sector(16));
  EXPECT_EQ(raw_le32(read_file(cow.path, 0, 16), 12), 16u);
  const auto chunks = commit_olds(*store, iota_olds(70, 513));
  EXPECT_EQ(chunks[0], ChunkIndex(2));
  EXPECT_EQ(chunks[511], ChunkIndex(513));
  EXPECT_EQ(chunks[512], ChunkIndex(515)) << "stride 513: chunk 514 holds area 1";
  const auto area0 = read_file(cow.path, 1 * kBytes, kBytes);
  EXPECT_EQ(raw_le64(area0, 0), 70u);
  EXPECT_EQ(raw_le64(area0, 8), 2u);
  EXPECT_EQ(raw_le64(area0, 511 * 16), 70u + 511);
  EXPECT_EQ(raw_le64(area0, 511 * 16 + 8), 513u);
  const auto area1 = read_file(cow.path, 514 * kBytes, kBytes);
  EXPECT_EQ(raw_le64(area1, 0), 70u + 512);
  EXPECT_EQ(raw_le64(area1, 8), 515u);
  EXPECT_EQ(raw_le64(area1, 24), 0u);
}

TEST(PersistentStoreLayout, RecordsAreLittleEndianOldThenNew) {
  TempDir dir;
  CowImage cow(dir.file("cow.img"), 1 << 20);
  auto store = create_store(cow.dev());
  auto c = store->prepare_exception();
  ASSERT_TRUE(c);
  ASSERT_TRUE(commit_sync(*store, 0x0102030405060708ull, *c));
  const auto rec = read_file(cow.path, kChunkBytes, 32);
  const std::vector<uint8_t> expected = {8, 7, 6, 5, 4, 3, 2, 1, 2, 0, 0, 0, 0, 0, 0, 0};
  for (size_t i = 0; i < expected.size(); ++i) EXPECT_EQ(rec[i], std::byte{expected[i]}) << "byte " << i;
  EXPECT_TRUE(all_zero({rec.begin() + 16, rec.end()})) << "the terminator follows";
}

TEST(PersistentStoreCommit, FillingAnAreaZeroesTheNextAreaOnDisk) {
  TempDir dir;
  CowImage cow(dir.file("cow.img"), 600 * kChunkBytes);
  auto store = create_store(cow.dev());
  // Leftovers at area 1's location, as on a reused device.
  write_file(cow.path, 258 * kChunkBytes, pattern(3, 0, kChunkBytes));
  commit_olds(*store, iota_olds(0, 255));
  EXPECT_EQ(read_file(cow.path, 258 * kChunkBytes, kChunkBytes), pattern(3, 0, kChunkBytes));
  commit_olds(*store, {255});
  EXPECT_TRUE(all_zero(read_file(cow.path, 258 * kChunkBytes, kChunkBytes)));
  store.reset();
  auto loaded = reload(cow);
  EXPECT_EQ(loaded.exceptions.size(), 256u);
  EXPECT_EQ(loaded.store->prepare_exception(), ChunkIndex(259));
}

TEST(PersistentStoreCommit, ReloadGivesTheSameExceptionsInOrderAndTheSameUsage) {
  TempDir dir;
  CowImage cow(dir.file("cow.img"), 1024 * kChunkBytes);
  auto store = create_store(cow.dev());
  std::vector<uint64_t> olds;
  for (uint64_t i = 0; i < 600; ++i) olds.push_back((i * 7919) % 100003);
  const auto chunks = commit_olds(*store, olds);
  const StoreUsage before = store->usage();
  store.reset();
  auto loaded = reload(cow);
  ASSERT_EQ(loaded.exceptions.size(), olds.size());
  for (size_t i = 0; i < olds.size(); ++i) {
    ASSERT_EQ(loaded.exceptions[i].old_chunk, ChunkIndex(olds[i])) << i;
    ASSERT_EQ(loaded.exceptions[i].new_chunk, chunks[i]) << i;
  }
  const StoreUsage after = loaded.store->usage();
  EXPECT_EQ(after.allocated, before.allocated);
  EXPECT_EQ(after.total, before.total);
  EXPECT_EQ(after.metadata, before.metadata);
  EXPECT_TRUE(loaded.store->valid());
  // Allocation continues after the last chunk, and commits append after the last record.
  auto next = loaded.store->prepare_exception();
  EXPECT_EQ(next, ChunkIndex(chunks.back().value() + 1));
  ASSERT_TRUE(commit_sync(*loaded.store, 999999, *next));
  loaded.store.reset();
  auto again = reload(cow);
  ASSERT_EQ(again.exceptions.size(), olds.size() + 1);
  EXPECT_EQ(again.exceptions.back().old_chunk, ChunkIndex(999999));
}

TEST(PersistentStoreCommit, GroupCommitWritesFewAreasForManyConcurrentCommits) {
  constexpr size_t kCommits = 1000;
  TempDir dir;
  CowImage cow(dir.file("cow.img"), 2048 * kChunkBytes);
  auto store = create_store(cow.dev());
  cow.fault->set_latency(FaultDevice::Op::write, std::chrono::milliseconds(2));
  std::vector<ChunkIndex> chunks;
  for (size_t i = 0; i < kCommits; ++i) chunks.push_back(*store->prepare_exception());
  CallbackLedger ledger(kCommits);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (size_t i = t; i < kCommits; i += 4)
        store->commit_exception(Exception{ChunkIndex(100000 + i), chunks[i]}, true, ledger.slot(i));
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_TRUE(ledger.wait_all());
  for (size_t i = 0; i < kCommits; ++i) {
    EXPECT_EQ(ledger.calls(i), 1) << i;
    EXPECT_TRUE(ledger.value(i)) << i;
  }
  const uint64_t writes = store->area_writes();
  std::printf("group commit: %zu commits, %llu area writes\n", kCommits,
              static_cast<unsigned long long>(writes));
  EXPECT_LT(writes, 50u);
  store.reset();
  auto loaded = reload(cow);
  ASSERT_EQ(loaded.exceptions.size(), kCommits);
  std::vector<bool> seen(kCommits, false);
  for (const Exception& e : loaded.exceptions) {
    const uint64_t i = e.old_chunk.value() - 100000;
    ASSERT_LT(i, kCommits);
    EXPECT_FALSE(seen[i]);
    seen[i] = true;
    EXPECT_EQ(e.new_chunk, chunks[i]);
  }
}

TEST(PersistentStoreCommit, EachBatchIsFlushAreaWriteFlushUnlessCoveredAndTheNextAreaIsZeroedFirst) {
  TempDir dir;
  CowImage cow(dir.file("cow.img"), 600 * kChunkBytes);
  auto store = create_store(cow.dev());
  cow.fault->clear_records();
  cow.fault->set_latency(FaultDevice::Op::write, std::chrono::milliseconds(1));
  constexpr size_t kCommits = 300;
  CallbackLedger ledger(kCommits);
  for (size_t i = 0; i < kCommits; ++i)
    store->commit_exception(Exception{ChunkIndex(i), *store->prepare_exception()}, true, ledger.slot(i));
  ASSERT_TRUE(ledger.wait_all());

  using Op = FaultDevice::Op;
  const auto records = cow.fault->records();
  const Sector area0 = Sector(1 * 8), area1 = Sector(258 * 8);
  // Expected, as one string: F = flush, 0/1 = a write of area 0/1, Z = the zeroing write of area 1.
  std::string seen;
  bool zeroed = false;
  for (const auto& r : records) {
    ASSERT_EQ(r.error, 0);
    if (r.op == Op::flush) {
      seen += 'F';
    } else if (r.op == Op::write && r.start == area0) {
      seen += '0';
    } else if (r.op == Op::write && r.start == area1) {
      seen += zeroed ? '1' : 'Z';
      zeroed = true;
    } else {
      ADD_FAILURE() << "unexpected operation at sector " << r.start.value();
    }
  }
  // Batches of area 0 while it fills; once full, area 1 zeroed before area 0's last write; then area 1's
  // batches. The first batch has a flush before its area write; a later partial batch may not (its commits
  // arrived before the previous batch's last flush was issued), a full one always has.
  size_t at = 0;
  auto take = [&](const std::string& batch) {
    if (seen.compare(at, batch.size(), batch) != 0) return false;
    at += batch.size();
    return true;
  };
  int area0_batches = 0, area1_batches = 0;
  EXPECT_TRUE(take("F0F")) << seen;
  while (take("F0F") || take("0F")) ++area0_batches;
  EXPECT_TRUE(take("ZF0F")) << seen;
  while (take("F1F") || take("1F")) ++area1_batches;
  EXPECT_GE(area1_batches, 1) << seen;
  EXPECT_EQ(at, seen.size()) << seen;
  EXPECT_LT(seen.size(), 3 * kCommits / 10) << "commits were batched: " << seen;
  EXPECT_EQ(store->area_writes(), static_cast<uint64_t>(std::count(seen.begin(), seen.end(), '0') +
                                                        std::count(seen.begin(), seen.end(), '1')));
}

// Holds the thread issuing an operation (a FaultDevice hook) until the test opens it.
class Hold {
 public:
  std::function<void()> hook() {
    return [this] {
      std::unique_lock lock(mutex_);
      reached_ = true;
      cv_.notify_all();
      cv_.wait_for(lock, kStoreTimeout, [this] { return open_; });
    };
  }
  bool wait_reached() {
    std::unique_lock lock(mutex_);
    return cv_.wait_for(lock, kStoreTimeout, [this] { return reached_; });
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

// A batch whose commits all arrived before the previous batch's last flush was issued skips its own flush
// before the area write: that flush made their data durable. A commit that arrived after it was issued stays
// out of the area written (its slot still zero on disk) and waits for a later batch.
TEST(PersistentStoreCommit, CommitsCoveredByAnEarlierFlushSkipThePreFlushAndTheOthersWait) {
  Hold write1, write2, flush3;  // outlive the device whose rules call them
  std::vector<std::byte> area_at_flush4;
  TempDir dir;
  CowImage cow(dir.file("cow.img"), 64 * kChunkBytes);
  auto store = create_store(cow.dev());
  cow.fault->clear_records();
  using Op = FaultDevice::Op;
  const Sector area0 = Sector(8);
  cow.fault->add_rule({Op::write, area0, Sector(8), 0, {}, 1, write1.hook()});
  cow.fault->add_rule({Op::write, area0, Sector(8), 0, {}, 1, write2.hook()});
  cow.fault->add_rule({Op::flush, Sector(0), Sector(0), 0, {}, 2});
  cow.fault->add_rule({Op::flush, Sector(0), Sector(0), 0, {}, 1, flush3.hook()});
  cow.fault->add_rule({Op::flush, Sector(0), Sector(0), 0, {}, 1, [&] {
                         area_at_flush4 = read_file(cow.path, kChunkBytes, kChunkBytes);
                       }});
  // Commits A, B, C, E, D (old chunks 10..14), in allocation order.
  std::vector<ChunkIndex> chunks;
  for (int i = 0; i < 5; ++i) chunks.push_back(*store->prepare_exception());
  CallbackLedger ledger(5);
  auto commit = [&](size_t i) {
    store->commit_exception(Exception{ChunkIndex(10 + i), chunks[i]}, true, ledger.slot(i));
  };
  commit(0);  // A, on an idle store: flush, then its area write, held
  ASSERT_TRUE(write1.wait_reached());
  commit(1);  // B and C arrive before A's last flush is issued
  commit(2);
  write1.open();
  ASSERT_TRUE(write2.wait_reached());  // B and C's area write, with no flush before it
  commit(3);                           // E arrives during that write: the flush after it covers E
  write2.open();
  ASSERT_TRUE(flush3.wait_reached());  // B and C's last flush, issued
  commit(4);                           // D arrives after it: not covered
  flush3.open();
  ASSERT_TRUE(ledger.wait_all());
  for (size_t i = 0; i < 5; ++i) EXPECT_TRUE(ledger.value(i)) << i;

  std::string seen;
  for (const auto& r : cow.fault->records()) {
    ASSERT_EQ(r.error, 0);
    ASSERT_TRUE(r.op == Op::flush || (r.op == Op::write && r.start == area0)) << r.start.value();
    seen += r.op == Op::flush ? 'F' : '0';
  }
  // A: F0F. B+C: 0F. E alone (D left out): 0F. D, covered by E's flush: 0F.
  EXPECT_EQ(seen, "F0F0F0F0F");
  EXPECT_EQ(store->area_writes(), 4u);
  // What E's batch wrote: A, B, C, E, and D's slot still zero.
  ASSERT_EQ(area_at_flush4.size(), kChunkBytes);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(raw_le64(area_at_flush4, i * 16), 10 + i) << i;
    EXPECT_EQ(raw_le64(area_at_flush4, i * 16 + 8), chunks[i].value()) << i;
  }
  EXPECT_TRUE(all_zero(std::vector<std::byte>(area_at_flush4.begin() + 4 * 16, area_at_flush4.end())));
  store.reset();
  auto loaded = reload(cow);
  ASSERT_EQ(loaded.exceptions.size(), 5u);
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(loaded.exceptions[i].old_chunk, ChunkIndex(10 + i));
    EXPECT_EQ(loaded.exceptions[i].new_chunk, chunks[i]);
  }
}

TEST(PersistentStoreCommit, AWriteFailureInvalidatesTheStore) {
  TempDir dir;
  CowImage cow(dir.file("cow.img"), 1 << 20);
  auto store = create_store(cow.dev());
  commit_olds(*store, {1});
  cow.fault->fail_writes(Sector(8), Sector(8));  // area 0
  auto c = store->prepare_exception();
  EXPECT_FALSE(commit_sync(*store, 2, *c));
  EXPECT_FALSE(store->valid());
  EXPECT_FALSE(commit_sync(*store, 3, *store->prepare_exception()));
  // The header is dm-snap's to rewrite (through invalidate), not the commit path's.
  EXPECT_EQ(raw_le32(read_file(cow.path, 0, 16), 4), 1u);
}

TEST(PersistentStoreCommit, AFlushFailureInvalidatesTheStore) {
  TempDir dir;
  CowImage cow(dir.file("cow.img"), 1 << 20);
  auto store = create_store(cow.dev());
  cow.fault->fail_flushes();
  EXPECT_FALSE(commit_sync(*store, 1, *store->prepare_exception()));
  EXPECT_FALSE(store->valid());
}

TEST(PersistentStoreCommit, AFailedCopyInvalidatesWithoutWriting) {
  TempDir dir;
  CowImage cow(dir.file("cow.img"), 1 << 20);
  auto store = create_store(cow.dev());
  EXPECT_FALSE(commit_sync(*store, 1, *store->prepare_exception(), /*copy_ok=*/false));
  EXPECT_FALSE(store->valid());
  EXPECT_EQ(store->area_writes(), 0u);
}

TEST(PersistentStoreAllocation, FullWhenTheNextChunkDoesNotFit) {
  constexpr uint64_t kData = 10;
  TempDir dir;
  // Header, area 0, kData data chunks and a partial chunk that can never be used.
  CowImage cow(dir.file("cow.img"), (2 + kData) * kChunkBytes + 2048);
  auto store = create_store(cow.dev());
  for (uint64_t i = 0; i < kData; ++i) EXPECT_EQ(store->prepare_exception(), ChunkIndex(2 + i));
  EXPECT_EQ(store->prepare_exception(), std::nullopt);
  EXPECT_EQ(store->prepare_exception(), std::nullopt);
  EXPECT_TRUE(store->valid());
  EXPECT_EQ(store->usage().allocated, Sector((2 + kData) * 8));
}

TEST(PersistentStoreAllocation, AFullLastAreaWithNoRoomForTheNextOneInvalidatesAsInTheKernel) {
  TempDir dir;
  // Exactly header + area 0 + its 256 data chunks: area 1 would lie at chunk 258, past the end.
  CowImage cow(dir.file("cow.img"), 258 * kChunkBytes);
  auto store = create_store(cow.dev());
  std::vector<ChunkIndex> chunks;
  for (int i = 0; i < 256; ++i) chunks.push_back(*store->prepare_exception());
  EXPECT_EQ(chunks.back(), ChunkIndex(257));
  EXPECT_EQ(store->prepare_exception(), std::nullopt);
  for (int i = 0; i < 255; ++i) ASSERT_TRUE(commit_sync(*store, i, chunks[i]));
  EXPECT_FALSE(commit_sync(*store, 255, chunks[255]));
  EXPECT_FALSE(store->valid());
  store.reset();
  auto loaded = reload(cow);
  EXPECT_EQ(loaded.exceptions.size(), 255u) << "the full area was never written";
}

TEST(PersistentStoreInvalidate, RewritesTheHeaderWithValidZeroDurably) {
  TempDir dir;
  CowImage cow(dir.file("cow.img"), 1 << 20);
  auto store = create_store(cow.dev());
  commit_olds(*store, {1, 2, 3});
  const auto header_before = read_file(cow.path, 0, kChunkBytes);
  cow.fault->clear_records();
  EXPECT_TRUE(invalidate_sync(*store));
  const auto records = cow.fault->records();
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0].op, FaultDevice::Op::write);
  EXPECT_EQ(records[0].start, Sector(0));
  EXPECT_EQ(records[1].op, FaultDevice::Op::flush);
  auto header = read_file(cow.path, 0, kChunkBytes);
  EXPECT_EQ(raw_le32(header, 4), 0u);
  header[4] = std::byte{1};
  EXPECT_EQ(header, header_before) << "only the valid field changes";
  EXPECT_FALSE(store->valid());
  EXPECT_FALSE(commit_sync(*store, 4, *store->prepare_exception()));
  store.reset();
  auto h = PersistentStore::read_header(cow.dev());
  ASSERT_TRUE(h.ok());
  EXPECT_FALSE(h.value().valid);
  auto loaded = reload(cow);
  EXPECT_FALSE(loaded.store->valid());
  EXPECT_TRUE(loaded.exceptions.empty()) << "as the kernel, an invalid store's exceptions are not loaded";
}

TEST(PersistentStoreUsage, MatchesTheKernelFigures) {
  TempDir dir;
  CowImage cow(dir.file("cow.img"), 1000 * kChunkBytes);
  auto store = create_store(cow.dev());
  StoreUsage u = store->usage();
  EXPECT_EQ(u.allocated, Sector(16));  // header + area 0
  EXPECT_EQ(u.total, Sector(8000));
  EXPECT_EQ(u.metadata, Sector(16));
  commit_olds(*store, iota_olds(0, 256));
  u = store->usage();
  EXPECT_EQ(u.allocated, Sector(259 * 8)) << "next free is 259: 258 is area 1";
  EXPECT_EQ(u.metadata, Sector(3 * 8)) << "the current area is 1 once area 0 is full";
}

TEST(PersistentStoreMerge, TheNewestRunFirstThenDurablyCleared) {
  TempDir dir;
  CowImage cow(dir.file("cow.img"), 1 << 20);
  auto store = create_store(cow.dev());
  Exception last;
  EXPECT_EQ(store->prepare_merge(last), 0) << "an empty store has nothing to merge";
  commit_olds(*store, {10, 11, 12, 50, 51});  // new chunks 2..6
  ASSERT_EQ(store->prepare_merge(last), 2);
  EXPECT_EQ(last.old_chunk, ChunkIndex(51));
  EXPECT_EQ(last.new_chunk, ChunkIndex(6));
  cow.fault->clear_records();
  ASSERT_TRUE(commit_merge_sync(*store, 2));
  const auto records = cow.fault->records();
  ASSERT_EQ(records.size(), 3u);
  EXPECT_EQ(records[0].op, FaultDevice::Op::flush);
  EXPECT_EQ(records[1].op, FaultDevice::Op::write);
  EXPECT_EQ(records[1].start, Sector(8));
  EXPECT_EQ(records[2].op, FaultDevice::Op::flush);
  EXPECT_EQ(store->usage().allocated, Sector((1 + 3 + 1) * 8)) << "the kernel's approximate next_free";
  store.reset();
  auto loaded = reload(cow);
  ASSERT_EQ(loaded.exceptions.size(), 3u);
  EXPECT_EQ(loaded.exceptions[2].old_chunk, ChunkIndex(12));
  ASSERT_EQ(loaded.store->prepare_merge(last), 3);
  EXPECT_EQ(last.old_chunk, ChunkIndex(12));
  EXPECT_EQ(last.new_chunk, ChunkIndex(4));
  ASSERT_TRUE(commit_merge_sync(*loaded.store, 3));
  EXPECT_EQ(loaded.store->prepare_merge(last), 0);
  EXPECT_EQ(loaded.store->usage().allocated, loaded.store->usage().metadata) << "merge finished";
  loaded.store.reset();
  EXPECT_TRUE(reload(cow).exceptions.empty());
}

TEST(PersistentStoreMerge, ARunNeedsConsecutiveOldAndNewChunks) {
  TempDir dir;
  CowImage cow(dir.file("cow.img"), 1 << 20);
  auto store = create_store(cow.dev());
  // New chunks chosen by hand: (22, 5) breaks the new sequence, (42, 8) the old one.
  const std::vector<std::pair<uint64_t, uint64_t>> records = {{20, 2}, {21, 3}, {22, 5},
                                                              {23, 6}, {40, 7}, {42, 8}};
  for (auto [o, n] : records) ASSERT_TRUE(commit_sync(*store, o, ChunkIndex(n)));
  const std::vector<std::pair<uint64_t, int>> expected = {{42, 1}, {40, 1}, {23, 2}, {21, 2}};
  for (auto [old_chunk, n] : expected) {
    Exception last;
    ASSERT_EQ(store->prepare_merge(last), n) << old_chunk;
    EXPECT_EQ(last.old_chunk, ChunkIndex(old_chunk));
    ASSERT_TRUE(commit_merge_sync(*store, static_cast<unsigned>(n)));
  }
  Exception last;
  EXPECT_EQ(store->prepare_merge(last), 0);
}

TEST(PersistentStoreMerge, RunsStopAtAreaBoundariesAndWalkBackThroughAreas) {
  TempDir dir;
  CowImage cow(dir.file("cow.img"), 1024 * kChunkBytes);
  auto store = create_store(cow.dev());
  // Area 0: olds 100..199 -> 2..101, then 1100..1254 -> 102..256, then 1255 -> 300. Area 1: 1256..1258 ->
  // 301..303, which continues area 0's last record in both old and new: only the area boundary ends the run.
  uint64_t i = 0;
  for (; i < 100; ++i) ASSERT_TRUE(commit_sync(*store, 100 + i, ChunkIndex(2 + i)));
  for (; i < 255; ++i) ASSERT_TRUE(commit_sync(*store, 1000 + i, ChunkIndex(2 + i)));
  for (; i < 259; ++i) ASSERT_TRUE(commit_sync(*store, 1000 + i, ChunkIndex(300 + i - 255)));
  EXPECT_EQ(store->usage().metadata, Sector(3 * 8));

  Exception last;
  ASSERT_EQ(store->prepare_merge(last), 3);
  EXPECT_EQ(last.old_chunk, ChunkIndex(1258));
  EXPECT_EQ(last.new_chunk, ChunkIndex(303));
  ASSERT_TRUE(commit_merge_sync(*store, 3));
  store.reset();
  auto loaded = reload(cow);
  ASSERT_EQ(loaded.exceptions.size(), 256u) << "area 1 is empty on disk, area 0 intact";

  cow.fault->clear_records();
  ASSERT_EQ(loaded.store->prepare_merge(last), 1);  // steps back into area 0 (a read)
  const auto records = cow.fault->records();
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].op, FaultDevice::Op::read);
  EXPECT_EQ(records[0].start, Sector(8));
  EXPECT_EQ(last.old_chunk, ChunkIndex(1255));
  EXPECT_EQ(last.new_chunk, ChunkIndex(300));
  EXPECT_EQ(loaded.store->usage().metadata, Sector(2 * 8));
  ASSERT_TRUE(commit_merge_sync(*loaded.store, 1));
  ASSERT_EQ(loaded.store->prepare_merge(last), 155);
  EXPECT_EQ(last.old_chunk, ChunkIndex(1254));
  ASSERT_TRUE(commit_merge_sync(*loaded.store, 155));
  ASSERT_EQ(loaded.store->prepare_merge(last), 100);
  EXPECT_EQ(last.old_chunk, ChunkIndex(199));
  EXPECT_EQ(last.new_chunk, ChunkIndex(101));
  ASSERT_TRUE(commit_merge_sync(*loaded.store, 100));
  EXPECT_EQ(loaded.store->prepare_merge(last), 0);
  loaded.store.reset();
  EXPECT_TRUE(reload(cow).exceptions.empty());
}

TEST(PersistentStoreMerge, CommitMergeRefusesAnImpossibleCount) {
  TempDir dir;
  CowImage cow(dir.file("cow.img"), 1 << 20);
  auto store = create_store(cow.dev());
  commit_olds(*store, {1, 2, 3});
  EXPECT_FALSE(commit_merge_sync(*store, 0));
  EXPECT_FALSE(commit_merge_sync(*store, 4));
  EXPECT_TRUE(store->valid());
  store.reset();
  EXPECT_EQ(reload(cow).exceptions.size(), 3u);
}

}  // namespace
}  // namespace kcopyfs::test
