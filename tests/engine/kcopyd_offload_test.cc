// Copy offload (a kcopyfs extension, engine/kcopyd.h): one file destination on the source's filesystem is
// copied by the kernel (FICLONERANGE or copy_file_range); anything else goes through kcopyd's reads and
// writes.
#include <gtest/gtest.h>

#include "tests/engine/engine_test_util.h"

namespace kcopyfs::test {
namespace {

constexpr uint64_t kSize = 8 * MiB;

struct Files {
  TempDir dir;
  std::unique_ptr<FileDevice> src, d0, d1;
  Files() {
    write_pattern_file(dir.file("src"), kSize, 70);
    make_sparse_file(dir.file("d0"), kSize);
    make_sparse_file(dir.file("d1"), kSize);
    src = open_device(dir.file("src"));
    d0 = open_device(dir.file("d0"));
    d1 = open_device(dir.file("d1"));
  }
};

KcopydStats copy(FileDevice& src, Sector src_start, Sector count, std::vector<Region> dests,
                 bool allow_offload) {
  KcopydOptions o;
  o.allow_offload = allow_offload;
  auto client = make_client(o);
  Callbacks cb;
  EXPECT_TRUE(client->copy(Region{&src, src_start, count}, dests, {}, cb.make()).ok());
  EXPECT_TRUE(cb.wait_all());
  EXPECT_FALSE(cb.result().read_error);
  EXPECT_EQ(cb.result().write_errors, 0u);
  return client->stats();
}

TEST(KcopydOffload, SingleDestinationOnTheSameFilesystemIsOffloaded) {
  Files f;
  const Sector count = sectors_of_bytes(kSize);
  const KcopydStats s = copy(*f.src, Sector(0), count, {Region{f.d0.get(), Sector(0), count}}, true);
  EXPECT_EQ(s.bytes_offloaded, kSize);
  EXPECT_EQ(s.bytes_read, 0u);
  EXPECT_TRUE(file_matches_pattern(f.dir.file("d0"), 0, kSize, 70, 0));
}

TEST(KcopydOffload, UnalignedRangeIsCopiedCorrectly) {
  Files f;
  // Sector-aligned but not block-aligned: no clone; copy_file_range or the fallback must still be exact.
  const Sector src_start(3), dst_start(11);
  const Sector count = sectors_of_bytes(kSize) - Sector(16);
  const KcopydStats s = copy(*f.src, src_start, count, {Region{f.d0.get(), dst_start, count}}, true);
  EXPECT_EQ(s.bytes_offloaded + s.bytes_read, to_bytes(count).value());
  EXPECT_TRUE(file_matches_pattern(f.dir.file("d0"), to_bytes(dst_start).value(), to_bytes(count).value(), 70,
                                   to_bytes(src_start).value()));
  EXPECT_TRUE(file_is_zero(f.dir.file("d0"), 0, to_bytes(dst_start).value()));
}

TEST(KcopydOffload, TwoDestinationsAreNotOffloaded) {
  Files f;
  const Sector count = sectors_of_bytes(kSize);
  const KcopydStats s =
      copy(*f.src, Sector(0), count,
           {Region{f.d0.get(), Sector(0), count}, Region{f.d1.get(), Sector(0), count}}, true);
  EXPECT_EQ(s.bytes_offloaded, 0u);
  EXPECT_EQ(s.bytes_read, kSize);
  EXPECT_TRUE(file_matches_pattern(f.dir.file("d0"), 0, kSize, 70, 0));
  EXPECT_TRUE(file_matches_pattern(f.dir.file("d1"), 0, kSize, 70, 0));
}

TEST(KcopydOffload, DisallowedOffloadIsNotUsed) {
  Files f;
  const Sector count = sectors_of_bytes(kSize);
  const KcopydStats s = copy(*f.src, Sector(0), count, {Region{f.d0.get(), Sector(0), count}}, false);
  EXPECT_EQ(s.bytes_offloaded, 0u);
  EXPECT_EQ(s.bytes_read, kSize);
  EXPECT_TRUE(file_matches_pattern(f.dir.file("d0"), 0, kSize, 70, 0));
}

TEST(KcopydOffload, DestinationOnAnotherFilesystemIsNotOffloaded) {
  Files f;
  ShmDir shm;
  const std::string path = shm.file("dst");
  make_sparse_file(path, kSize);
  {
    auto other = open_device(path);
    ASSERT_NE(other->filesystem(), f.src->filesystem());
    const Sector count = sectors_of_bytes(kSize);
    const KcopydStats s = copy(*f.src, Sector(0), count, {Region{other.get(), Sector(0), count}}, true);
    EXPECT_EQ(s.bytes_offloaded, 0u);
    EXPECT_EQ(s.bytes_read, kSize);
    EXPECT_TRUE(file_matches_pattern(path, 0, kSize, 70, 0));
  }
}

}  // namespace
}  // namespace kcopyfs::test
