// IoRing (engine/io_ring.h): backlog beyond the completion queue, exactly-once completion on the ring's
// thread, zero-filled reads past end-of-file, and the other operation kinds.
#include "engine/io_ring.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/falloc.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <set>
#include <thread>

#include "tests/engine/engine_test_util.h"

namespace kcopyfs::test {
namespace {

std::unique_ptr<IoRing> make_ring(unsigned entries, unsigned fixed_slots = 0, bool polled = false) {
  IoRing::Options o;
  o.entries = entries;
  o.fixed_buffer_slots = fixed_slots;
  if (polled) o.sq_poll_idle = std::chrono::milliseconds(2);
  auto r = IoRing::create(o);
  if (!r) throw std::runtime_error(r.error().message());
  return std::move(r).value();
}

// Counts completions and lets the test wait for them.
class Completions {
 public:
  explicit Completions(size_t n) : calls_(n), results_(n, 0) {}
  IoCompletion make(size_t i) {
    return [this, i](int res) {
      std::lock_guard lock(mutex_);
      ++calls_[i];
      results_[i] = res;
      threads_.insert(std::this_thread::get_id());
      ++total_;
      cv_.notify_all();
    };
  }
  // Waits until at least n completions ran; fails the test and exits after kTimeout. Returns true.
  bool wait_for(size_t n) {
    std::unique_lock lock(mutex_);
    if (!cv_.wait_for(lock, kTimeout, [&] { return total_ >= n; }))
      fail_timeout(std::to_string(n) + " completions (" + std::to_string(total_) + " ran)");
    return true;
  }
  bool wait_all() { return wait_for(calls_.size()); }
  int calls(size_t i) const { return calls_[i]; }
  int result(size_t i) const { return results_[i]; }
  const std::set<std::thread::id>& threads() const { return threads_; }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<int> calls_;
  std::vector<int> results_;
  std::set<std::thread::id> threads_;
  size_t total_ = 0;
};

constexpr uint64_t kBlock = 4 * KiB;

// The queue-filling tests run with and without submission polling (Options::sq_poll_idle): with it, a full
// submission queue is drained by the kernel's polling thread, not by the submit call.
class IoRingQueues : public ::testing::TestWithParam<bool> {
 protected:
  std::unique_ptr<IoRing> ring(unsigned entries) {
    auto r = make_ring(entries, 0, GetParam());
    EXPECT_EQ(r->polling(), GetParam()) << "submission polling was refused here";
    return r;
  }
};

INSTANTIATE_TEST_SUITE_P(Polling, IoRingQueues, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? std::string("Polled") : std::string("Plain");
                         });

TEST_P(IoRingQueues, MoreOperationsThanTheCompletionQueueHoldsAllCompleteExactlyOnce) {
  TempDir dir;
  constexpr size_t kOps = 5000;
  write_pattern_file(dir.file("f"), kOps * kBlock, 90);
  UniqueFd fd(::open(dir.file("f").c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(fd.valid());
  auto ring = this->ring(16);  // a completion queue of 32
  std::vector<std::byte> buf(kOps * kBlock, std::byte{0xAA});
  Completions c(kOps);
  std::vector<IoOp> ops(kOps);
  for (size_t i = 0; i < kOps; ++i) {
    const size_t block = (i * 7919) % kOps;  // scattered offsets
    ops[i].kind = IoOpKind::read;
    ops[i].fd = fd.get();
    ops[i].offset = block * kBlock;
    ops[i].buffer = buf.data() + i * kBlock;
    ops[i].length = kBlock;
    ops[i].done = c.make(i);
  }
  ring->submit(ops);
  ASSERT_TRUE(c.wait_all());
  EXPECT_EQ(c.threads().count(std::this_thread::get_id()), 0u) << "a completion ran inside submit()";
  for (size_t i = 0; i < kOps; ++i) {
    ASSERT_EQ(c.calls(i), 1) << "op " << i;
    ASSERT_EQ(c.result(i), static_cast<int>(kBlock)) << "op " << i;
    const size_t block = (i * 7919) % kOps;
    ASSERT_EQ(std::memcmp(buf.data() + i * kBlock, pattern(90, block * kBlock, kBlock).data(), kBlock), 0)
        << "op " << i;
  }
}

TEST_P(IoRingQueues, ConcurrentSubmittersBeyondTheQueueSize) {
  TempDir dir;
  constexpr size_t kThreads = 4, kPerThread = 1000, kOps = kThreads * kPerThread;
  make_sparse_file(dir.file("f"), kOps * kBlock);
  UniqueFd fd(::open(dir.file("f").c_str(), O_RDWR | O_CLOEXEC));
  ASSERT_TRUE(fd.valid());
  auto ring = this->ring(8);
  const auto data = pattern(91, 0, kOps * kBlock);
  Completions c(kOps);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (size_t k = 0; k < kPerThread; ++k) {
        const size_t i = t * kPerThread + k;
        IoOp op;
        op.kind = IoOpKind::write;
        op.fd = fd.get();
        op.offset = i * kBlock;
        op.buffer = const_cast<std::byte*>(data.data() + i * kBlock);
        op.length = kBlock;
        op.done = c.make(i);
        ring->submit(std::move(op));
      }
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_TRUE(c.wait_all());
  for (size_t i = 0; i < kOps; ++i) {
    ASSERT_EQ(c.calls(i), 1) << "op " << i;
    ASSERT_EQ(c.result(i), static_cast<int>(kBlock)) << "op " << i;
  }
  EXPECT_EQ(read_file(dir.file("f"), 0, kOps * kBlock), data);
}

TEST(IoRing, TheSharedRingIsConfiguredOnlyBeforeItIsMade) {
  ASSERT_TRUE(IoRing::shared().ok());
  IoRing::Options o;
  o.sq_poll_idle = std::chrono::milliseconds(1);
  const Status st = IoRing::configure_shared(o);
  ASSERT_FALSE(st.ok()) << "configure_shared succeeded after the shared ring was made";
  EXPECT_EQ(st.error().errno_value(), EBUSY);
  EXPECT_FALSE(IoRing::shared().value()->polling()) << "the default shared ring polls";
}

TEST(IoRing, ReadPastEndOfAShrunkFileReturnsZerosForTheTail) {
  TempDir dir;
  write_pattern_file(dir.file("f"), 64 * KiB, 92);
  UniqueFd fd(::open(dir.file("f").c_str(), O_RDWR | O_CLOEXEC));
  ASSERT_TRUE(fd.valid());
  ASSERT_EQ(::ftruncate(fd.get(), 10000), 0);  // shrinks under the reader, to a size not a multiple of 512
  auto ring = make_ring(16);
  std::vector<std::byte> straddling(16 * KiB, std::byte{0xAA});
  std::vector<std::byte> beyond(4 * KiB, std::byte{0xAA});
  Completions c(2);
  IoOp a;
  a.kind = IoOpKind::read;
  a.fd = fd.get();
  a.offset = 0;
  a.buffer = straddling.data();
  a.length = straddling.size();
  a.done = c.make(0);
  IoOp b = a;
  b.offset = 32 * KiB;
  b.buffer = beyond.data();
  b.length = beyond.size();
  b.done = c.make(1);
  ring->submit(std::move(a));
  ring->submit(std::move(b));
  ASSERT_TRUE(c.wait_all());
  EXPECT_EQ(c.result(0), static_cast<int>(16 * KiB));
  EXPECT_EQ(c.result(1), static_cast<int>(4 * KiB));
  EXPECT_EQ(std::memcmp(straddling.data(), pattern(92, 0, 10000).data(), 10000), 0);
  for (size_t i = 10000; i < straddling.size(); ++i) ASSERT_EQ(straddling[i], std::byte{0}) << "byte " << i;
  for (size_t i = 0; i < beyond.size(); ++i) ASSERT_EQ(beyond[i], std::byte{0}) << "byte " << i;
}

TEST(IoRing, OtherOperationKinds) {
  TempDir dir;
  write_pattern_file(dir.file("f"), 64 * KiB, 93);
  UniqueFd fd(::open(dir.file("f").c_str(), O_RDWR | O_CLOEXEC));
  ASSERT_TRUE(fd.valid());
  auto ring = make_ring(4);
  Completions c(5);
  IoOp ops[5];
  ops[0].kind = IoOpKind::nop;
  ops[0].length = EIO;  // a nop reports -length
  ops[1].kind = IoOpKind::fdatasync;
  ops[1].fd = fd.get();
  ops[2].kind = IoOpKind::fsync;
  ops[2].fd = fd.get();
  ops[3].kind = IoOpKind::fallocate;
  ops[3].fd = fd.get();
  ops[3].offset = 8 * KiB;
  ops[3].length = 8 * KiB;
  ops[3].fallocate_mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
  ops[4].kind = IoOpKind::read;
  ops[4].fd = -1;  // EBADF is reported, not thrown
  std::byte one[512];
  ops[4].buffer = one;
  ops[4].length = sizeof one;
  for (size_t i = 0; i < 5; ++i) ops[i].done = c.make(i);
  ring->submit(ops);
  ASSERT_TRUE(c.wait_all());
  EXPECT_EQ(c.result(0), -EIO);
  EXPECT_EQ(c.result(1), 0);
  EXPECT_EQ(c.result(2), 0);
  EXPECT_EQ(c.result(3), 0);
  EXPECT_EQ(c.result(4), -EBADF);
  EXPECT_TRUE(file_is_zero(dir.file("f"), 8 * KiB, 8 * KiB));
  EXPECT_TRUE(file_matches_pattern(dir.file("f"), 16 * KiB, 48 * KiB, 93, 16 * KiB));
}

TEST(IoRing, FixedBufferReadsAndWrites) {
  TempDir dir;
  write_pattern_file(dir.file("f"), 256 * KiB, 94);
  UniqueFd fd(::open(dir.file("f").c_str(), O_RDWR | O_CLOEXEC));
  ASSERT_TRUE(fd.valid());
  auto ring = make_ring(16, 4);
  const size_t len = 128 * KiB;
  void* mem = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(mem, MAP_FAILED);
  auto* base = static_cast<std::byte*>(mem);
  const auto index = ring->register_buffer(base, len);
  if (!index) {
    ::munmap(mem, len);
    GTEST_SKIP() << "fixed buffers cannot be registered here";
  }
  Completions c(2);
  IoOp r;
  r.kind = IoOpKind::read;
  r.fd = fd.get();
  r.offset = 0;
  r.buffer = base + 4 * KiB;  // inside the registered range, not at its start
  r.length = 64 * KiB;
  r.fixed_index = *index;
  r.done = c.make(0);
  ring->submit(std::move(r));
  ASSERT_TRUE(c.wait_for(1));  // the write below sends what this read brought in
  IoOp w;
  w.kind = IoOpKind::write;
  w.fd = fd.get();
  w.offset = 192 * KiB;
  w.buffer = base + 4 * KiB;
  w.length = 64 * KiB;
  w.fixed_index = *index;
  w.done = c.make(1);
  ring->submit(std::move(w));
  ASSERT_TRUE(c.wait_all());
  EXPECT_EQ(c.result(0), static_cast<int>(64 * KiB));
  EXPECT_EQ(c.result(1), static_cast<int>(64 * KiB));
  EXPECT_TRUE(file_matches_pattern(dir.file("f"), 192 * KiB, 64 * KiB, 94, 0));
  ring->unregister_buffer(*index);
  ::munmap(mem, len);
}

}  // namespace
}  // namespace kcopyfs::test
