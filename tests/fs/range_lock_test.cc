#include "fs/range_lock.h"

#include <gtest/gtest.h>

#include <vector>

namespace kcopyfs::fs {
namespace {

TEST(RangeLock, DisjointAndSharedRangesAreGrantedAtOnce) {
  RangeLock lock;
  std::vector<RangeLock::Ticket> got;
  lock.lock(0, 512, true, [&](RangeLock::Ticket t) { got.push_back(t); });
  lock.lock(512, 1024, true, [&](RangeLock::Ticket t) { got.push_back(t); });
  lock.lock(2048, 4096, false, [&](RangeLock::Ticket t) { got.push_back(t); });
  lock.lock(1024 * 2, 4096, false, [&](RangeLock::Ticket t) { got.push_back(t); });
  EXPECT_EQ(got.size(), 4u);
  EXPECT_EQ(lock.waiting(), 0u);
  for (auto t : got) lock.unlock(t);
  EXPECT_EQ(lock.held(), 0u);
}

TEST(RangeLock, OverlappingExclusiveWaitsAndIsGrantedOnUnlock) {
  RangeLock lock;
  RangeLock::Ticket first = 0;
  RangeLock::Ticket second = 0;
  lock.lock(0, 4096, false, [&](RangeLock::Ticket t) { first = t; });
  lock.lock(1024, 1536, true, [&](RangeLock::Ticket t) { second = t; });
  ASSERT_NE(first, 0u);
  EXPECT_EQ(second, 0u);
  EXPECT_EQ(lock.waiting(), 1u);
  lock.unlock(first);
  EXPECT_NE(second, 0u);
  lock.unlock(second);
  EXPECT_EQ(lock.held(), 0u);
}

TEST(RangeLock, WaitersAreGrantedInOrderSoSharedCannotStarveExclusive) {
  RangeLock lock;
  std::vector<int> order;
  RangeLock::Ticket a = 0;
  lock.lock(0, 512, false, [&](RangeLock::Ticket t) { a = t; });
  RangeLock::Ticket b = 0;
  RangeLock::Ticket c = 0;
  lock.lock(0, 512, true, [&](RangeLock::Ticket t) {
    b = t;
    order.push_back(1);
  });
  // Shared, compatible with the holder, but queued behind the exclusive waiter.
  lock.lock(0, 512, false, [&](RangeLock::Ticket t) {
    c = t;
    order.push_back(2);
  });
  EXPECT_TRUE(order.empty());
  lock.unlock(a);
  EXPECT_EQ(order, std::vector<int>{1});
  lock.unlock(b);
  EXPECT_EQ(order, (std::vector<int>{1, 2}));
  lock.unlock(c);
}

}  // namespace
}  // namespace kcopyfs::fs
