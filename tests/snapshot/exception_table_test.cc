// ExceptionTable against a std::map reference model: random inserts (scattered and in runs), lookups and
// removals; the memory target of 16 bytes per exception; bulk loading.
#include "snapshot/exception_table.h"

#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <random>

namespace kcopyfs {
namespace {

void expect_matches(const ExceptionTable& table, const std::map<uint64_t, uint64_t>& model, uint64_t max_old,
                    std::mt19937_64& rng) {
  ASSERT_EQ(table.size(), model.size());
  for (const auto& [o, n] : model) {
    auto got = table.lookup(ChunkIndex(o));
    ASSERT_TRUE(got.has_value()) << "old " << o;
    ASSERT_EQ(got->value(), n) << "old " << o;
  }
  for (int i = 0; i < 2000; ++i) {
    const uint64_t o = rng() % max_old;
    auto got = table.lookup(ChunkIndex(o));
    auto it = model.find(o);
    ASSERT_EQ(got.has_value(), it != model.end()) << "old " << o;
    if (got) {
      ASSERT_EQ(got->value(), it->second);
    }
  }
}

TEST(ExceptionTable, RandomOperationsMatchModel) {
  for (uint64_t seed : {1u, 2u, 3u, 4u}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    ExceptionTable table;
    std::map<uint64_t, uint64_t> model;
    uint64_t next_new = 2;
    constexpr uint64_t kMaxOld = 100000;
    for (int step = 0; step < 20000; ++step) {
      const int op = static_cast<int>(rng() % 10);
      if (op < 6) {
        // A write of 1..40 chunks: consecutive old chunks, consecutive new chunks, as an origin write makes.
        const uint64_t start = rng() % kMaxOld;
        const uint64_t len = 1 + rng() % 40;
        for (uint64_t o = start; o < std::min(start + len, kMaxOld); ++o) {
          if (model.count(o)) continue;
          table.insert(ChunkIndex(o), ChunkIndex(next_new));
          model[o] = next_new++;
        }
        if (rng() % 7 == 0) next_new += 1 + rng() % 3;  // a metadata chunk or a lost chunk breaks the new run
      } else if (op < 8 && !model.empty()) {
        auto it = model.lower_bound(rng() % kMaxOld);
        if (it == model.end()) it = model.begin();
        ASSERT_TRUE(table.remove(ChunkIndex(it->first)));
        model.erase(it);
      } else {
        const uint64_t o = rng() % kMaxOld;
        EXPECT_EQ(table.remove(ChunkIndex(o)), model.erase(o) == 1);
      }
    }
    expect_matches(table, model, kMaxOld, rng);
  }
}

TEST(ExceptionTable, RunsArePackedAndIterateInOrder) {
  ExceptionTable table;
  for (uint64_t i = 0; i < 1000; ++i) table.insert(ChunkIndex(5000 + i), ChunkIndex(2 + i));
  // 1000 consecutive chunks need ceil(1000/256) = 4 runs.
  EXPECT_EQ(table.runs(), 4u);
  uint64_t expect_old = 5000, total = 0;
  table.for_each_run([&](ChunkIndex old, ChunkIndex nw, uint64_t count) {
    EXPECT_EQ(old.value(), expect_old);
    EXPECT_EQ(nw.value(), 2 + (expect_old - 5000));
    expect_old += count;
    total += count;
  });
  EXPECT_EQ(total, 1000u);
  // Removing from either end of a run keeps it one run.
  ASSERT_TRUE(table.remove(ChunkIndex(5000)));
  ASSERT_TRUE(table.remove(ChunkIndex(5999)));
  EXPECT_EQ(table.runs(), 4u);
  EXPECT_FALSE(table.lookup(ChunkIndex(5000)).has_value());
  EXPECT_EQ(table.lookup(ChunkIndex(5001))->value(), 3u);
  EXPECT_FALSE(table.remove(ChunkIndex(5000)));
}

TEST(ExceptionTable, ScatteredExceptionsCostAtMost16Bytes) {
  ExceptionTable table;
  std::mt19937_64 rng(7);
  std::map<uint64_t, bool> used;
  uint64_t next_new = 2;
  while (table.size() < 200000) {
    const uint64_t o = rng() % (1ull << 40);
    if (used.emplace(o, true).second) table.insert(ChunkIndex(o), ChunkIndex(next_new++));
  }
  const double per_exception = static_cast<double>(table.memory_bytes()) / static_cast<double>(table.size());
  RecordProperty("bytes_per_exception", std::to_string(per_exception));
  EXPECT_LE(per_exception, 16.5);  // the delta's spare capacity is the only slack
}

TEST(ExceptionTable, BulkLoadOfAMillion) {
  std::vector<Exception> records;
  std::mt19937_64 rng(11);
  // An origin written at random, 4K chunks: 1M exceptions, old chunks shuffled, new chunks in commit order.
  std::vector<uint64_t> olds(1000000);
  for (uint64_t i = 0; i < olds.size(); ++i) olds[i] = i * 3;
  std::shuffle(olds.begin(), olds.end(), rng);
  uint64_t next_new = 2;
  for (uint64_t o : olds) records.push_back(Exception{ChunkIndex(o), ChunkIndex(next_new++)});
  const auto start = std::chrono::steady_clock::now();
  ExceptionTable table;
  table.insert_bulk(records);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  RecordProperty("bulk_load_seconds", std::to_string(secs));
  ASSERT_EQ(table.size(), 1000000u);
  for (int i = 0; i < 10000; ++i) {
    const Exception& e = records[rng() % records.size()];
    ASSERT_EQ(table.lookup(e.old_chunk)->value(), e.new_chunk.value());
    ASSERT_FALSE(table.lookup(ChunkIndex(e.old_chunk.value() + 1)).has_value());
  }
  EXPECT_LE(table.memory_bytes(), 16u * 1000000u);
}

}  // namespace
}  // namespace kcopyfs
