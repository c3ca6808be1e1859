// TransientStore (kernel-dm-notes.md §2.8): chunk 0 holds data, sector-based allocation, asynchronous
// commits, no merge.
#include <gtest/gtest.h>

#include <thread>

#include "snapshot/transient_store.h"
#include "tests/snapshot/store_test_util.h"

namespace kcopyfs::test {
namespace {

std::unique_ptr<TransientStore> create_transient(BlockDevice& dev, Sector chunk = Sector(8)) {
  auto s = TransientStore::create(dev, chunk);
  if (!s) throw std::runtime_error(s.error().message());
  return std::move(s).value();
}

TEST(TransientStore, AllocatesFromChunkZeroUntilTheNextChunkDoesNotFit) {
  TempDir dir;
  // Three whole 8 KiB chunks and half of a fourth.
  CowImage cow(dir.file("cow.img"), 3 * 8192 + 4096);
  auto store = create_transient(cow.dev(), Sector(16));
  EXPECT_EQ(store->type_letter(), 'N');
  EXPECT_EQ(store->prepare_exception(), ChunkIndex(0));
  EXPECT_EQ(store->prepare_exception(), ChunkIndex(1));
  EXPECT_EQ(store->prepare_exception(), ChunkIndex(2));
  EXPECT_EQ(store->prepare_exception(), std::nullopt);
  const StoreUsage u = store->usage();
  EXPECT_EQ(u.allocated, Sector(48));
  EXPECT_EQ(u.total, Sector(56));
  EXPECT_EQ(u.metadata, Sector(0));
  EXPECT_TRUE(store->valid());
  EXPECT_TRUE(cow.fault->records().empty()) << "a transient store does no I/O";
}

TEST(TransientStore, CommitsCallBackOnAnotherThread) {
  TempDir dir;
  CowImage cow(dir.file("cow.img"), 1 << 20);
  auto store = create_transient(cow.dev());
  auto p = std::make_shared<std::promise<std::thread::id>>();
  auto f = p->get_future();
  store->commit_exception(Exception{ChunkIndex(5), *store->prepare_exception()}, true, [p](bool valid) {
    EXPECT_TRUE(valid);
    p->set_value(std::this_thread::get_id());
  });
  EXPECT_NE(wait_value(f), std::this_thread::get_id());
}

TEST(TransientStore, AFailedCopyOrInvalidateMakesItInvalid) {
  TempDir dir;
  CowImage cow(dir.file("cow.img"), 1 << 20);
  auto store = create_transient(cow.dev());
  EXPECT_TRUE(commit_sync(*store, 1, *store->prepare_exception()));
  EXPECT_FALSE(commit_sync(*store, 2, *store->prepare_exception(), /*copy_ok=*/false));
  EXPECT_FALSE(store->valid());
  EXPECT_FALSE(commit_sync(*store, 3, *store->prepare_exception()));
  auto other = create_transient(cow.dev());
  EXPECT_TRUE(invalidate_sync(*other));
  EXPECT_FALSE(other->valid());
}

TEST(TransientStore, CannotMerge) {
  TempDir dir;
  CowImage cow(dir.file("cow.img"), 1 << 20);
  auto store = create_transient(cow.dev());
  Exception last;
  EXPECT_EQ(store->prepare_merge(last), -EOPNOTSUPP);
  EXPECT_FALSE(commit_merge_sync(*store, 1));
}

TEST(TransientStore, RefusesABadChunkSize) {
  TempDir dir;
  CowImage cow(dir.file("cow.img"), 1 << 20);
  auto r = TransientStore::create(cow.dev(), Sector(3));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("not a power of 2"), std::string::npos) << r.error().message();
}

}  // namespace
}  // namespace kcopyfs::test
