// kcopyd's gather copies (kcopyd.h, copy_gather): scattered sources land back to back at every destination,
// across sub-job boundaries, with one write per destination and sub-job; a failed source read is reported
// (and zeroed with ignore_error) without touching the others' data; bad arguments are refused.
#include <gtest/gtest.h>

#include <random>

#include "tests/engine/engine_test_util.h"

namespace kcopyfs::test {
namespace {

using Op = FaultDevice::Op;

constexpr Sector kPiece = Sector(64);  // 32 KiB sub-jobs, so a gather spans several

KcopydOptions small_pieces() {
  KcopydOptions o;
  o.sub_job_size = kPiece;
  o.allow_offload = false;
  return o;
}

// Random sources of 8 to 40 sectors (4 KiB multiples) anywhere in src, in random order.
std::vector<Region> random_sources(Image& src, uint64_t seed, unsigned n) {
  std::mt19937_64 rng(seed);
  std::vector<Region> sources;
  const uint64_t blocks = src.dev().size_in_sectors().value() / 8;
  for (unsigned i = 0; i < n; ++i) {
    const uint64_t len = 1 + rng() % 5;
    const uint64_t at = rng() % (blocks - len);
    sources.push_back(src.region(Sector(at * 8), Sector(len * 8)));
  }
  return sources;
}

TEST(KcopydGather, SourcesLandBackToBackAtEveryDestination) {
  TempDir dir;
  const uint64_t seed = 17;
  auto src = Image::with_pattern(dir.file("src"), 4 * MiB, seed);
  std::vector<std::unique_ptr<Image>> d;
  for (unsigned i = 0; i < 3; ++i) {
    std::string name = "d";
    name += std::to_string(i);
    d.push_back(Image::sparse(dir.file(name), 4 * MiB));
  }
  const auto sources = random_sources(*src, 5, 40);
  Sector total(0);
  for (const auto& r : sources) total += r.count;
  ASSERT_GT(total.value(), 4 * kPiece.value()) << "the gather should span several sub-jobs";
  std::vector<Region> dests = {d[0]->region(Sector(0), total), d[1]->region(Sector(8), total),
                               d[2]->region(Sector(1024), total)};
  auto client = make_client(small_pieces());
  Callbacks cb;
  ASSERT_TRUE(client->copy_gather(sources, dests, {}, cb.make()).ok());
  ASSERT_TRUE(cb.wait_all());
  EXPECT_FALSE(cb.result().read_error);
  EXPECT_EQ(cb.result().write_errors, 0u);
  for (unsigned i = 0; i < 3; ++i) {
    uint64_t at = to_bytes(dests[i].start).value();
    for (const auto& r : sources) {
      EXPECT_TRUE(
          file_matches_pattern(d[i]->path, at, to_bytes(r.count).value(), seed, to_bytes(r.start).value()))
          << "destination " << i << " at byte " << at;
      at += to_bytes(r.count).value();
    }
    // One write per sub-job, not one per source.
    const uint64_t subs = (total.value() + kPiece.value() - 1) / kPiece.value();
    EXPECT_EQ(records_of(d[i]->dev(), Op::write).size(), subs);
  }
  EXPECT_EQ(records_of(src->dev(), Op::read).size() >= sources.size(), true);
}

TEST(KcopydGather, AFailedSourceReadIsReportedAndOnlyItsPartIsZeroedWithIgnoreError) {
  TempDir dir;
  const uint64_t seed = 23;
  auto src = Image::with_pattern(dir.file("src"), 1 * MiB, seed);
  auto dst = Image::sparse(dir.file("dst"), 1 * MiB);
  // Three 4 KiB sources; the middle one fails.
  std::vector<Region> sources = {src->region(Sector(800), Sector(8)), src->region(Sector(16), Sector(8)),
                                 src->region(Sector(400), Sector(8))};
  src->dev().fail_reads(Sector(16), Sector(8));
  Region dests[] = {dst->region(Sector(0), Sector(24))};
  auto client = make_client(small_pieces());
  {
    Callbacks cb;
    ASSERT_TRUE(client->copy_gather(sources, dests, {}, cb.make()).ok());
    ASSERT_TRUE(cb.wait_all());
    EXPECT_TRUE(cb.result().read_error);
    EXPECT_TRUE(records_of(dst->dev(), Op::write).empty()) << "a sub-job whose read failed was written";
  }
  CopyFlags ignore;
  ignore.ignore_error = true;
  Callbacks cb;
  ASSERT_TRUE(client->copy_gather(sources, dests, ignore, cb.make()).ok());
  ASSERT_TRUE(cb.wait_all());
  EXPECT_TRUE(cb.result().read_error);
  EXPECT_TRUE(file_matches_pattern(dst->path, 0, 4096, seed, 800 * 512));
  EXPECT_TRUE(file_is_zero(dst->path, 4096, 4096));
  EXPECT_TRUE(file_matches_pattern(dst->path, 8192, 4096, seed, 400 * 512));
}

TEST(KcopydGather, RefusesWhatItCannotDo) {
  TempDir dir;
  auto src = Image::with_pattern(dir.file("src"), 1 * MiB, 3);
  auto dst = Image::sparse(dir.file("dst"), 64 * 1024);
  auto client = make_client(small_pieces());
  Callbacks cb;
  Region dests[] = {dst->region(Sector(0), Sector(8))};
  EXPECT_FALSE(client->copy_gather({}, dests, {}, cb.make()).ok());
  std::vector<Region> sources = {src->region(Sector(0), Sector(8))};
  CopyFlags sparse;
  sparse.sparse = true;
  EXPECT_FALSE(client->copy_gather(sources, dests, sparse, cb.make()).ok());
  CopyFlags seq;
  seq.write_seq = true;
  EXPECT_FALSE(client->copy_gather(sources, dests, seq, cb.make()).ok());
  // 72 KiB of sources do not fit a 64 KiB destination.
  std::vector<Region> big(9, src->region(Sector(0), Sector(16)));
  EXPECT_FALSE(client->copy_gather(big, dests, {}, cb.make()).ok());
  EXPECT_EQ(cb.result().calls, 0);
}

}  // namespace
}  // namespace kcopyfs::test
