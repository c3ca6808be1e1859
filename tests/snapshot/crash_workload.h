// The crash tests' workloads, shared by the child process that runs them (crash_workload_main.cc) and the
// test that kills it and checks what is left (snapshot_crash_test.cc). Both sides derive everything from the
// same seed, so the test rebuilds every image from the seed and the child's progress reports alone.
//
// Random workload: a sequence of steps, each fully done (and flushed) before the next starts:
//   - create a persistent snapshot (4K, 8K or 64K chunks, some writable);
//   - reopen: close the origin and attach every snapshot again;
//   - a batch of 1-6 concurrent writes to disjoint ranges of one view each (the origin or a writable
//     snapshot), then a flush of every view written.
// The child reports "<step>\n" on fd 3 after each step. A snapshot's image is the origin's content when it
// was created plus its own writes; at most the step after the last one reported can be half done at a kill.
//
// Writable-snapshot workload (wsnap = true): every snapshot is writable, batches hold 1-16 writes, mostly to
// snapshots, and a batch without origin writes is flushed only one time in three, so acknowledged but
// unflushed snapshot writes (whose exceptions are committed later: deferred commit) pile up before a kill;
// a flush of a view makes all of that view's earlier writes durable.
//
// Crash points: fixed scenarios that stop the child (_exit) at one step of a protocol (see crash_points()).
// No GoogleTest here.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "tests/support/test_support.h"

namespace kcopyfs::crash {

// ---- Random workload ----

inline constexpr uint64_t kOriginBytes = 4 << 20;
inline constexpr uint64_t kCowBytes = 10 << 20;  // more than the origin and its metadata: never full
inline constexpr size_t kMaxSnapshots = 5;
inline constexpr int kMaxSteps = 100000;  // the child stops there if it is not killed first
inline constexpr int kReportFd = 3;

struct SnapSpec {
  std::string name;
  uint64_t chunk_sectors = 8;
  bool writable = false;
};

struct WriteOp {
  int view = -1;  // -1: the origin; else the snapshot's index in creation order
  uint64_t offset = 0;
  uint64_t length = 0;
  uint64_t data_seed = 0;  // the data is test::pattern(data_seed, 0, length)
};

struct Step {
  enum class Kind { create, reopen, write };
  Kind kind = Kind::write;
  SnapSpec snap;                // create
  std::vector<WriteOp> writes;  // write
  bool flush = true;            // write: every view written is flushed after the writes
};

class Workload {
 public:
  explicit Workload(uint64_t seed, bool wsnap = false)
      : rng_(seed * 0x9E3779B97F4A7C15ull + 12345), wsnap_(wsnap) {}

  Step next() {
    if (wsnap_) return next_wsnap();
    Step step;
    const uint64_t r = rng_() % 100;
    if (specs_.empty() || (r < 5 && specs_.size() < kMaxSnapshots)) {
      step.kind = Step::Kind::create;
      static const uint64_t kChunks[] = {8, 16, 128};  // 4K, 8K, 64K
      step.snap.name = std::string("s").append(std::to_string(specs_.size()));
      step.snap.chunk_sectors = kChunks[rng_() % 3];
      step.snap.writable = rng_() % 2 == 0;
      specs_.push_back(step.snap);
      return step;
    }
    if (r < 8) {
      step.kind = Step::Kind::reopen;
      return step;
    }
    step.kind = Step::Kind::write;
    std::vector<int> writable;
    for (size_t i = 0; i < specs_.size(); ++i) {
      if (specs_[i].writable) writable.push_back(static_cast<int>(i));
    }
    const int n = 1 + static_cast<int>(rng_() % 6);
    for (int i = 0; i < n; ++i) {
      WriteOp w;
      w.view = writable.empty() || rng_() % 2 == 0 ? -1 : writable[rng_() % writable.size()];
      const uint64_t sectors = kOriginBytes / 512;
      const uint64_t len = 1 + rng_() % (rng_() % 4 == 0 ? 256 : 24);
      w.offset = (rng_() % (sectors - len + 1)) * 512;
      w.length = len * 512;
      w.data_seed = rng_();
      bool overlaps = false;
      for (const WriteOp& o : step.writes) {
        overlaps |= o.view == w.view && w.offset < o.offset + o.length && o.offset < w.offset + w.length;
      }
      if (!overlaps) step.writes.push_back(w);
    }
    return step;
  }

  // Every snapshot created so far (by the steps returned so far).
  const std::vector<SnapSpec>& snapshots() const { return specs_; }

 private:
  Step next_wsnap() {
    Step step;
    const uint64_t r = rng_() % 100;
    if (specs_.empty() || (r < 3 && specs_.size() < kMaxSnapshots)) {
      step.kind = Step::Kind::create;
      static const uint64_t kChunks[] = {8, 16, 128};  // 4K, 8K, 64K
      step.snap.name = std::string("s").append(std::to_string(specs_.size()));
      step.snap.chunk_sectors = kChunks[rng_() % 3];
      step.snap.writable = true;
      specs_.push_back(step.snap);
      return step;
    }
    if (r < 5) {
      step.kind = Step::Kind::reopen;
      return step;
    }
    step.kind = Step::Kind::write;
    bool origin_written = false;
    const int n = 1 + static_cast<int>(rng_() % 16);
    for (int i = 0; i < n; ++i) {
      WriteOp w;
      w.view = rng_() % 4 == 0 ? -1 : static_cast<int>(rng_() % specs_.size());
      const uint64_t sectors = kOriginBytes / 512;
      // Mostly whole 4K blocks (a write that is its chunk's copy), some unaligned.
      const bool block = rng_() % 2 == 0;
      const uint64_t len = block ? 8 : 1 + rng_() % 24;
      w.offset = (block ? (rng_() % (sectors / 8)) * 8 : rng_() % (sectors - len + 1)) * 512;
      w.length = len * 512;
      w.data_seed = rng_();
      bool overlaps = false;
      for (const WriteOp& o : step.writes) {
        overlaps |= o.view == w.view && w.offset < o.offset + o.length && o.offset < w.offset + w.length;
      }
      if (overlaps) continue;
      origin_written |= w.view < 0;
      step.writes.push_back(w);
    }
    // Origin writes are always flushed, so a snapshot created later starts from durable origin data.
    step.flush = origin_written || rng_() % 3 == 0;
    return step;
  }

  std::mt19937_64 rng_;
  const bool wsnap_;
  std::vector<SnapSpec> specs_;
};

// ---- Crash points ----

inline constexpr uint64_t kPointOriginBytes = 2 << 20;  // 512 chunks of 4K
inline constexpr uint64_t kPointSeed = 5;
inline constexpr uint64_t k4K = 4096;

// What the scenarios write to the origin's 4K chunk c.
inline std::vector<std::byte> origin_data(uint64_t c) { return test::pattern(1000 + c, 0, k4K); }

// Scenario "commit" (a snapshot S, chunk 8, writable, 2 MiB COW): the origin writes chunks 0, 1, 2 and
// flushes ("ready"); then, armed, the origin writes chunk 5 (or, for snapshot_write, S writes all of chunk
// 7). The origin write waits for its commit; S's write is acknowledged before its commit (deferred commit),
// so snapshot_write's points come after the acknowledgement, while the child closes the origin (which waits
// for the commit) before it may report "completed".
inline constexpr uint64_t kCommitPrefill[] = {0, 1, 2};
inline constexpr uint64_t kCommitTarget = 5;
inline constexpr uint64_t kCommitSnapshotTarget = 7;
inline std::vector<std::byte> commit_snapshot_data() { return test::pattern(2007, 0, k4K); }

// Scenario "fill": the origin writes chunks [0, 255) in one write (area 0 then holds 255 of its 256 records);
// armed, it writes chunk 255, whose commit fills area 0.
inline constexpr uint64_t kFillPrefill = 255;

// Scenario "merge": S (chunk 8, writable) gets exceptions from origin writes to kMergeOriginWrites (in this
// order) and its own writes (a partial one to chunk 3, all of chunk 30); then T (chunk 16) is created and the
// origin writes chunk 40. Armed, S is merged. Its records (old -> COW chunk) are 10->2, 3->3, 20->4, 21->5,
// 22->6, 7->7, 30->8, 40->9, so the merge steps are, newest run first: {40}, {30}, {7}, {20, 21, 22}, {3},
// {10}.
inline constexpr uint64_t kMergeOriginWrites[] = {10, 3, 20, 21, 22, 7};
inline constexpr uint64_t kMergeLateWrite = 40;
inline constexpr uint64_t kMergeSnapPartialOffset = 3 * k4K + 1024;
inline std::vector<std::byte> merge_snap_partial() { return test::pattern(3003, 0, 2048); }
inline constexpr uint64_t kMergeSnapFullChunk = 30;
inline std::vector<std::byte> merge_snap_full() { return test::pattern(3030, 0, k4K); }

// Scenario "overflow": S's COW holds 2 data chunks; the origin writes chunks 0 and 1; armed (the header write
// of S's COW is held back 1 s), the origin writes chunk 5, flushes and reports "acked"; it is killed then.
inline constexpr uint64_t kOverflowTarget = 5;

enum class Device { origin, s_cow };
enum class OpKind { write, flush };

// One crash point: in `scenario`, once armed, the child dies right before the `nth` (1-based) operation of
// kind `op` on `device` that overlaps sectors [start, start+count) (flushes: any).
struct CrashPoint {
  const char* name;
  const char* scenario;
  Device device;
  OpKind op;
  uint64_t start;
  uint64_t count;
  int nth;
  uint64_t expected_exceptions;  // S's exceptions after the crash
};

inline const std::vector<CrashPoint>& crash_points() {
  constexpr uint64_t kArea0 = 8, kArea1 = 8 * (1 + 257);  // chunk 1, chunk 258 (area 1 for chunk 8)
  static const std::vector<CrashPoint> points = {
      // A single commit: copy, flush, area write, flush; then the origin write.
      {"commit_before_preflush", "commit", Device::s_cow, OpKind::flush, 0, 0, 1, 3},
      {"commit_before_area_write", "commit", Device::s_cow, OpKind::write, kArea0, 8, 1, 3},
      {"commit_before_postflush", "commit", Device::s_cow, OpKind::flush, 0, 0, 2, 4},
      {"commit_before_origin_write", "commit", Device::origin, OpKind::write, kCommitTarget * 8, 8, 1, 4},
      {"snapshot_write_before_area_write", "snapshot_write", Device::s_cow, OpKind::write, kArea0, 8, 1, 3},
      {"snapshot_write_before_postflush", "snapshot_write", Device::s_cow, OpKind::flush, 0, 0, 2, 4},
      // The commit that fills area 0: zero area 1, flush, write area 0, flush.
      {"fill_before_zeroing_next_area", "fill", Device::s_cow, OpKind::write, kArea1, 8, 1, kFillPrefill},
      {"fill_before_full_area_write", "fill", Device::s_cow, OpKind::write, kArea0, 8, 1, kFillPrefill},
      {"fill_before_postflush", "fill", Device::s_cow, OpKind::flush, 0, 0, 2, kFillPrefill + 1},
      // Merge steps: copy back, origin flush, commit_merge (flush, area write, flush).
      {"merge_step1_before_origin_flush", "merge", Device::origin, OpKind::flush, 0, 0, 1, 8},
      {"merge_step1_before_commit", "merge", Device::s_cow, OpKind::flush, 0, 0, 1, 8},
      {"merge_step1_before_commit_area_write", "merge", Device::s_cow, OpKind::write, kArea0, 8, 1, 8},
      {"merge_step1_before_commit_postflush", "merge", Device::s_cow, OpKind::flush, 0, 0, 2, 7},
      {"merge_step2_before_origin_flush", "merge", Device::origin, OpKind::flush, 0, 0, 2, 7},
      {"merge_step4_before_commit_area_write", "merge", Device::s_cow, OpKind::write, kArea0, 8, 4, 5},
      {"merge_last_step_before_postflush", "merge", Device::s_cow, OpKind::flush, 0, 0, 12, 0},
  };
  return points;
}

inline const CrashPoint* find_crash_point(const std::string& name) {
  for (const CrashPoint& p : crash_points()) {
    if (name == p.name) return &p;
  }
  return nullptr;
}

}  // namespace kcopyfs::crash
