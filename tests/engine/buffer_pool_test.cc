// BufferPool (engine/buffer_pool.h): first-fit allocation of contiguous pages, coalescing on release, and a
// request that fails while the free space is fragmented succeeding once the gap closes.
#include "engine/buffer_pool.h"

#include <gtest/gtest.h>

#include <cstdint>

#include "engine/io_ring.h"

namespace kcopyfs {
namespace {

TEST(BufferPool, FirstFitCoalescingAndFragmentation) {
  BufferPool pool(16, nullptr);
  EXPECT_EQ(pool.capacity_pages(), 16u);
  auto a = pool.allocate(4);
  auto b = pool.allocate(4);
  auto c = pool.allocate(4);
  auto d = pool.allocate(4);
  ASSERT_TRUE(a && b && c && d);
  EXPECT_EQ(a->first_page, 0u);
  EXPECT_EQ(b->first_page, 4u);
  EXPECT_EQ(c->first_page, 8u);
  EXPECT_EQ(d->first_page, 12u);
  EXPECT_EQ(a->pages, 4u);
  EXPECT_EQ(a->bytes.size(), 4 * kPageSize);
  EXPECT_EQ(b->bytes.data(), a->bytes.data() + 4 * kPageSize);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a->bytes.data()) % kPageSize, 0u);
  EXPECT_EQ(a->fixed.index, -1) << "no ring, no registration";
  EXPECT_EQ(pool.pages_in_use(), 16u);
  EXPECT_FALSE(pool.allocate(1)) << "the pool is full";

  // Free b and d: 8 pages free, but no run of 8.
  pool.release(*b);
  pool.release(*d);
  EXPECT_EQ(pool.pages_in_use(), 8u);
  EXPECT_FALSE(pool.allocate(8)) << "fragmented";
  EXPECT_FALSE(pool.allocate(5));

  // First fit: the lowest run that is long enough.
  auto e = pool.allocate(2);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->first_page, 4u);
  auto f = pool.allocate(3);
  ASSERT_TRUE(f);
  EXPECT_EQ(f->first_page, 12u) << "the run at 6 has only 2 pages";
  pool.release(*e);
  pool.release(*f);

  // Releasing c joins its neighbours on both sides: 4..16 is one run of 12.
  pool.release(*c);
  auto g = pool.allocate(12);
  ASSERT_TRUE(g);
  EXPECT_EQ(g->first_page, 4u);
  EXPECT_FALSE(pool.allocate(1));
  pool.release(*g);
  pool.release(*a);
  EXPECT_EQ(pool.pages_in_use(), 0u);
  auto all = pool.allocate(16);
  ASSERT_TRUE(all) << "everything coalesced back into one run";
  EXPECT_EQ(all->first_page, 0u);
  pool.release(*all);
  EXPECT_EQ(pool.peak_pages_in_use(), 16u);
}

TEST(BufferPool, ReleaseInAnyOrderCoalesces) {
  BufferPool pool(64, nullptr);
  std::vector<PoolBuffer> bufs;
  for (int i = 0; i < 64; ++i) bufs.push_back(*pool.allocate(1));
  // Release odd pages first, then even ones: every release must join whatever neighbours are free.
  for (int i = 1; i < 64; i += 2) pool.release(bufs[i]);
  EXPECT_FALSE(pool.allocate(2));
  for (int i = 0; i < 64; i += 2) pool.release(bufs[i]);
  auto all = pool.allocate(64);
  ASSERT_TRUE(all);
  EXPECT_EQ(all->first_page, 0u);
  pool.release(*all);
}

TEST(BufferPool, RegisteredWithARingWhenPossible) {
  IoRing::Options o;
  o.entries = 8;
  o.fixed_buffer_slots = 2;
  auto ring = IoRing::create(o);
  ASSERT_TRUE(ring.ok()) << ring.error().message();
  BufferPool pool(8, ring.value().get());
  auto a = pool.allocate(8);
  ASSERT_TRUE(a);
  // Registration is best effort; when it worked, every buffer names the ring and the slot.
  if (a->fixed.index >= 0) {
    EXPECT_EQ(a->fixed.ring, ring.value().get());
  }
  pool.release(*a);
}

}  // namespace
}  // namespace kcopyfs
