// kcopyd's error rules (kernel-dm-notes.md §1.4-1.5): what a read error and a write error do to the callback
// and to the destinations, whether a job keeps starting pieces after an error, and WRITE_SEQ ordering.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>

#include "tests/engine/engine_test_util.h"

namespace kcopyfs::test {
namespace {

using Op = FaultDevice::Op;
using std::chrono::microseconds;
using std::chrono::milliseconds;

constexpr Sector kPiece = Sector(64);  // sub-job size of these tests: 32 KiB, so big jobs stay cheap

KcopydOptions small_pieces() {
  KcopydOptions o;
  o.sub_job_size = kPiece;
  o.allow_offload = false;  // every byte goes through reads and writes the FaultDevices see
  return o;
}

uint64_t piece_bytes(uint64_t n) { return to_bytes(kPiece).value() * n; }

TEST(KcopydErrors, ReadErrorReportsReadErrorAndWritesNothingForThatPiece) {
  TempDir dir;
  auto src = Image::with_pattern(dir.file("src"), 1 * MiB, 1);
  auto d0 = Image::sparse(dir.file("d0"), 1 * MiB);
  auto d1 = Image::sparse(dir.file("d1"), 1 * MiB);
  const Sector src_start(128), d0_start(256), d1_start(0);
  const Sector count = Sector(kPiece.value() * 8);
  const Sector bad = Sector(kPiece.value() * 3);  // the failing piece, relative to the job
  src->dev().fail_reads(src_start + bad, kPiece);

  auto client = make_client(small_pieces());
  Callbacks cb;
  Region dests[] = {d0->region(d0_start, count), d1->region(d1_start, count)};
  ASSERT_TRUE(client->copy(src->region(src_start, count), dests, {}, cb.make()).ok());
  ASSERT_TRUE(cb.wait_all()) << "callback did not run";
  EXPECT_EQ(cb.result().calls, 1);
  EXPECT_TRUE(cb.result().read_error);
  EXPECT_EQ(cb.result().write_errors, 0u);

  for (auto* d : {d0.get(), d1.get()}) {
    const Sector dst_start = d == d0.get() ? d0_start : d1_start;
    for (const auto& r : records_of(d->dev(), Op::write))
      EXPECT_FALSE(overlaps(r.start, r.count, dst_start + bad, kPiece))
          << d->path << ": a write at sector " << r.start.value() << " covers the piece whose read failed";
    // The 8 pieces were all in flight from the start, so every other piece still lands.
    for (uint64_t p = 0; p < 8; ++p) {
      const uint64_t off = to_bytes(dst_start).value() + piece_bytes(p);
      if (p == 3) {
        EXPECT_TRUE(file_is_zero(d->path, off, piece_bytes(1)));
      } else {
        EXPECT_TRUE(file_matches_pattern(d->path, off, piece_bytes(1), 1,
                                         to_bytes(src_start).value() + piece_bytes(p)));
      }
    }
  }
}

TEST(KcopydErrors, WriteErrorOnOneDestinationSetsOnlyItsBitAndTheOthersGetEveryByte) {
  TempDir dir;
  auto src = Image::with_pattern(dir.file("src"), 1 * MiB, 2);
  const Sector count = Sector(kPiece.value() * 8);
  for (unsigned failing = 0; failing < 3; ++failing) {
    SCOPED_TRACE("failing destination " + std::to_string(failing));
    std::vector<std::unique_ptr<Image>> d;
    std::vector<Region> dests;
    for (unsigned i = 0; i < 3; ++i) {
      d.push_back(Image::sparse(dir.file(std::to_string(failing * 10 + i) + ".img"), 1 * MiB));
      dests.push_back(d.back()->region(Sector(64 * i), count));
    }
    d[failing]->dev().fail_all_writes();
    auto client = make_client(small_pieces());
    Callbacks cb;
    ASSERT_TRUE(client->copy(src->region(Sector(0), count), dests, {}, cb.make()).ok());
    ASSERT_TRUE(cb.wait_all());
    EXPECT_FALSE(cb.result().read_error);
    EXPECT_EQ(cb.result().write_errors, 1u << failing);
    for (unsigned i = 0; i < 3; ++i) {
      if (i == failing) continue;
      EXPECT_TRUE(file_matches_pattern(d[i]->path, to_bytes(dests[i].start).value(), piece_bytes(8), 2, 0));
    }
  }
}

TEST(KcopydErrors, WriteErrorOfOnePieceWithIgnoreErrorLeavesOtherDestinationsComplete) {
  TempDir dir;
  constexpr uint64_t kPieces = 20;
  auto src = Image::with_pattern(dir.file("src"), piece_bytes(kPieces), 3);
  auto d0 = Image::sparse(dir.file("d0"), piece_bytes(kPieces));
  auto d1 = Image::sparse(dir.file("d1"), piece_bytes(kPieces));
  d0->dev().fail_writes(Sector(kPiece.value() * 11), Sector(1));
  auto client = make_client(small_pieces());
  Callbacks cb;
  const Sector count = Sector(kPiece.value() * kPieces);
  Region dests[] = {d0->region(Sector(0), count), d1->region(Sector(0), count)};
  CopyFlags flags;
  flags.ignore_error = true;
  ASSERT_TRUE(client->copy(src->region(Sector(0), count), dests, flags, cb.make()).ok());
  ASSERT_TRUE(cb.wait_all());
  EXPECT_FALSE(cb.result().read_error);
  EXPECT_EQ(cb.result().write_errors, 1u);
  EXPECT_TRUE(file_matches_pattern(d1->path, 0, piece_bytes(kPieces), 3, 0));
  EXPECT_TRUE(file_matches_pattern(d0->path, 0, piece_bytes(11), 3, 0));
  EXPECT_TRUE(file_matches_pattern(d0->path, piece_bytes(12), piece_bytes(kPieces - 12), 3, piece_bytes(12)));
}

// Without IGNORE_ERROR the first error stops the job from starting new pieces; the pieces in flight finish.
TEST(KcopydErrors, FirstReadErrorStopsNewSubJobs) {
  TempDir dir;
  constexpr uint64_t kPieces = 64;
  auto src = Image::with_pattern(dir.file("src"), piece_bytes(kPieces), 4);
  auto dst = Image::sparse(dir.file("dst"), piece_bytes(kPieces));
  src->dev().fail_reads(Sector(0), kPiece);            // fails at once ...
  src->dev().set_latency(Op::read, milliseconds(20));  // ... while the other pieces are still reading
  auto client = make_client(small_pieces());
  Callbacks cb;
  const Sector count = Sector(kPiece.value() * kPieces);
  Region dests[] = {dst->region(Sector(0), count)};
  ASSERT_TRUE(client->copy(src->region(Sector(0), count), dests, {}, cb.make()).ok());
  ASSERT_TRUE(cb.wait_all());
  EXPECT_TRUE(cb.result().read_error);
  EXPECT_EQ(cb.result().write_errors, 0u);
  const auto reads = records_of(src->dev(), Op::read);
  // Only the 8 pieces started before the error were ever read.
  EXPECT_LE(reads.size(), 8u);
  EXPECT_LT(reads.size(), kPieces);
  for (const auto& r : records_of(dst->dev(), Op::write))
    EXPECT_FALSE(overlaps(r.start, r.count, Sector(0), kPiece));
}

TEST(KcopydErrors, FirstWriteErrorStopsNewSubJobs) {
  TempDir dir;
  constexpr uint64_t kPieces = 64;
  auto src = Image::with_pattern(dir.file("src"), piece_bytes(kPieces), 5);
  auto dst = Image::sparse(dir.file("dst"), piece_bytes(kPieces));
  dst->dev().fail_writes(Sector(0), kPiece);
  dst->dev().set_latency(Op::write, milliseconds(20));
  auto client = make_client(small_pieces());
  Callbacks cb;
  const Sector count = Sector(kPiece.value() * kPieces);
  Region dests[] = {dst->region(Sector(0), count)};
  ASSERT_TRUE(client->copy(src->region(Sector(0), count), dests, {}, cb.make()).ok());
  ASSERT_TRUE(cb.wait_all());
  EXPECT_FALSE(cb.result().read_error);
  EXPECT_EQ(cb.result().write_errors, 1u);
  EXPECT_LE(records_of(src->dev(), Op::read).size(), 8u);
  EXPECT_LE(records_of(dst->dev(), Op::write).size(), 8u);
}

TEST(KcopydErrors, IgnoreErrorAttemptsEveryPieceAndLandsAllOthers) {
  TempDir dir;
  constexpr uint64_t kPieces = 64;
  const uint64_t size = piece_bytes(kPieces);
  auto src = Image::with_pattern(dir.file("src"), size, 6);
  // Destinations start with other content, so "not written" and "written with zeros" differ.
  auto d0 = Image::with_pattern(dir.file("d0"), size, 60);
  auto d1 = Image::with_pattern(dir.file("d1"), size, 61);
  src->dev().fail_reads(Sector(kPiece.value() * 5), kPiece);
  d1->dev().fail_writes(Sector(kPiece.value() * 20), kPiece);
  src->dev().set_latency(Op::read, microseconds(500));

  auto client = make_client(small_pieces());
  Callbacks cb;
  const Sector count = Sector(kPiece.value() * kPieces);
  Region dests[] = {d0->region(Sector(0), count), d1->region(Sector(0), count)};
  CopyFlags flags;
  flags.ignore_error = true;
  ASSERT_TRUE(client->copy(src->region(Sector(0), count), dests, flags, cb.make()).ok());
  ASSERT_TRUE(cb.wait_all());
  EXPECT_TRUE(cb.result().read_error);
  EXPECT_EQ(cb.result().write_errors, 2u);

  std::multiset<uint64_t> read_starts;
  for (const auto& r : records_of(src->dev(), Op::read)) read_starts.insert(r.start.value());
  EXPECT_EQ(read_starts.size(), kPieces);
  for (uint64_t p = 0; p < kPieces; ++p)
    EXPECT_EQ(read_starts.count(p * kPiece.value()), 1u) << "piece " << p;

  for (uint64_t p = 0; p < kPieces; ++p) {
    SCOPED_TRACE("piece " + std::to_string(p));
    const uint64_t off = piece_bytes(p);
    if (p == 5) {
      // A failed read writes zeros with IGNORE_ERROR.
      EXPECT_TRUE(file_is_zero(d0->path, off, piece_bytes(1)));
      EXPECT_TRUE(file_is_zero(d1->path, off, piece_bytes(1)));
      continue;
    }
    EXPECT_TRUE(file_matches_pattern(d0->path, off, piece_bytes(1), 6, off));
    if (p == 20) {
      EXPECT_TRUE(file_matches_pattern(d1->path, off, piece_bytes(1), 61, off));  // the failed write left it
    } else {
      EXPECT_TRUE(file_matches_pattern(d1->path, off, piece_bytes(1), 6, off));
    }
  }
}

// Random latency per piece on both sides, so reads and writes complete out of order unless kcopyd orders
// them.
void add_random_latency(FaultDevice& dev, Op op, uint64_t pieces, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> us(0, 3000);
  for (uint64_t p = 0; p < pieces; ++p) {
    FaultDevice::Rule rule;
    rule.op = op;
    rule.start = Sector(p * kPiece.value());
    rule.count = kPiece;
    rule.delay = microseconds(us(rng));
    dev.add_rule(rule);
  }
}

struct SeqRun {
  std::vector<FaultDevice::Record> writes;
  unsigned peak_writes = 0;
  unsigned peak_reads = 0;
  Callbacks::Result result;
};

SeqRun run_with_random_latency(const TempDir& dir, const std::string& name, bool write_seq) {
  constexpr uint64_t kPieces = 32;
  auto src = Image::with_pattern(dir.file(name + "-src"), piece_bytes(kPieces), 7);
  auto dst = Image::sparse(dir.file(name + "-dst"), piece_bytes(kPieces));
  add_random_latency(src->dev(), Op::read, kPieces, 1);
  add_random_latency(dst->dev(), Op::write, kPieces, 2);
  auto client = make_client(small_pieces());
  Callbacks cb;
  const Sector count = Sector(kPiece.value() * kPieces);
  Region dests[] = {dst->region(Sector(0), count)};
  CopyFlags flags;
  flags.write_seq = write_seq;
  SeqRun run;
  EXPECT_TRUE(client->copy(src->region(Sector(0), count), dests, flags, cb.make()).ok());
  cb.wait_all();
  run.result = cb.result();
  run.writes = records_of(dst->dev(), Op::write);
  run.peak_writes = dst->dev().peak_in_flight(Op::write);
  run.peak_reads = src->dev().peak_in_flight(Op::read);
  EXPECT_TRUE(file_matches_pattern(dst->path, 0, piece_bytes(kPieces), 7, 0));
  return run;
}

TEST(KcopydErrors, WriteSeqWritesInAscendingOrderOneAtATime) {
  TempDir dir;
  const SeqRun seq = run_with_random_latency(dir, "seq", true);
  EXPECT_FALSE(seq.result.read_error);
  EXPECT_EQ(seq.result.write_errors, 0u);
  EXPECT_EQ(seq.peak_writes, 1u);
  EXPECT_GT(seq.peak_reads, 1u) << "reads of a WRITE_SEQ job still run in parallel";
  ASSERT_EQ(seq.writes.size(), 32u);
  for (size_t i = 0; i < seq.writes.size(); ++i) {
    EXPECT_EQ(seq.writes[i].start.value(), i * kPiece.value()) << "write " << i << " out of order";
    EXPECT_EQ(seq.writes[i].count, kPiece);
  }

  // Control: the same latencies without WRITE_SEQ do overlap writes, so the check above can fail.
  const SeqRun free = run_with_random_latency(dir, "free", false);
  EXPECT_GT(free.peak_writes, 1u);
}

TEST(KcopydErrors, WriteSeqClearsIgnoreError) {
  TempDir dir;
  constexpr uint64_t kPieces = 64;
  auto src = Image::with_pattern(dir.file("src"), piece_bytes(kPieces), 8);
  auto dst = Image::sparse(dir.file("dst"), piece_bytes(kPieces));
  src->dev().fail_reads(Sector(0), kPiece);
  src->dev().set_latency(Op::read, milliseconds(20));
  auto client = make_client(small_pieces());
  Callbacks cb;
  const Sector count = Sector(kPiece.value() * kPieces);
  Region dests[] = {dst->region(Sector(0), count)};
  CopyFlags flags;
  flags.ignore_error = true;
  flags.write_seq = true;
  ASSERT_TRUE(client->copy(src->region(Sector(0), count), dests, flags, cb.make()).ok());
  ASSERT_TRUE(cb.wait_all());
  EXPECT_TRUE(cb.result().read_error);
  // Had IGNORE_ERROR survived, every piece would be read and the failed piece written with zeros.
  EXPECT_LE(records_of(src->dev(), Op::read).size(), 8u);
  const auto writes = records_of(dst->dev(), Op::write);
  for (const auto& r : writes) EXPECT_FALSE(overlaps(r.start, r.count, Sector(0), kPiece));
  for (size_t i = 1; i < writes.size(); ++i) EXPECT_LT(writes[i - 1].start, writes[i].start);
  EXPECT_EQ(dst->dev().peak_in_flight(Op::write), writes.empty() ? 0u : 1u);
}

}  // namespace
}  // namespace kcopyfs::test
