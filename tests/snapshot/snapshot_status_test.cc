// Status strings and reloads (kernel-dm-notes.md §2.1, §3.9): kernel_status() is the kernel's
// "<allocated>/<total> <metadata>" in sectors, with allocated = next_free * chunk (header and metadata areas
// included), total = the COW size and metadata = (current_area + 2) * chunk for a persistent store, and
// "<next_free sectors>/<total> 0" for a transient one. The expected figures are computed here from those
// formulas and the area layout (§3.3, §3.6), not from the store's code.
//
// Reload: after every kind of operation (origin writes, snapshot writes, a merge interrupted by closing the
// origin) closing everything and attaching again gives the same status and the same content in every view.
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <sstream>

#include "tests/snapshot/origin_test_util.h"

namespace kcopyfs::test {
namespace {

std::string usage_status(uint64_t allocated, uint64_t total, uint64_t metadata) {
  std::ostringstream s;
  s << allocated << '/' << total << ' ' << metadata;
  return s.str();
}

struct SnapSetup {
  std::string name;
  Sector chunk;
  bool writable;
};

// An origin and its persistent snapshots on image files in a TempDir, with a model of every view, that can
// be closed and attached again. The origin device sits behind a FaultDevice (origin_fault()).
class Rig {
 public:
  Rig(uint64_t origin_bytes, uint64_t seed) : origin_bytes_(origin_bytes) {
    write_pattern_file(dir_.file("origin.img"), origin_bytes, seed);
    origin_model = pattern(seed, 0, origin_bytes);
    open();
  }

  void open() {
    auto dev = FaultyFile::open(dir_.file("origin.img"));
    origin_fault_ = &dev->fault();
    auto o = Origin::create(std::move(dev));
    if (!o) throw std::runtime_error(o.error().message());
    origin = std::move(o).value();
    // Usage is read right after writes are acknowledged: without write-back they are committed by then.
    origin->set_write_back_limit(Bytes(0));
    for (auto& [name, s] : snaps_) {
      auto snap = origin->attach_snapshot(name, open_file(cow(name)), s.writable);
      if (!snap) throw std::runtime_error(snap.error().message());
    }
  }
  void close() {
    origin.reset();
    origin_fault_ = nullptr;
  }

  Snapshot& create(const SnapSetup& setup, uint64_t cow_bytes) {
    make_sparse_file(cow(setup.name), cow_bytes);
    SnapshotOptions options;
    options.chunk_size = setup.chunk;
    options.writable = setup.writable;
    auto s = origin->create_snapshot(setup.name, open_file(cow(setup.name)), options);
    if (!s) throw std::runtime_error(s.error().message());
    snaps_[setup.name] = Model{setup.writable, origin_model};
    return *s.value();
  }
  // The snapshot is gone (merged): forget it.
  void forget(const std::string& name) { snaps_.erase(name); }

  Snapshot& snap(const std::string& name) {
    Snapshot* s = origin->find_snapshot(name);
    if (s == nullptr) throw std::runtime_error("no snapshot " + name);
    return *s;
  }
  std::vector<std::byte>& model(const std::string& name) { return snaps_.at(name).image; }

  void write(BlockDevice& view, std::vector<std::byte>& model, uint64_t offset, uint64_t length,
             uint64_t data) {
    const auto bytes = pattern(data, 0, length);
    const std::error_code ec = write_at(view, offset, bytes);
    ASSERT_FALSE(ec) << "write to " << view.path() << " at " << offset << ": " << ec.message();
    put(model, offset, bytes);
  }
  // n writes of random placement and size (1..64 sectors, sometimes up to 256) to one view.
  void random_writes(BlockDevice& view, std::vector<std::byte>& model, std::mt19937_64& rng, int n) {
    for (int i = 0; i < n; ++i) {
      const uint64_t sectors = origin_bytes_ / 512;
      const uint64_t len = 1 + rng() % (rng() % 4 == 0 ? 256 : 64);
      const uint64_t start = rng() % (sectors - len + 1);
      ASSERT_NO_FATAL_FAILURE(write(view, model, start * 512, len * 512, rng()));
    }
  }

  // Everything observable: the status line and exception count of every snapshot, and every view's bytes.
  struct Observed {
    std::map<std::string, std::string> status;
    std::map<std::string, uint64_t> exceptions;
    std::map<std::string, std::vector<std::byte>> content;  // "" is the origin
  };
  Observed observe() {
    Observed o;
    o.content[""] = read_all(*origin);
    for (auto& [name, m] : snaps_) {
      const SnapshotStatus st = snap(name).status();
      o.status[name] = st.kernel_status();
      o.exceptions[name] = st.exceptions;
      if (!st.merging) o.content[name] = read_all(snap(name));
    }
    return o;
  }
  // Every view equals its model.
  void expect_models(const Observed& o) {
    EXPECT_TRUE(same_bytes(o.content.at(""), origin_model)) << "origin";
    for (auto& [name, m] : snaps_) {
      if (o.content.count(name)) {
        EXPECT_TRUE(same_bytes(o.content.at(name), m.image)) << name;
      }
    }
  }
  // Closes everything, attaches again, and checks that nothing observable changed. Result: what was observed.
  Observed reload_and_compare(const char* after) {
    SCOPED_TRACE(std::string("reload after ") + after);
    Observed before = observe();
    expect_models(before);
    close();
    open();
    Observed again = observe();
    EXPECT_EQ(again.status, before.status);
    EXPECT_EQ(again.exceptions, before.exceptions);
    for (auto& [view, bytes] : before.content) {
      EXPECT_TRUE(same_bytes(again.content[view], bytes)) << (view.empty() ? "origin" : view);
    }
    return again;
  }

  FaultDevice& origin_fault() { return *origin_fault_; }
  std::string cow(const std::string& name) const { return dir_.file(name + ".cow"); }

  std::vector<std::byte> origin_model;
  std::unique_ptr<Origin> origin;

 private:
  struct Model {
    bool writable = false;
    std::vector<std::byte> image;
  };
  TempDir dir_;
  const uint64_t origin_bytes_;
  std::map<std::string, Model> snaps_;
  FaultDevice* origin_fault_ = nullptr;
};

TEST(SnapshotStatus, PersistentUsageFollowsTheKernelFormulasAndSurvivesReload) {
  for (const uint64_t c : {uint64_t{8}, uint64_t{16}}) {
    SCOPED_TRACE(::testing::Message() << "chunk " << c);
    constexpr uint64_t kCowBytes = 8 << 20;
    constexpr uint64_t N = kCowBytes / 512;
    const uint64_t chunk_bytes = c * 512;
    const uint64_t epa = c * 512 / 16;  // 16-byte records per one-chunk area
    Rig rig(8 << 20, 40 + c);
    rig.create({"s", Sector(c), true}, kCowBytes);
    // Fresh: the header and area 0 are allocated, both metadata.
    EXPECT_EQ(rig.snap("s").status().kernel_status(), usage_status(2 * c, N, 2 * c));
    rig.reload_and_compare("create");
    EXPECT_EQ(rig.snap("s").status().kernel_status(), usage_status(2 * c, N, 2 * c));

    // Three origin writes to distinct chunks, one of them spanning two chunks: four data chunks.
    ASSERT_NO_FATAL_FAILURE(rig.write(*rig.origin, rig.origin_model, 3 * chunk_bytes, 512, 1));
    ASSERT_NO_FATAL_FAILURE(rig.write(*rig.origin, rig.origin_model, 9 * chunk_bytes + 1024, chunk_bytes, 2));
    ASSERT_NO_FATAL_FAILURE(rig.write(*rig.origin, rig.origin_model, 30 * chunk_bytes, 1024, 3));
    EXPECT_EQ(rig.snap("s").status().kernel_status(), usage_status((2 + 4) * c, N, 2 * c));
    rig.reload_and_compare("origin writes");
    // A whole-chunk and a partial snapshot write to chunks without exceptions, and one to a chunk with one.
    ASSERT_NO_FATAL_FAILURE(rig.write(rig.snap("s"), rig.model("s"), 40 * chunk_bytes, chunk_bytes, 4));
    ASSERT_NO_FATAL_FAILURE(rig.write(rig.snap("s"), rig.model("s"), 41 * chunk_bytes + 512, 512, 5));
    ASSERT_NO_FATAL_FAILURE(rig.write(rig.snap("s"), rig.model("s"), 3 * chunk_bytes, 1024, 6));
    const uint64_t used = 6;  // exceptions so far
    EXPECT_EQ(rig.snap("s").status().exceptions, used);
    EXPECT_EQ(rig.snap("s").status().kernel_status(), usage_status((2 + used) * c, N, 2 * c));
    rig.reload_and_compare("snapshot writes");

    // Fill area 0 exactly with one large origin write: the next free chunk is then area 1's chunk
    // (1 + (epa + 1)), which is skipped, and the current area becomes 1.
    const uint64_t fill = epa - used;
    ASSERT_NO_FATAL_FAILURE(
        rig.write(*rig.origin, rig.origin_model, 100 * chunk_bytes, fill * chunk_bytes, 7));
    EXPECT_EQ(rig.snap("s").status().exceptions, epa);
    EXPECT_EQ(rig.snap("s").status().kernel_status(), usage_status((epa + 3) * c, N, 3 * c));
    rig.reload_and_compare("area 0 filled");
    EXPECT_EQ(rig.snap("s").status().kernel_status(), usage_status((epa + 3) * c, N, 3 * c));
    // Two more land in area 1's data chunks.
    ASSERT_NO_FATAL_FAILURE(rig.write(*rig.origin, rig.origin_model, 50 * chunk_bytes, 2 * chunk_bytes, 8));
    EXPECT_EQ(rig.snap("s").status().kernel_status(), usage_status((epa + 5) * c, N, 3 * c));
    rig.reload_and_compare("writes into area 1");
  }
}

TEST(SnapshotStatus, TransientUsageCountsSectorsWithoutMetadata) {
  TempDir dir;
  write_pattern_file(dir.file("origin.img"), 1 << 20, 5);
  auto origin = Origin::create(open_file(dir.file("origin.img")));
  ASSERT_TRUE(origin.ok());
  origin.value()->set_write_back_limit(Bytes(0));  // usage right after the acknowledgements
  for (const uint64_t c : {uint64_t{8}, uint64_t{16}}) {
    const std::string name = c == 8 ? "t8" : "t16";
    make_sparse_file(dir.file(name), 1 << 20);
    SnapshotOptions options;
    options.chunk_size = Sector(c);
    options.persistent = false;
    options.writable = true;
    ASSERT_TRUE(origin.value()->create_snapshot(name, open_file(dir.file(name)), options).ok());
  }
  Snapshot* t8 = origin.value()->find_snapshot("t8");
  Snapshot* t16 = origin.value()->find_snapshot("t16");
  const uint64_t N = (1 << 20) / 512;
  EXPECT_EQ(t8->status().kernel_status(), usage_status(0, N, 0));
  EXPECT_EQ(t16->status().kernel_status(), usage_status(0, N, 0));
  // An origin write over 8 KiB at 4 KiB: two 4K chunks, and two 8K chunks (it straddles them).
  ASSERT_FALSE(write_at(*origin.value(), 4096, pattern(1, 0, 8192)));
  EXPECT_EQ(t8->status().kernel_status(), usage_status(16, N, 0));
  EXPECT_EQ(t16->status().kernel_status(), usage_status(32, N, 0));
  ASSERT_FALSE(write_at(*t8, 40960, pattern(2, 0, 512)));
  EXPECT_EQ(t8->status().kernel_status(), usage_status(24, N, 0));
  EXPECT_EQ(t16->status().kernel_status(), usage_status(32, N, 0));
}

TEST(SnapshotStatus, ReloadAfterEveryKindOfOperationKeepsContentAndStatus) {
  constexpr uint64_t kOrigin = 4 << 20;
  Rig rig(kOrigin, 77);
  std::mt19937_64 rng(77);
  rig.create({"a", Sector(8), true}, 8 << 20);
  rig.create({"b", Sector(16), true}, 8 << 20);
  ASSERT_NO_FATAL_FAILURE(rig.random_writes(*rig.origin, rig.origin_model, rng, 30));
  rig.reload_and_compare("origin writes");
  rig.create({"c", Sector(128), false}, 8 << 20);
  ASSERT_NO_FATAL_FAILURE(rig.random_writes(rig.snap("a"), rig.model("a"), rng, 25));
  ASSERT_NO_FATAL_FAILURE(rig.random_writes(rig.snap("b"), rig.model("b"), rng, 25));
  rig.reload_and_compare("snapshot writes");
  ASSERT_NO_FATAL_FAILURE(rig.random_writes(*rig.origin, rig.origin_model, rng, 20));
  ASSERT_NO_FATAL_FAILURE(rig.random_writes(rig.snap("b"), rig.model("b"), rng, 10));
  rig.reload_and_compare("mixed writes");

  // A merge of b, interrupted by closing the origin: hold it at the origin flush of its second step (the
  // first step is then committed), close (which stops the merge after the step in progress), let it go.
  const uint64_t b_total = rig.snap("b").status().exceptions;
  ASSERT_GT(b_total, 10u);
  auto gate = Gate::make();
  rig.origin_fault().add_rule({FaultDevice::Op::flush, Sector(0), Sector(0), 0, {}, 1});
  rig.origin_fault().add_rule({FaultDevice::Op::flush, Sector(0), Sector(0), 0, {}, 1, Gate::hook(gate)});
  MergeResult merge;
  ASSERT_TRUE(rig.origin->start_merge("b", merge.callback()).ok());
  ASSERT_TRUE(gate->wait_reached()) << "the merge never reached its second step";
  // Mid-merge the origin view is b's image; the other snapshots keep theirs.
  EXPECT_TRUE(same_bytes(read_all(*rig.origin), rig.model("b"))) << "origin view while merging";
  EXPECT_TRUE(same_bytes(read_all(rig.snap("a")), rig.model("a")));
  EXPECT_TRUE(same_bytes(read_all(rig.snap("c")), rig.model("c")));
  run_bounded(
      [&] {
        std::thread closer([&] { rig.close(); });
        gate->open();
        closer.join();
      },
      "closing the origin during a merge");
  rig.open();
  {
    SCOPED_TRACE("after the interrupted merge");
    const uint64_t left = rig.snap("b").status().exceptions;
    EXPECT_LT(left, b_total - 1) << "two steps were committed";
    EXPECT_GT(left, 0u) << "the merge should have been interrupted, not completed";
    // b's view is still its image; the origin device holds, per chunk of b, the old or b's data.
    const Rig::Observed o = rig.observe();
    EXPECT_TRUE(same_bytes(o.content.at("b"), rig.model("b")));
    EXPECT_TRUE(same_bytes(o.content.at("a"), rig.model("a")));
    EXPECT_TRUE(same_bytes(o.content.at("c"), rig.model("c")));
    const auto& dev = o.content.at("");
    const uint64_t cb = 16 * 512;
    uint64_t merged = 0;
    for (uint64_t off = 0; off < kOrigin; off += cb) {
      auto at = [&](const std::vector<std::byte>& v) { return v.begin() + static_cast<long>(off); };
      const bool old_data = std::equal(at(dev), at(dev) + cb, at(rig.origin_model));
      const bool merged_data = std::equal(at(dev), at(dev) + cb, at(rig.model("b")));
      EXPECT_TRUE(old_data || merged_data) << "origin chunk " << off / cb << " is neither old nor merged";
      merged += merged_data && !old_data;
    }
    EXPECT_GT(merged, 0u);
    // Reloading the half-merged state changes nothing (the origin view is the device: not merging now).
    rig.origin_model = dev;
    rig.reload_and_compare("an interrupted merge");
  }
  // The merge resumes and completes.
  MergeResult resumed;
  ASSERT_TRUE(rig.origin->start_merge("b", resumed.callback()).ok());
  EXPECT_TRUE(same_bytes(read_all(*rig.origin), rig.model("b"))) << "origin view of the resumed merge";
  const Status st = resumed.wait();
  ASSERT_TRUE(st.ok()) << st.error().message();
  EXPECT_EQ(rig.origin->find_snapshot("b"), nullptr);
  rig.origin_model = rig.model("b");
  rig.forget("b");
  rig.reload_and_compare("a completed merge");
}

}  // namespace
}  // namespace kcopyfs::test
