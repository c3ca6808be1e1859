// Crash replay of the snapshot and mirror targets (docs: /work/notes/crash_replay.md). Each workload runs
// in-process over RecordingDevices on in-memory images, keeping a model of what its user was acknowledged;
// then, for every flush completion of the log and some points in between, and for the prefix plus random
// variants of the writes not yet flushed (present, absent, torn at 512 B), the devices are rebuilt as the
// power cut would leave them and opened with the real loaders, and the result is checked against the model.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "mirror/disk_log.h"
#include "mirror/mirror.h"
#include "snapshot/origin.h"
#include "snapshot/persistent_format.h"
#include "snapshot/persistent_store.h"
#include "tests/crash_replay/replay.h"
#include "tests/crash_replay/replay_harness.h"

namespace kcopyfs::replay {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint64_t kOriginBytes = 1 << 20;  // 256 4K chunks, 16 64K chunks
constexpr uint64_t kBlock = 4096;
// Random cut points added between the flush completions of a log.
constexpr unsigned kExtraCuts = 24;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// A random 4K-aligned range of 1..max_blocks blocks inside a device of `size` bytes.
std::pair<uint64_t, uint64_t> random_range(std::mt19937_64& rng, uint64_t size, uint64_t max_blocks) {
  const uint64_t blocks = size / kBlock;
  const uint64_t first = rng() % blocks;
  const uint64_t n = std::min<uint64_t>(1 + rng() % max_blocks, blocks - first);
  return {first * kBlock, n * kBlock};
}

// n random ranges that do not overlap (1 or 2 blocks, each in its own 8 KiB slot), for concurrent batches.
std::vector<std::pair<uint64_t, uint64_t>> disjoint_ranges(std::mt19937_64& rng, uint64_t size, unsigned n) {
  const uint64_t slots = size / (2 * kBlock);
  std::vector<uint64_t> picked;
  while (picked.size() < n) {
    const uint64_t s = rng() % slots;
    if (std::find(picked.begin(), picked.end(), s) == picked.end()) picked.push_back(s);
  }
  std::vector<std::pair<uint64_t, uint64_t>> out;
  for (uint64_t s : picked) out.push_back({s * 2 * kBlock, (1 + rng() % 2) * kBlock});
  return out;
}

bool has_cow_header(const Image& cow) {
  return cow_format::load_le32(cow.data()) != 0;  // the magic; a new COW device is all zeros
}

// Runs check(cut, variant, images) for every cut and variant; stops at the first failing case, naming it.
template <class Check>
void replay_all(const char* workload, Rig& rig, uint64_t seed, unsigned variants, uint64_t from,
                Check check) {
  const auto events = rig.log.events();
  const auto initial = rig.initial();
  std::mt19937_64 rng(seed ^ 0xC0FFEE);
  const auto cuts = cut_points(events, kExtraCuts, rng, from);
  ReplayTotals totals;
  totals.events = events.size();
  totals.cuts = cuts.size();
  for (uint64_t cut : cuts) {
    totals.flush_cuts += events[cut - 1].kind == WriteEvent::Kind::flush_completed ? 1 : 0;
    totals.in_flush_cuts +=
        cut < events.size() && events[cut].kind == WriteEvent::Kind::flush_completed ? 1 : 0;
  }
  const auto start = Clock::now();
  for (uint64_t cut : cuts) {
    for (unsigned v = 0; v <= variants; ++v) {
      auto crng = case_rng(seed, cut, v);
      auto images = rebuild(events, initial, cut, v, crng, &totals.writes);
      ++totals.images;
      check(cut, images);
      if (::testing::Test::HasFailure()) {
        ADD_FAILURE() << workload << ": failing case seed=" << seed << " cut=" << cut << " variant=" << v
                      << " (events " << events.size() << "; the event before the cut: "
                      << (cut > 0 && !events[cut - 1].label.empty() ? events[cut - 1].label
                                                                    : "a device event")
                      << ")";
        totals.print(workload, seed, variants, seconds_since(start));
        return;
      }
    }
  }
  totals.print(workload, seed, variants, seconds_since(start));
}

struct SnapDef {
  std::string name;
  Sector chunk;
  bool writable;
  DeviceId cow = 0;
  uint64_t issued = UINT64_MAX, returned = UINT64_MAX;
  std::unique_ptr<ViewModel> view;  // its image at creation, and its own writes (writable)
  Snapshot* live = nullptr;
  // Replayed cases with the create issued but not acknowledged: the header absent, or there (and checked).
  uint64_t unacked_absent = 0, unacked_present = 0;
};

void print_unacked(const std::vector<SnapDef>& snaps) {
  for (const auto& s : snaps)
    std::printf("[replay]   %s: cases between create issued and returned: %" PRIu64
                " without header, %" PRIu64 " with (loaded and checked)\n",
                s.name.c_str(), s.unacked_absent, s.unacked_present);
}

SnapDef snap_def(std::string name, Sector chunk, bool writable) {
  SnapDef s;
  s.name = std::move(name);
  s.chunk = chunk;
  s.writable = writable;
  return s;
}

// Flushes the origin (as the README asks: fsfreeze before a snapshot), then creates s with markers around.
void create_snapshot(Origin& origin, Rig& rig, ViewModel& origin_view, SnapDef& s) {
  origin_view.flush(origin, rig.log);
  s.issued = rig.log.mark("create " + s.name + " issued");
  auto r = origin.create_snapshot(s.name, rig.recorder(s.cow), SnapshotOptions{s.chunk, true, s.writable});
  ASSERT_TRUE(r) << r.error().message();
  s.returned = rig.log.mark("create " + s.name + " returned");
  s.view = std::make_unique<ViewModel>(s.name, origin_view.now());
  s.live = r.value();
}

void add_cows(Rig& rig, std::vector<SnapDef>& snaps) {
  for (auto& s : snaps)
    s.cow = rig.add(s.name, Image(PersistentStore::device_size_for(Bytes(kOriginBytes), s.chunk).value()));
}

// Attaches every snapshot found on the rebuilt COWs: one acknowledged before the cut must be there; one not
// acknowledged may be absent (no header) or there. Each must load, be valid and equal its model.
void attach_and_check(Origin& origin, std::vector<SnapDef>& snaps, std::vector<Image>& images, uint64_t cut,
                      std::vector<std::pair<const SnapDef*, Snapshot*>>* attached = nullptr) {
  for (auto& s : snaps) {
    const bool acked = s.returned < cut;
    if (!acked && cut > s.issued) ++(has_cow_header(images[s.cow]) ? s.unacked_present : s.unacked_absent);
    if (!has_cow_header(images[s.cow])) {
      EXPECT_FALSE(acked) << s.name << ": created (acknowledged at event " << s.returned
                          << ") but its COW has no header";
      continue;
    }
    EXPECT_GE(cut, s.issued) << s.name << ": a header before the create was issued";
    auto r =
        origin.attach_snapshot(s.name, std::make_unique<MemoryDevice>(s.name, images[s.cow]), s.writable);
    ASSERT_TRUE(r) << s.name << " does not load: " << r.error().message();
    Snapshot* snap = r.value();
    ASSERT_TRUE(snap->status().valid) << s.name << " loaded invalid";
    // Not acknowledged: the create had not returned, so no origin write can have reached it yet.
    if (!acked) {
      EXPECT_EQ(snap->status().exceptions, 0u) << s.name << ": exceptions before its create returned";
    }
    EXPECT_TRUE(s.view->check(read_view(*snap), cut));
    if (attached != nullptr) attached->push_back({&s, snap});
  }
}

// Snapshots with 4K, 8K and 64K chunks (the 8K one writable) over a 1 MiB origin: creates, origin writes
// (single and concurrent), snapshot writes, fsyncs of both views.
TEST(CrashReplay, SnapshotWorkload) {
  const uint64_t seed = replay_seed();
  const unsigned variants = replay_variants(2);
  std::printf("[replay] SnapshotWorkload seed=%" PRIu64 " (KCOPYFS_REPLAY_SEED repeats it)\n", seed);
  std::mt19937_64 rng(seed);
  Rig rig;
  const DeviceId origin_id = rig.add("origin", test::pattern(seed ^ 0x51, 0, kOriginBytes));
  std::vector<SnapDef> snaps;
  snaps.push_back(snap_def("s4k", Sector(8), false));
  snaps.push_back(snap_def("s8k", Sector(16), true));
  snaps.push_back(snap_def("s64k", Sector(128), false));
  add_cows(rig, snaps);
  ViewModel origin_view("origin", rig.initial()[origin_id]);
  uint64_t uid = seed * 1000;
  {
    auto created = Origin::create(rig.recorder(origin_id));
    ASSERT_TRUE(created) << created.error().message();
    auto& origin = *created.value();
    auto owrites = [&](unsigned n) {
      for (unsigned i = 0; i < n && !::testing::Test::HasFatalFailure(); ++i) {
        const auto [off, len] = random_range(rng, kOriginBytes, 4);
        origin_view.write(origin, rig.log, off, len, uid++);
      }
    };
    auto swrites = [&](SnapDef& s, unsigned n) {
      for (unsigned i = 0; i < n && !::testing::Test::HasFatalFailure(); ++i) {
        const auto [off, len] = random_range(rng, kOriginBytes, 3);
        s.view->write(*s.live, rig.log, off, len, uid++);
      }
    };
    owrites(5);
    origin_view.flush(origin, rig.log);
    create_snapshot(origin, rig, origin_view, snaps[0]);
    ASSERT_FALSE(HasFatalFailure());
    owrites(6);
    origin_view.write_batch(origin, rig.log, disjoint_ranges(rng, kOriginBytes, 6), uid += 10);
    origin_view.flush(origin, rig.log);
    owrites(3);  // unflushed until the next create's fsync
    create_snapshot(origin, rig, origin_view, snaps[1]);
    ASSERT_FALSE(HasFatalFailure());
    owrites(5);
    swrites(snaps[1], 6);
    snaps[1].view->flush(*snaps[1].live, rig.log);
    origin_view.flush(origin, rig.log);
    swrites(snaps[1], 3);  // unflushed
    owrites(3);
    create_snapshot(origin, rig, origin_view, snaps[2]);
    ASSERT_FALSE(HasFatalFailure());
    origin_view.write_batch(origin, rig.log, disjoint_ranges(rng, kOriginBytes, 8), uid += 10);
    owrites(4);
    origin_view.flush(origin, rig.log);
    swrites(snaps[1], 3);
    snaps[1].view->flush(*snaps[1].live, rig.log);
    owrites(3);  // unflushed at the end
    ASSERT_FALSE(HasFatalFailure());
  }  // the origin closes (waits for its commits)
  std::printf("[replay] SnapshotWorkload: %zu origin writes, %zu origin fsyncs, %zu snapshot writes\n",
              origin_view.write_count(), origin_view.flush_count(), snaps[1].view->write_count());

  replay_all("SnapshotWorkload", rig, seed, variants, 0, [&](uint64_t cut, std::vector<Image>& images) {
    auto origin = Origin::create(std::make_unique<MemoryDevice>("origin", images[origin_id]));
    ASSERT_TRUE(origin) << origin.error().message();
    std::vector<std::pair<const SnapDef*, Snapshot*>> attached;
    attach_and_check(*origin.value(), snaps, images, cut, &attached);
    Image origin_now = read_view(*origin.value());
    EXPECT_TRUE(origin_view.check(origin_now, cut));
    if (::testing::Test::HasFailure()) return;
    // Life goes on after the crash: writes that make new exceptions behind whatever the cut left in the
    // metadata areas (a torn area's leftovers must not come back), fsyncs, a clean close; then everything
    // must reopen exactly as it was last seen.
    std::vector<Image> snap_now;
    for (const auto& [def, snap] : attached) snap_now.push_back(read_view(*snap));
    std::mt19937_64 urng(cut * 31 + 7);
    for (unsigned k = 0; k < 3; ++k) {
      const auto [off, len] = random_range(urng, kOriginBytes, 2);
      const auto data = test::pattern(urng(), 0, len);
      ASSERT_FALSE(wait_for([&](IoCallback cb) { origin.value()->write(Bytes(off), data, std::move(cb)); },
                            "origin write after the crash"));
      std::memcpy(origin_now.data() + off, data.data(), len);
    }
    ASSERT_FALSE(wait_for([&](IoCallback cb) { origin.value()->flush(std::move(cb)); }, "origin fsync"));
    for (size_t i = 0; i < attached.size(); ++i) {
      if (!attached[i].first->writable) continue;
      const auto [off, len] = random_range(urng, kOriginBytes, 2);
      const auto data = test::pattern(urng(), 0, len);
      Snapshot& snap = *attached[i].second;
      ASSERT_FALSE(wait_for([&](IoCallback cb) { snap.write(Bytes(off), data, std::move(cb)); },
                            "snapshot write after the crash"));
      std::memcpy(snap_now[i].data() + off, data.data(), len);
      ASSERT_FALSE(wait_for([&](IoCallback cb) { snap.flush(std::move(cb)); }, "snapshot fsync"));
    }
    origin.value().reset();
    auto again = Origin::create(std::make_unique<MemoryDevice>("origin", images[origin_id]));
    ASSERT_TRUE(again) << again.error().message();
    for (size_t i = 0; i < attached.size(); ++i) {
      const SnapDef& def = *attached[i].first;
      auto r = again.value()->attach_snapshot(
          def.name, std::make_unique<MemoryDevice>(def.name, images[def.cow]), def.writable);
      ASSERT_TRUE(r) << def.name << " does not load after use past the crash: " << r.error().message();
      EXPECT_TRUE(r.value()->status().valid) << def.name;
      EXPECT_TRUE(same_image(read_view(*r.value()), snap_now[i]))
          << def.name << " changed across use after the crash and a reopen";
    }
    EXPECT_TRUE(same_image(read_view(*again.value()), origin_now))
        << "the origin changed across use after the crash and a reopen";
  });
  print_unacked(snaps);
}

// A merge run to its end, with writes to the origin while it runs and another snapshot that must keep its
// image. Every cut from the merge's start is reopened, the merge resumed and waited for.
TEST(CrashReplay, MergeWorkload) {
  const uint64_t seed = replay_seed() + 1;
  const unsigned variants = replay_variants(2);
  std::printf("[replay] MergeWorkload seed=%" PRIu64 " (KCOPYFS_REPLAY_SEED=%" PRIu64 " repeats it)\n", seed,
              seed - 1);
  std::mt19937_64 rng(seed);
  Rig rig;
  const DeviceId origin_id = rig.add("origin", test::pattern(seed ^ 0x52, 0, kOriginBytes));
  std::vector<SnapDef> snaps;
  snaps.push_back(snap_def("keep", Sector(16), false));
  snaps.push_back(snap_def("merge", Sector(8), true));
  add_cows(rig, snaps);
  ViewModel origin_view("origin", rig.initial()[origin_id]);
  std::unique_ptr<ViewModel>
      merged_view;  // the origin from the merge's start: the snapshot's image, then writes
  uint64_t merge_issued = 0;
  uint64_t uid = seed * 1000;
  {
    auto created = Origin::create(rig.recorder(origin_id));
    ASSERT_TRUE(created) << created.error().message();
    auto& origin = *created.value();
    auto owrites = [&](ViewModel& view, unsigned n) {
      for (unsigned i = 0; i < n && !::testing::Test::HasFatalFailure(); ++i) {
        const auto [off, len] = random_range(rng, kOriginBytes, 4);
        view.write(origin, rig.log, off, len, uid++);
      }
    };
    owrites(origin_view, 4);
    create_snapshot(origin, rig, origin_view, snaps[0]);
    ASSERT_FALSE(HasFatalFailure());
    owrites(origin_view, 6);
    create_snapshot(origin, rig, origin_view, snaps[1]);
    ASSERT_FALSE(HasFatalFailure());
    owrites(origin_view, 12);
    origin_view.write_batch(origin, rig.log, disjoint_ranges(rng, kOriginBytes, 8), uid += 10);
    for (unsigned i = 0; i < 4; ++i) {
      const auto [off, len] = random_range(rng, kOriginBytes, 2);
      snaps[1].view->write(*snaps[1].live, rig.log, off, len, uid++);
    }
    snaps[1].view->flush(*snaps[1].live, rig.log);
    origin_view.flush(origin, rig.log);
    ASSERT_FALSE(HasFatalFailure());

    merged_view = std::make_unique<ViewModel>("origin (merged)", snaps[1].view->now());
    StatusWaiter done;
    merge_issued = rig.log.mark("merge start issued");
    auto st = origin.start_merge("merge", done.callback());
    ASSERT_TRUE(st) << st.error().message();
    rig.log.mark("merge start returned");
    owrites(*merged_view, 4);
    merged_view->flush(origin, rig.log);
    owrites(*merged_view, 2);
    const Status result = done.wait();
    ASSERT_TRUE(result) << result.error().message();
    rig.log.mark("merge finished");
    owrites(*merged_view, 2);
    merged_view->flush(origin, rig.log);
    ASSERT_FALSE(HasFatalFailure());
  }

  // From the merge's start the merging snapshot's content is the merged origin's: writes to the origin view
  // go to its COW store for chunks not merged yet. Reattached after a cut, its view must show exactly that.
  snaps[1].view = std::make_unique<ViewModel>(*merged_view);

  replay_all("MergeWorkload", rig, seed, variants, merge_issued,
             [&](uint64_t cut, std::vector<Image>& images) {
               auto created = Origin::create(std::make_unique<MemoryDevice>("origin", images[origin_id]));
               ASSERT_TRUE(created) << created.error().message();
               auto& origin = *created.value();
               attach_and_check(origin, snaps, images, cut);
               ASSERT_FALSE(::testing::Test::HasFailure());
               StatusWaiter done;
               auto st = origin.start_merge("merge", done.callback());
               ASSERT_TRUE(st) << "the merge does not resume: " << st.error().message();
               const Status result = done.wait();
               ASSERT_TRUE(result) << "the resumed merge failed: " << result.error().message();
               EXPECT_EQ(origin.find_snapshot("merge"), nullptr) << "the merged snapshot is still there";
               EXPECT_TRUE(merged_view->check(read_view(origin), cut));
               Snapshot* keep = origin.find_snapshot("keep");
               ASSERT_NE(keep, nullptr);
               EXPECT_TRUE(snaps[0].view->check(read_view(*keep), cut));
             });
}

constexpr Sector kRegion = Sector(128);  // 64 KiB: 16 regions
constexpr uint64_t kLegBytes = 1 << 20;

MirrorOptions replay_mirror_options() {
  MirrorOptions o;
  o.region_size = kRegion;
  o.update_interval = std::chrono::milliseconds(20);
  o.kcopyd_pages =
      256;  // 1 MiB: a whole window of 64 KiB regions (the default 32 MiB per open is wasted here)
  o.resync_window = 8;
  return o;
}

Mirror::LogFactory disk_log_on(BlockDevice& log_device) {
  return [&log_device](Sector size, FlushLegs flush_legs) -> Result<std::unique_ptr<DirtyLog>> {
    auto log = DiskLog::open(log_device, kRegion, size, SyncMode::by_log, std::move(flush_legs));
    if (!log) return log.error();
    return std::unique_ptr<DirtyLog>(std::move(log).value());
  };
}

// A three-leg mirror with a disk log: created over legs that differ (a full resync from leg 0), writes and
// fsyncs while it resyncs and after, then leg 2 replaced by a fourth device (resynced) while writes go on.
TEST(CrashReplay, MirrorWorkload) {
  const uint64_t seed = replay_seed() + 2;
  const unsigned variants = replay_variants(2);
  std::printf("[replay] MirrorWorkload seed=%" PRIu64 " (KCOPYFS_REPLAY_SEED=%" PRIu64 " repeats it)\n", seed,
              seed - 2);
  std::mt19937_64 rng(seed);
  Rig rig;
  std::vector<DeviceId> legs;
  for (unsigned i = 0; i < 4; ++i)
    legs.push_back(rig.add("leg" + std::to_string(i), test::pattern(seed * 8 + i, 0, kLegBytes)));
  const DeviceId log_id =
      rig.add("log", Image(DiskLog::device_size_for(to_sectors(Bytes(kLegBytes)), kRegion).value()));
  ViewModel view("mirror", rig.initial()[legs[0]]);
  uint64_t replace_returned = UINT64_MAX;
  uint64_t uid = seed * 1000;
  {
    auto log_device = rig.recorder(log_id);
    std::vector<std::unique_ptr<BlockDevice>> devices;
    for (unsigned i = 0; i < 3; ++i) devices.push_back(rig.recorder(legs[i]));
    rig.log.mark("mirror create issued");
    auto created = Mirror::create(std::move(devices), disk_log_on(*log_device), replay_mirror_options());
    ASSERT_TRUE(created) << created.error().message();
    rig.log.mark("mirror create returned");
    auto& mirror = *created.value();
    auto writes = [&](unsigned n) {
      for (unsigned i = 0; i < n && !::testing::Test::HasFatalFailure(); ++i) {
        const auto [off, len] = random_range(rng, kLegBytes, 8);
        view.write(mirror, rig.log, off, len, uid++);
      }
    };
    view.write_batch(mirror, rig.log, disjoint_ranges(rng, kLegBytes, 6), uid += 10);
    view.flush(mirror, rig.log);
    writes(3);
    view.flush(mirror, rig.log);
    ASSERT_TRUE(mirror.wait_in_sync(kReplayWait)) << "initial resync did not end";
    rig.log.mark("in sync");
    for (unsigned round = 0; round < 3; ++round) {
      writes(3);
      view.flush(mirror, rig.log);
    }
    writes(2);  // unflushed until after the replace
    rig.log.mark("replace issued");
    auto old = mirror.replace_leg(2, rig.recorder(legs[3]));
    ASSERT_TRUE(old) << old.error().message();
    replace_returned = rig.log.mark("replace returned");
    view.write_batch(mirror, rig.log, disjoint_ranges(rng, kLegBytes, 6), uid += 10);
    view.flush(mirror, rig.log);
    writes(3);
    ASSERT_TRUE(mirror.wait_in_sync(kReplayWait)) << "resync after the replace did not end";
    rig.log.mark("in sync after replace");
    writes(3);
    view.flush(mirror, rig.log);
    writes(2);  // unflushed at the shutdown
    ASSERT_FALSE(HasFatalFailure());
    created.value().reset();  // the kernel's suspend: cleans idle regions and flushes the log
    rig.log.mark("mirror closed");
  }
  std::printf("[replay] MirrorWorkload: %zu writes, %zu fsyncs\n", view.write_count(), view.flush_count());

  replay_all("MirrorWorkload", rig, seed, variants, 0, [&](uint64_t cut, std::vector<Image>& images) {
    // Before the replace returned, the mirror's table names legs 0, 1, 2; after, 0, 1, 3.
    const std::vector<DeviceId> set = cut > replace_returned
                                          ? std::vector<DeviceId>{legs[0], legs[1], legs[3]}
                                          : std::vector<DeviceId>{legs[0], legs[1], legs[2]};
    MemoryDevice log_device("log", images[log_id]);
    {
      std::vector<std::unique_ptr<BlockDevice>> devices;
      for (DeviceId d : set)
        devices.push_back(std::make_unique<MemoryDevice>("leg" + std::to_string(d), images[d]));
      auto created = Mirror::create(std::move(devices), disk_log_on(log_device), replay_mirror_options());
      ASSERT_TRUE(created) << "the mirror does not open: " << created.error().message();
      EXPECT_EQ(created.value()->log().health(), 'A');
      ASSERT_TRUE(created.value()->wait_in_sync(kReplayWait)) << "recovery did not end";
    }
    for (size_t i = 1; i < set.size(); ++i)
      EXPECT_TRUE(images[set[i]] == images[set[0]])
          << "leg " << set[i] << " differs from leg " << set[0] << " after recovery";
    EXPECT_TRUE(view.check(images[set[0]], cut));
  });
}

}  // namespace
}  // namespace kcopyfs::replay
