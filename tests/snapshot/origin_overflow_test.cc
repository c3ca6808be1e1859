// A full COW store, seen from the Origin and Snapshot targets (kernel-dm-notes.md §2.4-§2.6, §2.8, §3.6):
//   - the store full on an ORIGIN write invalidates that snapshot for good (status "Invalid", EIO for reads
//     and writes, valid = 0 in the on-disk header, still invalid after re-attaching); the origin write itself
//     succeeds and every other snapshot keeps its exact content;
//   - the store full on a SNAPSHOT write fails that write with EIO and reports "Overflow"; reads keep
//   working;
//     the state is not persisted;
//   - the transient store, likewise;
//   - the invalidation is on disk before the origin write that caused it is acknowledged (the kernel writes
//   the
//     header synchronously before it lets the origin write go): otherwise a crash leaves a "valid" snapshot
//     whose chunk was overwritten.
// COW sizes are computed from the on-disk format so that exactly k data chunks fit.
#include <gtest/gtest.h>

#include <sstream>

#include "snapshot/persistent_format.h"
#include "tests/snapshot/origin_test_util.h"

namespace kcopyfs::test {
namespace {

constexpr uint64_t kOriginBytes = 1 << 20;  // 256 chunks of 4 KiB
constexpr uint64_t kSeed = 17;
constexpr uint64_t k4K = 4096;

// Bytes of a persistent COW device that holds exactly k data chunks: the header chunk, the metadata areas
// that k exceptions need, and the k data chunks (§3.2, §3.3, §3.6). The next allocation fails.
uint64_t persistent_cow_bytes(uint64_t k, Sector chunk) {
  const uint64_t epa = cow_format::exceptions_per_area(chunk);
  const uint64_t areas = (k + epa - 1) / epa;
  return (cow_format::kHeaderChunks + areas + k) * to_bytes(chunk).value();
}

std::string usage_status(uint64_t allocated, uint64_t total, uint64_t metadata) {
  std::ostringstream s;
  s << allocated << '/' << total << ' ' << metadata;
  return s.str();
}

std::error_code eio() { return std::error_code(EIO, std::generic_category()); }

class OverflowTest : public ::testing::Test {
 protected:
  void SetUp() override {
    write_pattern_file(dir_.file("origin.img"), kOriginBytes, kSeed);
    original_ = pattern(kSeed, 0, kOriginBytes);
    origin_model_ = original_;
    ASSERT_NO_FATAL_FAILURE(open_origin());
  }

  void open_origin() {
    auto o = Origin::create(open_file(dir_.file("origin.img")));
    ASSERT_TRUE(o.ok()) << o.error().message();
    origin_ = std::move(o).value();
    // These tests look at what is on disk when an origin write is acknowledged: acknowledged only once it
    // is on the device (origin_write_back_test.cc covers write-back).
    origin_->set_write_back_limit(Bytes(0));
  }

  std::string cow_path(const std::string& name) const { return dir_.file(name + ".cow"); }

  Snapshot* create(const std::string& name, uint64_t cow_bytes, Sector chunk, bool persistent, bool writable,
                   FaultyFile** fault = nullptr) {
    make_sparse_file(cow_path(name), cow_bytes);
    std::unique_ptr<BlockDevice> cow;
    if (fault != nullptr) {
      auto f = FaultyFile::open(cow_path(name));
      *fault = f.get();
      cow = std::move(f);
    } else {
      cow = open_file(cow_path(name));
    }
    SnapshotOptions options;
    options.chunk_size = chunk;
    options.persistent = persistent;
    options.writable = writable;
    auto s = origin_->create_snapshot(name, std::move(cow), options);
    EXPECT_TRUE(s.ok()) << s.error().message();
    return s.ok() ? s.value() : nullptr;
  }

  Snapshot* attach(const std::string& name, bool writable) {
    auto s = origin_->attach_snapshot(name, open_file(cow_path(name)), writable);
    EXPECT_TRUE(s.ok()) << s.error().message();
    return s.ok() ? s.value() : nullptr;
  }

  // Writes pattern data to the origin view and to the model.
  std::error_code origin_write(uint64_t offset, uint64_t length, uint64_t data_seed) {
    const auto data = pattern(data_seed, 0, length);
    const std::error_code ec = write_at(*origin_, offset, data);
    if (!ec) put(origin_model_, offset, data);
    return ec;
  }

  // Writes pattern data to a snapshot view and, when it succeeds, to its model.
  std::error_code snap_write(Snapshot& s, std::vector<std::byte>& model, uint64_t offset, uint64_t length,
                             uint64_t data_seed) {
    const auto data = pattern(data_seed, 0, length);
    const std::error_code ec = write_at(s, offset, data);
    if (!ec) put(model, offset, data);
    return ec;
  }

  void expect_unreadable(Snapshot& s) {
    std::vector<std::byte> buf(k4K);
    EXPECT_EQ(read_at(s, 0, buf), eio()) << s.name() << ": a read of an invalid snapshot must fail with EIO";
    EXPECT_EQ(read_at(s, 100 * k4K, buf), eio());
    if (!s.read_only()) {
      EXPECT_EQ(write_at(s, 3 * k4K, buf), eio())
          << s.name() << ": a write to an invalid snapshot must fail with EIO";
    }
  }

  TempDir dir_;
  std::vector<std::byte> original_;
  std::vector<std::byte> origin_model_;
  std::unique_ptr<Origin> origin_;
};

TEST_F(OverflowTest, PersistentStoreFullOnOriginWriteInvalidatesOnlyThatSnapshot) {
  constexpr uint64_t k = 5;
  const uint64_t small_bytes = persistent_cow_bytes(k, Sector(8));
  ASSERT_EQ(small_bytes, (2 + k) * k4K);
  Snapshot* small = create("small", small_bytes, Sector(8), true, true);
  Snapshot* big = create("big", 4 << 20, Sector(16), true, false);
  ASSERT_TRUE(small && big);
  const uint64_t total = small_bytes / 512;
  EXPECT_EQ(small->status().kernel_status(), usage_status(16, total, 16));

  // k origin writes to distinct chunks: each takes one data chunk of the small store.
  for (uint64_t i = 0; i < k; ++i) {
    const uint64_t chunk = 7 * i + 3;
    ASSERT_FALSE(origin_write(chunk * k4K + 1024, 1024, 100 + i));
    const SnapshotStatus st = small->status();
    EXPECT_TRUE(st.valid);
    EXPECT_EQ(st.exceptions, i + 1);
    EXPECT_EQ(st.kernel_status(), usage_status((2 + i + 1) * 8, total, 16)) << "after " << i + 1 << " writes";
  }
  EXPECT_TRUE(same_bytes(read_all(*small), original_)) << "small, full but valid";
  EXPECT_TRUE(same_bytes(read_all(*big), original_));

  // The (k+1)-th chunk does not fit: the origin write succeeds, the small snapshot is invalid.
  ASSERT_FALSE(origin_write(60 * k4K, 2048, 200)) << "the origin write must succeed although a store is full";
  SnapshotStatus st = small->status();
  EXPECT_FALSE(st.valid);
  EXPECT_EQ(st.kernel_status(), "Invalid");
  EXPECT_EQ(header_valid_on_disk(cow_path("small")), 0u)
      << "the invalidation must be on disk once the origin write that caused it is acknowledged";
  expect_unreadable(*small);
  EXPECT_EQ(big->status().kernel_status().find("Invalid"), std::string::npos);
  EXPECT_TRUE(same_bytes(read_all(*big), original_)) << "another snapshot of the origin is unaffected";
  EXPECT_TRUE(same_bytes(read_all(*origin_), origin_model_));
  // Later origin writes skip the invalid snapshot.
  ASSERT_FALSE(origin_write(61 * k4K, k4K, 201));
  ASSERT_FALSE(origin_write(3 * k4K, k4K, 202));
  EXPECT_TRUE(same_bytes(read_all(*big), original_));

  // Closed and attached again: still invalid.
  origin_.reset();
  EXPECT_EQ(header_valid_on_disk(cow_path("small")), 0u);
  ASSERT_NO_FATAL_FAILURE(open_origin());
  small = attach("small", true);
  big = attach("big", false);
  ASSERT_TRUE(small && big);
  st = small->status();
  EXPECT_FALSE(st.valid);
  EXPECT_EQ(st.kernel_status(), "Invalid");
  expect_unreadable(*small);
  EXPECT_TRUE(same_bytes(read_all(*big), original_));
  EXPECT_TRUE(same_bytes(read_all(*origin_), origin_model_));
}

TEST_F(OverflowTest, PersistentStoreFullOnSnapshotWriteOverflows) {
  constexpr uint64_t k = 4;
  const uint64_t small_bytes = persistent_cow_bytes(k, Sector(8));
  Snapshot* small = create("small", small_bytes, Sector(8), true, true);
  Snapshot* other = create("other", 4 << 20, Sector(8), true, true);
  ASSERT_TRUE(small && other);
  const uint64_t total = small_bytes / 512;
  std::vector<std::byte> small_model = original_, other_model = original_;

  // k snapshot writes to distinct chunks, partial (copy first) and whole-chunk (no copy).
  ASSERT_FALSE(snap_write(*small, small_model, 2 * k4K + 512, 1024, 300));
  ASSERT_FALSE(snap_write(*small, small_model, 5 * k4K, k4K, 301));
  ASSERT_FALSE(snap_write(*small, small_model, 9 * k4K, 512, 302));
  ASSERT_FALSE(snap_write(*small, small_model, 12 * k4K, k4K, 303));
  EXPECT_EQ(small->status().kernel_status(), usage_status((2 + k) * 8, total, 16));

  // The next chunk does not fit: EIO, "Overflow"; reads still work.
  EXPECT_EQ(snap_write(*small, small_model, 20 * k4K + 1024, 512, 304), eio());
  SnapshotStatus st = small->status();
  EXPECT_TRUE(st.valid);
  EXPECT_TRUE(st.overflow);
  EXPECT_EQ(st.kernel_status(), "Overflow");
  EXPECT_TRUE(same_bytes(read_all(*small), small_model)) << "an overflowed snapshot stays readable";
  // Once overflowed, every write fails, even to a chunk the store holds (the kernel's snapshot_overflowed).
  EXPECT_EQ(snap_write(*small, small_model, 5 * k4K, 512, 305), eio());
  EXPECT_EQ(small->status().kernel_status(), "Overflow");

  // The origin and the other snapshot are unaffected.
  ASSERT_FALSE(snap_write(*other, other_model, 20 * k4K, 2048, 306));
  ASSERT_FALSE(origin_write(2 * k4K, k4K, 307));  // a chunk the small store holds already
  EXPECT_EQ(small->status().kernel_status(), "Overflow");
  EXPECT_TRUE(same_bytes(read_all(*small), small_model));
  EXPECT_TRUE(same_bytes(read_all(*other), other_model));
  EXPECT_TRUE(same_bytes(read_all(*origin_), origin_model_));
  EXPECT_EQ(header_valid_on_disk(cow_path("small")), 1u) << "overflow is not persisted";

  // Overflow is not persisted: re-attached, the store is full but writable where it holds chunks.
  origin_.reset();
  ASSERT_NO_FATAL_FAILURE(open_origin());
  small = attach("small", true);
  other = attach("other", true);
  ASSERT_TRUE(small && other);
  EXPECT_EQ(small->status().kernel_status(), usage_status((2 + k) * 8, total, 16));
  EXPECT_TRUE(same_bytes(read_all(*small), small_model));
  EXPECT_TRUE(same_bytes(read_all(*other), other_model));
  ASSERT_FALSE(snap_write(*small, small_model, 5 * k4K + 512, 512, 308));
  EXPECT_EQ(snap_write(*small, small_model, 21 * k4K, k4K, 309), eio());
  EXPECT_EQ(small->status().kernel_status(), "Overflow");
  EXPECT_TRUE(same_bytes(read_all(*small), small_model));

  // A full store on an origin write invalidates, overflowed or not (§2.4).
  ASSERT_FALSE(origin_write(30 * k4K, k4K, 310));
  EXPECT_EQ(small->status().kernel_status(), "Invalid");
  expect_unreadable(*small);
  EXPECT_TRUE(same_bytes(read_all(*other), other_model));
  EXPECT_TRUE(same_bytes(read_all(*origin_), origin_model_));
}

TEST_F(OverflowTest, TransientStoreFullInvalidatesOnOriginWriteAndOverflowsOnSnapshotWrite) {
  constexpr uint64_t k = 4;
  // The transient store has no header or metadata: k chunks of COW hold k exceptions (§2.8).
  Snapshot* t = create("t", k * k4K, Sector(8), false, false);
  Snapshot* p = create("p", 4 << 20, Sector(16), true, false);
  ASSERT_TRUE(t && p);
  EXPECT_EQ(t->status().kernel_status(), usage_status(0, k * 8, 0));
  for (uint64_t i = 0; i < k; ++i) {
    ASSERT_FALSE(origin_write((11 * i + 1) * k4K + 512, 512, 400 + i));
    EXPECT_EQ(t->status().kernel_status(), usage_status((i + 1) * 8, k * 8, 0));
  }
  EXPECT_TRUE(same_bytes(read_all(*t), original_));
  ASSERT_FALSE(origin_write(100 * k4K, k4K, 410));
  EXPECT_FALSE(t->status().valid);
  EXPECT_EQ(t->status().kernel_status(), "Invalid");
  expect_unreadable(*t);
  EXPECT_TRUE(same_bytes(read_all(*p), original_));
  EXPECT_TRUE(same_bytes(read_all(*origin_), origin_model_));

  // A writable transient snapshot whose store fills on a snapshot write.
  const std::vector<std::byte> at_tw = origin_model_;
  Snapshot* tw = create("tw", 2 * k4K, Sector(8), false, true);
  ASSERT_TRUE(tw);
  std::vector<std::byte> tw_model = at_tw;
  ASSERT_FALSE(snap_write(*tw, tw_model, 1 * k4K, k4K, 420));
  ASSERT_FALSE(snap_write(*tw, tw_model, 3 * k4K + 2048, 1024, 421));
  EXPECT_EQ(tw->status().kernel_status(), usage_status(16, 16, 0));
  EXPECT_EQ(snap_write(*tw, tw_model, 6 * k4K, 512, 422), eio());
  EXPECT_EQ(tw->status().kernel_status(), "Overflow");
  EXPECT_TRUE(same_bytes(read_all(*tw), tw_model));
  ASSERT_FALSE(origin_write(1 * k4K, 512, 423));  // tw holds that chunk: nothing changes for it
  EXPECT_EQ(tw->status().kernel_status(), "Overflow");
  EXPECT_TRUE(same_bytes(read_all(*tw), tw_model));
  ASSERT_FALSE(origin_write(7 * k4K, 512, 424));  // it does not hold this one: invalid
  EXPECT_EQ(tw->status().kernel_status(), "Invalid");
  expect_unreadable(*tw);
  EXPECT_TRUE(same_bytes(read_all(*p), original_));
  EXPECT_TRUE(same_bytes(read_all(*origin_), origin_model_));
}

// The kernel invalidates under the snapshot lock and writes the header synchronously (write_header from
// drop_snapshot) before the origin write that found the store full is let through; later origin writes skip
// the snapshot only once it is invalid. Here the header write is held back by the COW device; every origin
// write acknowledged in the meantime would be one whose chunk the snapshot lost while its header still says
// valid, so a crash would leave a corrupt "valid" snapshot (snapshot_crash_test shows that end to end).
TEST_F(OverflowTest, InvalidationIsOnDiskBeforeOriginWritesAreAcknowledged) {
  constexpr uint64_t k = 2;
  FaultyFile* cow = nullptr;
  Snapshot* small = create("small", persistent_cow_bytes(k, Sector(8)), Sector(8), true, false, &cow);
  Snapshot* big = create("big", 4 << 20, Sector(8), true, false);
  ASSERT_TRUE(small && big && cow);
  ASSERT_FALSE(origin_write(1 * k4K, k4K, 500));
  ASSERT_FALSE(origin_write(2 * k4K, k4K, 501));
  // The header write (chunk 0) reaches the file only after 300 ms.
  cow->fault().add_rule({FaultDevice::Op::write, Sector(0), Sector(8), 0, std::chrono::milliseconds(300)});

  const auto a = pattern(502, 0, k4K), b = pattern(503, 0, k4K);
  struct Ack {
    std::promise<std::error_code> done;
    uint32_t header_valid = 99;
  };
  auto ack_a = std::make_shared<Ack>(), ack_b = std::make_shared<Ack>();
  const std::string path = cow_path("small");
  auto on_ack = [path](std::shared_ptr<Ack> ack) {
    return [path, ack](std::error_code ec) {
      ack->header_valid = header_valid_on_disk(path);  // what a crash right now would find
      ack->done.set_value(ec);
    };
  };
  auto fa = ack_a->done.get_future(), fb = ack_b->done.get_future();
  origin_->write(Bytes(40 * k4K), a, on_ack(ack_a));  // the store is full: invalidates
  origin_->write(Bytes(41 * k4K), b, on_ack(ack_b));  // issued while the header write is in flight
  ASSERT_EQ(fa.wait_for(kWait), std::future_status::ready);
  ASSERT_EQ(fb.wait_for(kWait), std::future_status::ready);
  EXPECT_FALSE(fa.get());
  EXPECT_FALSE(fb.get());
  put(origin_model_, 40 * k4K, a);
  put(origin_model_, 41 * k4K, b);
  EXPECT_EQ(ack_a->header_valid, 0u)
      << "the origin write that overflowed the store was acknowledged while the "
         "header on disk still said valid";
  EXPECT_EQ(ack_b->header_valid, 0u) << "an origin write skipping the invalidated snapshot was acknowledged "
                                        "while the header on disk still said valid";
  EXPECT_EQ(small->status().kernel_status(), "Invalid");
  EXPECT_TRUE(same_bytes(read_all(*big), original_));
  EXPECT_TRUE(same_bytes(read_all(*origin_), origin_model_));
}

}  // namespace
}  // namespace kcopyfs::test
