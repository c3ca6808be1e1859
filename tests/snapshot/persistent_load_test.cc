// PersistentStore::open: every fault it must refuse (kernel-dm-notes.md §3.2-3.5), each named in the message
// and with the device left byte-for-byte unchanged; what it must accept; and how fast a large store loads.
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <numeric>
#include <random>

#include "tests/snapshot/store_test_util.h"

namespace kcopyfs::test {
namespace {

constexpr uint64_t kChunkBytes = 4096;
constexpr uint64_t kCowChunks = 512;
// 4096 origin chunks: old chunks 0..4095 are valid.
constexpr Sector kOrigin = Sector(4096 * 8);

uint64_t record_offset(uint64_t area, uint64_t record) {
  // Area i at chunk 1 + i * 257 for 4 KiB chunks (§3.3), computed here rather than through the code under
  // test.
  return (1 + area * 257) * kChunkBytes + record * 16;
}

// A valid store of 300 exceptions (olds 10.., news 2..257 then 259..302): area 0 full, area 1 with 44
// records.
class PersistentLoad : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_.file("cow.img");
    make_sparse_file(path_, kCowChunks * kChunkBytes);
    auto dev = open_file_device(path_);
    auto store = PersistentStore::create(*dev, Sector(8));
    ASSERT_TRUE(store.ok()) << store.error().message();
    for (uint64_t i = 0; i < 300; ++i)
      ASSERT_TRUE(commit_sync(*store.value(), 10 + i, *store.value()->prepare_exception()));
  }

  void patch(uint64_t offset, const std::vector<std::byte>& bytes) { write_file(path_, offset, bytes); }

  // open() must fail, naming `fault`, and write nothing.
  void expect_refused(const std::string& fault, int errno_value = EINVAL) {
    const auto before = whole_file(path_);
    {
      CowImage cow(path_);
      auto r = load(cow.dev(), kOrigin);
      ASSERT_FALSE(r.ok()) << "loaded a store with: " << fault;
      EXPECT_NE(r.error().message().find(fault), std::string::npos) << r.error().message();
      EXPECT_NE(r.error().message().find(path_), std::string::npos) << r.error().message();
      EXPECT_EQ(r.error().errno_value(), errno_value) << r.error().message();
      for (const auto& rec : cow.fault->records())
        EXPECT_NE(rec.op, FaultDevice::Op::write) << "open() wrote at sector " << rec.start.value();
    }
    EXPECT_EQ(whole_file(path_), before) << "the device changed";
  }

  TempDir dir_;
  std::string path_;
};

TEST_F(PersistentLoad, AValidStoreLoads) {
  CowImage cow(path_);
  auto r = load(cow.dev(), kOrigin);
  ASSERT_TRUE(r.ok()) << r.error().message();
  ASSERT_EQ(r.value().exceptions.size(), 300u);
  EXPECT_EQ(r.value().exceptions[256].new_chunk, ChunkIndex(259));
  EXPECT_TRUE(r.value().store->valid());
}

TEST_F(PersistentLoad, RefusesABadMagic) {
  patch(0, le32_bytes(0x12345678));
  expect_refused("bad magic 0x12345678");
}

TEST_F(PersistentLoad, RefusesDiskVersion2) {
  patch(8, le32_bytes(2));
  expect_refused("snapshot disk version 2");
}

TEST_F(PersistentLoad, RefusesAChunkSizeNotAPowerOfTwo) {
  patch(12, le32_bytes(12));
  expect_refused("chunk size 12 sectors is not a power of 2");
}

TEST_F(PersistentLoad, RefusesChunkSizeZero) {
  patch(12, le32_bytes(0));
  expect_refused("chunk size 0 sectors is not a power of 2");
}

TEST_F(PersistentLoad, RefusesATooLargeChunkSize) {
  patch(12, le32_bytes(2048));
  expect_refused("chunk size 2048 sectors is too high");
}

TEST_F(PersistentLoad, RefusesARecordBeyondTheDevice) {
  patch(record_offset(1, 5) + 8, le64_bytes(kCowChunks));
  expect_refused("record 5 of area 1 points at chunk 512, beyond the end of the device (512 chunks)");
}

TEST_F(PersistentLoad, RefusesARecordPointingAtChunkZero) {
  patch(record_offset(0, 7) + 8, le64_bytes(0));
  expect_refused("record 7 of area 0 (old chunk 17) points at chunk 0, the header");
}

TEST_F(PersistentLoad, RefusesARecordPointingAtAMetadataChunk) {
  patch(record_offset(1, 3) + 8, le64_bytes(258));
  expect_refused("record 3 of area 1 points at metadata chunk 258");
}

TEST_F(PersistentLoad, RefusesAnOldChunkBeyondTheOrigin) {
  patch(record_offset(0, 9), le64_bytes(4096));
  expect_refused("record 9 of area 0 has old chunk 4096, beyond the end of the origin (4096 chunks)");
}

TEST_F(PersistentLoad, RefusesADuplicateOldChunk) {
  patch(record_offset(1, 10), le64_bytes(12));
  expect_refused("record 10 of area 1 repeats old chunk 12 of record 2 of area 0");
}

TEST_F(PersistentLoad, RefusesADuplicateNewChunk) {
  patch(record_offset(1, 10) + 8, le64_bytes(5));
  expect_refused("record 10 of area 1 repeats new chunk 5 of record 3 of area 0");
}

TEST_F(PersistentLoad, RefusesAFullLastAreaWithNoRoomForTheNext) {
  // Area 0 full and the device ending right after its data: the kernel cannot read area 1 either.
  ASSERT_EQ(::truncate(path_.c_str(), 258 * kChunkBytes), 0);
  expect_refused("area 0 is full but the next area (chunk 258) lies beyond the end of the device");
}

TEST_F(PersistentLoad, NamesAnUnreadableArea) {
  CowImage cow(path_);
  cow.fault->fail_reads(Sector(258 * 8), Sector(8));
  auto r = load(cow.dev(), kOrigin);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().errno_value(), EIO);
  EXPECT_NE(r.error().message().find("read metadata area 1 (chunk 258)"), std::string::npos)
      << r.error().message();
}

TEST_F(PersistentLoad, ReadHeaderReportsANewDevice) {
  TempDir dir;
  CowImage blank(dir.file("blank.img"), 1 << 20);
  auto h = PersistentStore::read_header(blank.dev());
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.error().errno_value(), ENOENT);
  EXPECT_NE(h.error().message().find("no snapshot header"), std::string::npos);
}

TEST_F(PersistentLoad, AnyNonZeroValidFieldIsValid) {
  patch(4, le32_bytes(7));
  CowImage cow(path_);
  auto r = load(cow.dev(), kOrigin);
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_TRUE(r.value().store->valid());
}

TEST_F(PersistentLoad, RecordsAfterTheTerminatorAreIgnoredAndNeverReappear) {
  // A leftover record behind the terminator of area 1 (records 0..43), as an interrupted write may leave.
  patch(record_offset(1, 50), le64_bytes(4000));
  patch(record_offset(1, 50) + 8, le64_bytes(400));
  {
    CowImage cow(path_);
    auto r = load(cow.dev(), kOrigin);
    ASSERT_TRUE(r.ok()) << r.error().message();
    EXPECT_EQ(r.value().exceptions.size(), 300u);
    auto& store = *r.value().store;
    // Records 44..49: area 1 is rewritten, up to just before the leftover's slot.
    for (uint64_t i = 0; i < 6; ++i) ASSERT_TRUE(commit_sync(store, 2000 + i, *store.prepare_exception()));
  }
  EXPECT_EQ(raw_le64(read_file(path_, record_offset(1, 50), 16), 8), 0u)
      << "the leftover was cleared on disk";
  CowImage cow(path_);
  auto r = load(cow.dev(), kOrigin);
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r.value().exceptions.size(), 306u);
}

// Writes a COW holding n exceptions straight into a sparse file: header and areas as raw bytes (§3), olds a
// shuffled permutation of 0..n-1, news allocated in order. Result: the olds in on-disk order.
std::vector<uint64_t> build_big_cow(const std::string& path, uint64_t n, uint64_t& cow_chunks) {
  constexpr uint64_t kEpa = 256;
  const uint64_t areas = (n + kEpa - 1) / kEpa;
  cow_chunks = 1 + areas * (kEpa + 1) + 1;
  make_sparse_file(path, cow_chunks * kChunkBytes);
  std::vector<uint64_t> olds(n);
  std::iota(olds.begin(), olds.end(), 0);
  std::shuffle(olds.begin(), olds.end(), std::mt19937_64(1));

  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd.valid()) throw std::runtime_error("open " + path);
  auto put = [&](uint64_t offset, const std::vector<std::byte>& b) {
    if (::pwrite(fd.get(), b.data(), b.size(), static_cast<off_t>(offset)) != static_cast<ssize_t>(b.size()))
      throw std::runtime_error("pwrite " + path);
  };
  std::vector<std::byte> header(16);
  cow_format::store_le32(header.data(), 0x70416e53);
  cow_format::store_le32(header.data() + 4, 1);
  cow_format::store_le32(header.data() + 8, 1);
  cow_format::store_le32(header.data() + 12, 8);
  put(0, header);
  uint64_t next = 2;
  std::vector<std::byte> area(kChunkBytes);
  for (uint64_t a = 0; a < areas; ++a) {
    std::fill(area.begin(), area.end(), std::byte{0});
    for (uint64_t r = 0; r < kEpa && a * kEpa + r < n; ++r) {
      cow_format::store_le64(area.data() + r * 16, olds[a * kEpa + r]);
      cow_format::store_le64(area.data() + r * 16 + 8, next);
      if (++next % (kEpa + 1) == 1) ++next;
    }
    put(record_offset(a, 0), area);
  }
  ::fdatasync(fd.get());
  // Cold cache: the load must read from the disk, as after a reboot.
  ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_DONTNEED);
  return olds;
}

long peak_rss_kib() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

TEST(PersistentLoadTime, AMillionExceptionsLoadQuickly) {
  constexpr uint64_t kN = 1'000'000;
  TempDir dir;
  const std::string path = dir.file("big.img");
  uint64_t cow_chunks = 0;
  const auto olds = build_big_cow(path, kN, cow_chunks);
  std::vector<Exception> loaded;
  loaded.reserve(kN);
  const long rss_before = peak_rss_kib();

  auto dev = open_file_device(path);
  const auto start = std::chrono::steady_clock::now();
  auto store = PersistentStore::open(*dev, Sector(kN * 8), [&](const Exception& e) { loaded.push_back(e); });
  const auto elapsed = std::chrono::steady_clock::now() - start;
  ASSERT_TRUE(store.ok()) << store.error().message();

  const double ms = std::chrono::duration<double, std::milli>(elapsed).count();
  std::printf("loaded %llu exceptions (chunk 4 KiB, %llu areas) in %.1f ms; peak RSS grew by %ld KiB\n",
              static_cast<unsigned long long>(kN), static_cast<unsigned long long>((kN + 255) / 256), ms,
              peak_rss_kib() - rss_before);
  RecordProperty("load_ms", static_cast<int>(ms));
  ASSERT_EQ(loaded.size(), kN);
  for (uint64_t i : {uint64_t{0}, uint64_t{255}, uint64_t{256}, kN - 1})
    EXPECT_EQ(loaded[i].old_chunk, ChunkIndex(olds[i]));
  EXPECT_EQ(loaded[0].new_chunk, ChunkIndex(2));
  EXPECT_EQ(loaded[256].new_chunk, ChunkIndex(259));
  const uint64_t last_new = loaded.back().new_chunk.value();
  EXPECT_EQ(store.value()->usage().allocated, Sector((last_new + 1) * 8));
  EXPECT_LT(ms, 5000.0) << "well under 1 s is expected in Release";
}

}  // namespace
}  // namespace kcopyfs::test
