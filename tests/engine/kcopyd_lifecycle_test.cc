// A client's lifetime and callback threading (kernel-dm-notes.md §1.1, §1.5): destruction waits for every
// job's callback, callbacks of one client never overlap and run on its worker, and callbacks may submit more
// jobs.
#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <thread>

#include "tests/engine/engine_test_util.h"

namespace kcopyfs::test {
namespace {

using Op = FaultDevice::Op;

KcopydOptions no_offload() {
  KcopydOptions o;
  o.allow_offload = false;
  return o;
}

TEST(KcopydLifecycle, DestroyWithJobsInFlightWaitsForEveryCallback) {
  TempDir dir;
  constexpr size_t kJobs = 40;
  const Sector piece(256);
  auto src = Image::with_pattern(dir.file("src"), 4 * MiB, 30);
  auto dst = Image::sparse(dir.file("dst"), kJobs * to_bytes(piece).value());
  dst->dev().set_latency(Op::write, std::chrono::milliseconds(200));
  std::atomic<size_t> calls{0};
  std::atomic<size_t> errors{0};
  auto client = make_client(no_offload());
  for (size_t i = 0; i < kJobs; ++i) {
    Region dests[] = {dst->region(Sector(i * piece.value()), piece)};
    ASSERT_TRUE(client
                    ->copy(src->region(Sector(i * 8), piece), dests, {},
                           [&](bool read_error, uint32_t write_errors) {
                             if (read_error || write_errors != 0) errors.fetch_add(1);
                             calls.fetch_add(1);
                           })
                    .ok());
  }
  const size_t before = calls.load();
  client.reset();
  EXPECT_LT(before, kJobs) << "every job had finished before destruction began; the test proved nothing";
  EXPECT_EQ(calls.load(), kJobs);
  EXPECT_EQ(errors.load(), 0u);
  for (size_t i = 0; i < kJobs; ++i)
    EXPECT_TRUE(file_matches_pattern(dst->path, i * to_bytes(piece).value(), to_bytes(piece).value(), 30,
                                     i * 8 * kSectorSize));
}

TEST(KcopydLifecycle, CallbacksNeverOverlapAndRunOnTheWorker) {
  TempDir dir;
  constexpr size_t kThreads = 4;
  constexpr size_t kJobsPerThread = 150;
  constexpr size_t kJobs = kThreads * kJobsPerThread;
  auto src = Image::with_pattern(dir.file("src"), 1 * MiB, 31);
  auto dst = Image::sparse(dir.file("dst"), kJobs * 4 * KiB);
  auto client = make_client(no_offload());

  std::atomic<bool> inside{false};
  std::atomic<size_t> overlaps_seen{0};
  std::mutex ids_mutex;
  std::set<std::thread::id> callback_threads;
  Callbacks cb(kJobs);
  auto callback_for = [&](size_t job) -> CopyCallback {
    auto inner = cb.make(job);
    return [&, inner](bool read_error, uint32_t write_errors) {
      if (inside.exchange(true)) overlaps_seen.fetch_add(1);
      {
        std::lock_guard lock(ids_mutex);
        callback_threads.insert(std::this_thread::get_id());
      }
      // Linger a little, so an overlapping callback would be caught inside.
      for (int i = 0; i < 200; ++i) std::this_thread::yield();
      inside.store(false);
      inner(read_error, write_errors);
    };
  };

  std::vector<std::thread> submitters;
  std::set<std::thread::id> submitter_ids;
  std::atomic<size_t> submit_failures{0};
  for (size_t t = 0; t < kThreads; ++t) {
    submitters.emplace_back([&, t] {
      for (size_t k = 0; k < kJobsPerThread; ++k) {
        const size_t job = t * kJobsPerThread + k;
        Region dests[] = {dst->region(Sector(job * 8), Sector(8))};
        if (!client->copy(src->region(Sector(job % 2000), Sector(8)), dests, {}, callback_for(job)).ok())
          submit_failures.fetch_add(1);
      }
    });
    submitter_ids.insert(submitters.back().get_id());
  }
  for (auto& t : submitters) t.join();
  ASSERT_EQ(submit_failures.load(), 0u);
  ASSERT_TRUE(cb.wait_all()) << cb.total() << " of " << kJobs;
  client.reset();
  EXPECT_EQ(overlaps_seen.load(), 0u);
  ASSERT_EQ(callback_threads.size(), 1u) << "callbacks ran on more than one thread";
  EXPECT_EQ(submitter_ids.count(*callback_threads.begin()), 0u);
  EXPECT_NE(*callback_threads.begin(), std::this_thread::get_id());
  for (size_t i = 0; i < kJobs; ++i) EXPECT_EQ(cb.result(i).calls, 1);
}

TEST(KcopydLifecycle, CallbacksMaySubmitJobsEvenDuringDestruction) {
  TempDir dir;
  constexpr size_t kChain = 20;
  auto src = Image::with_pattern(dir.file("src"), kChain * 64 * KiB, 32);
  auto dst = Image::sparse(dir.file("dst"), kChain * 64 * KiB);
  dst->dev().set_latency(Op::write, std::chrono::milliseconds(5));
  auto client = make_client(no_offload());
  KcopydClient* raw = client.get();
  std::atomic<size_t> done{0};
  std::atomic<size_t> failures{0};
  // Each job's callback submits the next link of the chain.
  std::function<void(size_t)> submit_link = [&](size_t i) {
    Region dests[] = {dst->region(Sector(i * 128), Sector(128))};
    Status s = raw->copy(src->region(Sector(i * 128), Sector(128)), dests, {},
                         [&, i](bool read_error, uint32_t write_errors) {
                           if (read_error || write_errors != 0) failures.fetch_add(1);
                           done.fetch_add(1);
                           if (i + 1 < kChain) submit_link(i + 1);
                         });
    if (!s.ok()) failures.fetch_add(1);
  };
  submit_link(0);
  client.reset();  // waits for the whole chain, including jobs submitted while it waits
  EXPECT_EQ(done.load(), kChain);
  EXPECT_EQ(failures.load(), 0u);
  EXPECT_TRUE(file_matches_pattern(dst->path, 0, kChain * 64 * KiB, 32, 0));
}

}  // namespace
}  // namespace kcopyfs::test
