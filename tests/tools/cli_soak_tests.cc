// SIGKILL soak (docs/reliability.md, issue 7): many seeds, each a mixed workload through a kcopyfs mount that
// is cut short by a SIGKILL of the daemon at a point chosen by the seed, then a remount and a check of
// everything against a reference model of the volumes. Notes and results: docs/reliability.md, "SIGKILL
// soak".
//
// Set-up, once per group of kGroupSeeds seeds (a fresh KcopyfsMount, so a group replays on its own): an
// origin `o` over a pattern image and a two-leg mirror `m` (disk log, 64K regions; legs: a pattern image and
// a sparse one, resynced before the first seed), kVolumeBlocks 4 KiB blocks each.
//
// Each seed runs on the mount the seed before it left (the verification mount of seed i is the workload
// mount of seed i+1), and the model carries over, so every seed also re-checks what earlier ones left:
//  1. Plan, from the seed and the model. Stream A: origin writes and `kcopyfs snapshot create` (read-only or
//     --writable, persistent or --transient, chunk 4K-64K) and `snapshot merge` (see merge_mode()). Stream B:
//     mirror writes. Stream C: writes to the writable snapshots that exist. A write op is 1-4 pwrites of 1-8
//     whole blocks (half of them in a hot zone of 64 blocks), then mostly an fsync. Before a create or a
//     merge, stream A fsyncs the origin (as a user freezes a filesystem first), so a snapshot's point-in-time
//     image is known exactly. Stream B also runs `mirror replace` of the second leg (by a third image, stale
//     on purpose: only a whole resync makes it right; the leg replaced becomes the next one swapped in),
//     `mirror resync` and `mirror throttle`.
//  2. Run. A forked child runs the three streams on three threads at once and reports on a pipe when each op
//     starts ('S'), after each pwrite or the pre-command fsync ('P'), when it is acknowledged ('A': its fsync
//     or the command returned) or failed ('E', with errno; before the kill any failure is a finding).
//  3. Kill, at a point chosen by the seed, never by time: K acknowledged ops of stream A, then j steps into
//     op K (a pwrite, its fsync or a command in flight). For a create or merge, either before its fsync, as
//     its command starts, or when the daemon creates the snapshot's COW file or renames its rewritten volume
//     table into place (inotify on the state directory). In one seed of four whose stream B has a mirror
//     command, the kill comes instead as K ops of stream B are acknowledged and its command starts, or when
//     the daemon renames its volume table. The daemon's pid is in STATE/lock. The child's
//     remaining reports are read until it exits on the dead mount; the daemon must be gone in 20 s.
//  4. Remount. statvfs of the dead mount must fail with ENOTCONN; `kcopyfs mount` of the same state
//     directory must succeed and leave one mount there (it detaches the dead one itself), at once: the
//     killed daemon's files may still be locked for a moment, which the new daemon must wait out itself
//     (finding 1 in docs/reliability.md).
//  5. Verify. `status --json`: the targets are exactly the model's (an interrupted create or merge is
//     resolved by what the remount shows: done or not done, as a whole), none `failed`, snapshots `active`,
//     the mirror `active` or `resyncing`, its legs and throttle the acknowledged ones (a command in flight at
//     the kill: done or not, whole), transient snapshots gone with their default COW files. Every block of
//     every view (origin, each snapshot, the mirror read twice, as reads are spread over its legs) must hold
//     a version the model allows: the last one made durable (a write whose fsync returned; for a read-only
//     snapshot, its point-in-time image and nothing else), or one written since and not made durable. The
//     model then takes what it read as durable.
//  6. Keep it small: read-only snapshots beyond kMaxReadOnly and writable ones beyond kMaxWritable are
//     removed, oldest first, with `kcopyfs remove` (not while a merge runs).
// At the end of a group: a merge still running must finish (bounded), the mirror must come in sync (bounded),
// `kcopyfs umount` must succeed, the origin image and both current leg images must equal the model byte for
// byte, and
// the daemons' log (their stderr) must hold no sanitizer report.
//
// Seeds: KCOPYFS_SOAK_SEEDS=N runs N seeds (default kDefaultSeeds; kSanitizedSeeds in the ASan+UBSan build,
// where CMake defines KCOPYFS_SOAK_SANITIZED, to keep CI's whole suite in its time), from KCOPYFS_SOAK_FIRST
// (default: from the clock), in groups of kGroupSeeds. KCOPYFS_SOAK_SEED=S runs seed S alone on a fresh
// set-up. Every seed is printed with its kill point; a failure names the seed and how to replay its group.
// A replay kills at the same report, but how far the daemon got past it depends on timing.
#include <fcntl.h>
#include <poll.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/forked.h"
#include "tests/tools/mount_fixture.h"

namespace kcopyfs {
namespace {

using namespace std::chrono_literals;
using test::CommandResult;
using test::KcopyfsMount;

constexpr uint64_t kBlock = 4096;
constexpr uint64_t kVolumeBlocks = 2048;  // 8 MiB volumes: a whole view is read back every seed
constexpr uint64_t kVolumeSize = kBlock * kVolumeBlocks;
constexpr int kGroupSeeds = 20;
constexpr int kDefaultSeeds = 200;
#ifdef KCOPYFS_SOAK_SANITIZED
// The ASan+UBSan build ran 200 seeds in 114-196 s (docs/reliability.md), within the ~4 min it may take of CI:
// the same count. Lower this if that build's time grows.
constexpr int kSanitizedSeeds = 200;
#endif
constexpr size_t kMaxReadOnly = 3;
constexpr size_t kMaxWritable = 2;
constexpr auto kSeedDeadline = 60s;  // the child must be done (killed mount included) within this

// ---------------------------------------------------------------------------------------------------------
// Block contents. Version 0 is all zeros (a sparse leg); any other version v of block b is 512 words of a
// hash of (v, b, word), cheap enough to regenerate for every block that is checked.

void fill_block(uint64_t version, uint64_t block, char* out) {
  if (version == 0) {
    std::memset(out, 0, kBlock);
    return;
  }
  uint64_t x = version * 0x9E3779B97F4A7C15ull ^ (block + 1) * 0xC2B2AE3D27D4EB4Full;
  for (size_t i = 0; i < kBlock / 8; ++i) {
    x += 0x9E3779B97F4A7C15ull;
    uint64_t z = x;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    std::memcpy(out + i * 8, &z, 8);
  }
}

bool pwrite_all(int fd, const char* data, size_t length, uint64_t offset) {
  size_t done = 0;
  while (done < length) {
    const ssize_t n = ::pwrite(fd, data + done, length - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

bool pread_all(int fd, char* data, size_t length, uint64_t offset) {
  size_t done = 0;
  while (done < length) {
    const ssize_t n = ::pread(fd, data + done, length - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

// Writes an image file of kVolumeBlocks blocks, block b holding version versions(b).
bool write_image(const std::string& path, const std::function<uint64_t(uint64_t)>& versions) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd.valid()) return false;
  std::vector<char> buf(kBlock);
  for (uint64_t b = 0; b < kVolumeBlocks; ++b) {
    fill_block(versions(b), b, buf.data());
    if (!pwrite_all(fd.get(), buf.data(), kBlock, b * kBlock)) return false;
  }
  return ::fsync(fd.get()) == 0;
}

// ---------------------------------------------------------------------------------------------------------
// The reference model of one volume: per block, the version made durable last, and the versions written
// since that may or may not have reached the disk (in write order; each volume has a single writer).

struct BlockModel {
  uint64_t durable = 0;
  std::vector<uint64_t> maybe;
};

struct VolumeModel {
  std::vector<BlockModel> blocks = std::vector<BlockModel>(kVolumeBlocks);

  void write(uint64_t first, uint64_t count, uint64_t version) {
    for (uint64_t b = first; b < first + count; ++b) blocks[b].maybe.push_back(version);
  }
  // An fsync returned: whatever was written last is durable.
  void synced() {
    for (auto& b : blocks) {
      if (!b.maybe.empty()) b.durable = b.maybe.back();
      b.maybe.clear();
    }
  }
  bool settled() const {
    return std::all_of(blocks.begin(), blocks.end(), [](const BlockModel& b) { return b.maybe.empty(); });
  }
};

// Reads a whole view (or image) and checks every block against the model; on success the model takes what
// was read as durable. Result: "" or what differed (the first few blocks).
std::string check_volume(const std::string& path, VolumeModel& model, uint64_t* blocks_checked,
                         uint64_t* undecided_seen) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return "cannot open " + path + ": " + std::strerror(errno);
  std::vector<char> data(kVolumeSize);
  if (!pread_all(fd.get(), data.data(), kVolumeSize, 0))
    return "cannot read " + path + ": " + std::strerror(errno);
  std::vector<char> expect(kBlock);
  std::ostringstream bad;
  int wrong = 0;
  std::vector<uint64_t> found(kVolumeBlocks);
  for (uint64_t b = 0; b < kVolumeBlocks; ++b) {
    const BlockModel& m = model.blocks[b];
    const char* got = data.data() + b * kBlock;
    bool matched = false;
    // Newest first: the usual outcome.
    for (size_t i = m.maybe.size() + 1; i-- > 0 && !matched;) {
      const uint64_t v = i == 0 ? m.durable : m.maybe[i - 1];
      fill_block(v, b, expect.data());
      if (std::memcmp(got, expect.data(), kBlock) == 0) {
        found[b] = v;
        matched = true;
      }
    }
    if (!matched) {
      if (++wrong <= 4) {
        uint64_t word = 0;
        std::memcpy(&word, got, 8);
        bad << "\n  block " << b << " (offset " << b * kBlock << "): durable version " << m.durable;
        if (!m.maybe.empty()) {
          bad << ", not durable:";
          for (uint64_t v : m.maybe) bad << " " << v;
        }
        bad << "; first word read 0x" << std::hex << word << std::dec;
      }
    }
  }
  if (wrong > 0) return path + ": " + std::to_string(wrong) + " blocks hold no allowed version" + bad.str();
  for (uint64_t b = 0; b < kVolumeBlocks; ++b) {
    if (!model.blocks[b].maybe.empty()) ++*undecided_seen;
    model.blocks[b].durable = found[b];
    model.blocks[b].maybe.clear();
  }
  *blocks_checked += kVolumeBlocks;
  return "";
}

// ---------------------------------------------------------------------------------------------------------
// The workload: operations planned by the parent, run by a forked child, reported on a pipe.

enum class OpKind {
  origin_write,
  snapshot_write,
  mirror_write,
  snapshot_create,
  snapshot_merge,
  mirror_replace,
  mirror_throttle,
  mirror_resync
};

struct Extent {
  uint64_t block;
  uint64_t count;
  uint64_t version;
};

struct Op {
  OpKind kind{};
  std::string target;            // snapshot_write, snapshot_merge: the snapshot; snapshot_create: the new one
  std::vector<Extent> writes;    // write kinds
  bool fsync = true;             // write kinds
  bool writable = false;         // snapshot_create
  bool transient = false;        // snapshot_create
  bool wait = false;             // snapshot_merge: with --wait
  std::string chunk_size;        // snapshot_create
  std::string old_leg, new_leg;  // mirror_replace: the second leg, and the image that replaces it
  unsigned throttle_percent = 100;         // mirror_throttle: the limits it sets
  uint64_t throttle_bytes_per_second = 0;  // (0: no cap)
};

// A mirror's resync limits, as status --json shows them.
struct ThrottleModel {
  unsigned percent = 100;
  uint64_t bytes_per_second = 0;
  bool operator==(const ThrottleModel&) const = default;
};

// How far the child got with one op, from its reports.
struct Progress {
  bool started = false;
  int steps = 0;  // pwrites returned (for a create or a merge: 1 once its fsync of the origin returned)
  bool acked = false;
};

// One report: 8 bytes, written with one write(2) so the streams' reports never interleave.
struct Report {
  uint8_t stream;  // 0: A, 1: B (mirror), 2: C (writable snapshots)
  char what;       // 'S' started, 'P' a step done, 'A' acknowledged, 'E' failed
  char call;       // 'E': what failed: 'o' open, 'w' pwrite, 'f' fsync, 'c' create or 'm' merge command
  uint8_t err;     // 'E': its errno (0 for the command)
  uint32_t op;
};
static_assert(sizeof(Report) == 8);

struct Stats {
  int seeds = 0;
  int kills = 0;
  uint64_t fsynced_writes_acked = 0;  // write ops whose fsync returned (all checked at the next verification)
  uint64_t writes_not_durable = 0;    // write ops without a returned fsync (either outcome allowed per block)
  uint64_t undecided_blocks = 0;      // blocks that were checked while their content was open
  uint64_t blocks_checked = 0;
  uint64_t snapshot_checks = 0;  // snapshot views compared with their images
  int snapshots_created = 0;     // acknowledged creates
  int creates_interrupted = 0;   // creates in flight at the kill
  int interrupted_created = 0;   // ... of which the snapshot exists after the remount
  int clean_umounts = 0;
  int kills_at_daemon_files = 0;  // kills placed on the daemon making a COW file or its volume table
  int kills_at_ack_instead = 0;   // ... where that never happened, so the kill came at the op's ack
  int merges_started = 0;         // acknowledged `snapshot merge`
  int merges_interrupted = 0;     // in flight at the kill
  int interrupted_merged = 0;     // ... of which the merge happened
  int merges_seen_merging = 0;    // remounts that found a merge still going (resumed by the mount)
  int merges_finished = 0;        // seen gone after a remount (resumed, if the kill came during the copy)
  int leftover_cows = 0;          // interrupted creates that left their default COW file behind
  int replaces_acked = 0;         // acknowledged `mirror replace`
  int replaces_interrupted = 0;   // in flight at the kill
  int interrupted_replaced = 0;   // ... of which the table names the new leg after the remount
  int throttles_acked = 0;        // acknowledged `mirror throttle`
  int throttles_interrupted = 0;  // in flight at the kill
  int resyncs_acked = 0;          // acknowledged `mirror resync`
  int spare_leg_locked = 0;       // remounts after which the image replaced out was still locked a moment
  int transients_dropped = 0;     // transient snapshots (acknowledged or interrupted creates) seen dropped
  std::map<std::string, int> failures_after_kill;  // how the workload's ops failed once the daemon was killed
  int locks_outlived_daemon = 0;  // kills after which an image was still locked once the daemon was gone
  uint64_t lock_wait_max_us = 0;
};

// How stream A merges (KCOPYFS_SOAK_MERGES). Default "any": any read-only snapshot, no --wait, kills
// anywhere, including while the daemon saves the table at a merge's end and while a remount resumes a merge.
// "safe" keeps to what passed before two daemon fixes (docs/reliability.md, SIGKILL soak, findings 2 and 3):
// only the newest snapshot (listed last) merges, with `snapshot merge --wait`, no kill while the daemon saves
// a merge's table, and a merge resumed by a remount is waited for before the next seed. "0": no merges.
enum class MergeMode { none, safe, any };
MergeMode merge_mode() {
  const char* s = std::getenv("KCOPYFS_SOAK_MERGES");
  const std::string v = s == nullptr ? "" : s;
  if (v == "0") return MergeMode::none;
  if (v == "safe") return MergeMode::safe;
  return MergeMode::any;
}

// Default: remount at once after the kill; the daemon retries devices that the dead one still holds locked.
// KCOPYFS_SOAK_STRICT_REMOUNT=0 waits (bounded) for the locks to go first, counting how often and how long.
bool strict_remount() {
  const char* s = std::getenv("KCOPYFS_SOAK_STRICT_REMOUNT");
  return s == nullptr || std::string(s) != "0";
}

// The child's side: runs one stream, reporting each step, and an op that fails as an 'E' report (its errno;
// the parent tells a failure on the live mount from the expected ones after the kill). Result: false when an
// op failed.
bool run_stream(uint8_t stream, const std::vector<Op>& ops, int report_fd, const KcopyfsMount& m) {
  std::map<std::string, UniqueFd> fds;
  auto view_fd = [&](const std::string& path) -> int {
    auto it = fds.find(path);
    if (it == fds.end()) it = fds.emplace(path, UniqueFd(::open(path.c_str(), O_RDWR | O_CLOEXEC))).first;
    return it->second.get();
  };
  auto report = [&](char what, uint32_t op, char call = 0, int err = 0) {
    const Report r{stream, what, call, static_cast<uint8_t>(err), op};
    return ::write(report_fd, &r, sizeof r) == static_cast<ssize_t>(sizeof r);
  };
  std::vector<char> buf(8 * kBlock);
  for (uint32_t i = 0; i < ops.size(); ++i) {
    const Op& op = ops[i];
    if (!report('S', i)) return false;
    if (op.kind == OpKind::snapshot_create || op.kind == OpKind::snapshot_merge) {
      const int fd = view_fd(m.origin_view("o"));
      if (fd < 0) return report('E', i, 'o', errno), false;
      if (::fsync(fd) != 0) return report('E', i, 'f', errno), false;
      if (!report('P', i)) return false;
      std::vector<std::string> options{"--chunk-size", op.chunk_size};
      if (op.writable) options.push_back("--writable");
      if (op.transient) options.push_back("--transient");
      const CommandResult r =
          op.kind == OpKind::snapshot_create
              ? m.snapshot_create("o", op.target, options)
              : m.verb({"snapshot", "merge"}, op.wait ? std::vector<std::string>{op.target, "--wait"}
                                                      : std::vector<std::string>{op.target});
      if (!r.ok()) {
        // Its message goes with the report, for when the create failed on a live mount.
        std::fprintf(stderr, "soak child: op %u: %s\n", i, r.describe().c_str());
        return report('E', i, op.kind == OpKind::snapshot_create ? 'c' : 'm', 0), false;
      }
    } else if (op.kind == OpKind::mirror_replace || op.kind == OpKind::mirror_throttle ||
               op.kind == OpKind::mirror_resync) {
      std::vector<std::string> words{"replace"}, args{"m"};
      if (op.kind == OpKind::mirror_replace) {
        args.push_back(op.old_leg);
        args.push_back(op.new_leg);
      } else if (op.kind == OpKind::mirror_resync) {
        words = {"resync"};
      } else {
        words = {"throttle"};
        args.insert(args.end(), {"--percent", std::to_string(op.throttle_percent), "--rate",
                                 std::to_string(op.throttle_bytes_per_second)});
      }
      words.insert(words.begin(), "mirror");
      const CommandResult r = m.verb(words, args);
      if (!r.ok()) {
        std::fprintf(stderr, "soak child: stream %u op %u: %s\n", stream, i, r.describe().c_str());
        const char call = op.kind == OpKind::mirror_replace  ? 'r'
                          : op.kind == OpKind::mirror_resync ? 's'
                                                             : 't';
        return report('E', i, call, 0), false;
      }
    } else {
      const std::string path = op.kind == OpKind::origin_write   ? m.origin_view("o")
                               : op.kind == OpKind::mirror_write ? m.mirror_view("m")
                                                                 : m.snapshot_view(op.target);
      const int fd = view_fd(path);
      if (fd < 0) return report('E', i, 'o', errno), false;
      for (const Extent& e : op.writes) {
        for (uint64_t k = 0; k < e.count; ++k) fill_block(e.version, e.block + k, buf.data() + k * kBlock);
        if (!pwrite_all(fd, buf.data(), e.count * kBlock, e.block * kBlock))
          return report('E', i, 'w', errno), false;
        if (!report('P', i)) return false;
      }
      if (op.fsync && ::fsync(fd) != 0) return report('E', i, 'f', errno), false;
    }
    if (!report('A', i)) return false;
  }
  return true;
}

// How many mounts sit at exactly path (a dead mount under a live one counts twice).
int mounts_at(const std::string& path) {
  std::ifstream in("/proc/self/mountinfo");
  int count = 0;
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    std::string id, parent, devno, root, mount_point;
    fields >> id >> parent >> devno >> root >> mount_point;
    if (test::unescape_mount_field(mount_point) == path) ++count;
  }
  return count;
}

// The regular files directly in dirs that are locked (test::file_locked), by path.
std::vector<std::string> locked_files(const std::vector<std::string>& dirs) {
  std::vector<std::string> held;
  for (const std::string& dir : dirs) {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
      if (!entry.is_regular_file(ec) || entry.path().filename() == "lock") continue;
      if (test::file_locked(entry.path().string())) held.push_back(entry.path().string());
    }
  }
  return held;
}

std::string state_of(const nlohmann::json& t) {
  return t.is_object() && t.contains("state") && t["state"].is_string() ? t["state"].get<std::string>() : "";
}

bool mirror_in_sync(const nlohmann::json& t) {
  if (!t.is_object() || !t.contains("legs")) return false;
  for (const auto& leg : t["legs"]) {
    if (leg.value("health", "") != "A") return false;
  }
  return state_of(t) == "active" && t.value("regions_in_sync", -1) == t.value("regions_total", -2);
}

std::optional<uint64_t> env_number(const char* name) {
  const char* s = std::getenv(name);
  if (s == nullptr || *s == '\0') return std::nullopt;
  return static_cast<uint64_t>(std::strtoull(s, nullptr, 0));
}

// ---------------------------------------------------------------------------------------------------------
// One group of seeds on one fresh mount.

struct SnapshotModel {
  std::string name;
  bool writable = false;
  VolumeModel image;       // read-only: everything durable, never changes
  bool transient = false;  // gone after the remount that follows the kill, with its default COW file
};

class Soak {
 public:
  Soak(uint64_t group_seed, Stats& stats) : group_seed_(group_seed), stats_(stats) {}

  void set_up() {
    ASSERT_TRUE(m_.mount_result().ok()) << m_.mount_result();
    origin_img_ = m_.file("origin.img");
    leg0_ = m_.file("leg0.img");
    leg1_ = m_.file("leg1.img");
    spare_leg_ = m_.file("leg2.img");
    const uint64_t origin_version = version_of(group_seed_, 2, 0);
    const uint64_t leg_version = version_of(group_seed_, 2, 1);
    ASSERT_TRUE(write_image(origin_img_, [&](uint64_t) { return origin_version; }));
    ASSERT_TRUE(write_image(leg0_, [&](uint64_t) { return leg_version; }));
    ASSERT_TRUE(write_image(leg1_, [](uint64_t) { return uint64_t{0}; }));
    // The image a `mirror replace` swaps in holds data the mirror never had: a replace that did not resync
    // it whole would show it.
    const uint64_t stale_version = version_of(group_seed_, 2, 2);
    ASSERT_TRUE(write_image(spare_leg_, [&](uint64_t) { return stale_version; }));
    for (auto& b : origin_.blocks) b.durable = origin_version;
    for (auto& b : mirror_.blocks) b.durable = leg_version;
    const CommandResult add = m_.origin_add("o", origin_img_);
    ASSERT_TRUE(add.ok()) << add;
    const CommandResult mirror = m_.mirror_create("m", {leg0_, leg1_}, {"--region-size", "64K"});
    ASSERT_TRUE(mirror.ok()) << mirror;
    ASSERT_TRUE(m_.wait_for_target("m", mirror_in_sync, 60s)) << m_.target("m").dump();
  }

  // One seed: plan, run, kill, remount, verify. Fatal failures end the group.
  void run_seed(uint64_t seed) {
    const auto started = test::Clock::now();
    std::mt19937_64 rng(seed);
    std::vector<Op> a = plan_stream_a(seed, rng);
    const std::vector<Op> b = plan_stream_b(seed, rng);
    const std::vector<Op> c = plan_stream_c(seed, rng);
    // K, the acknowledged ops of stream A before the kill; often a create or merge, the rarer ops.
    size_t kill_op = static_cast<size_t>(rng() % (a.size() - 5));
    if (rng() % 3 == 0) {
      std::vector<size_t> rare;
      for (size_t i = 0; i + 5 < a.size(); ++i) {
        if (a[i].writes.empty()) rare.push_back(i);
      }
      if (!rare.empty()) kill_op = rare[rng() % rare.size()];
    }
    // Or, in one seed of four that has them, a mirror command of stream B (K then counts stream B's ops).
    size_t kill_stream = 0;
    std::vector<size_t> commands_b;
    for (size_t i = 0; i < b.size(); ++i) {
      if (b[i].writes.empty()) commands_b.push_back(i);
    }
    // Not in `safe` merge mode when A merges: a kill at B's time could meet the merge's table saves.
    const bool a_merges =
        std::any_of(a.begin(), a.end(), [](const Op& op) { return op.kind == OpKind::snapshot_merge; });
    if (!commands_b.empty() && !(a_merges && merge_mode() == MergeMode::safe) && rng() % 4 == 0) {
      kill_stream = 1;
      kill_op = commands_b[rng() % commands_b.size()];
    }
    const Op& victim = kill_stream == 0 ? a[kill_op] : b[kill_op];
    // How far into op K. A write: after kill_step of its pwrites returned (all of them: during or after its
    // fsync). A create or a merge: 0 before its fsync of the origin, 1 as its command starts; or, once the
    // command runs, when the daemon creates the new snapshot's COW file, or renames its rewritten volume
    // table into place (seen with inotify on the state directory). Should that never happen, at its ack. A
    // mirror command: as it starts, or when the daemon renames the volume table (or at its ack).
    int kill_step = 0;
    std::string kill_file;
    if (kill_stream == 1) {
      // A forced resync saves no table: its kill comes as it starts.
      if (victim.kind != OpKind::mirror_resync && rng() % 2 == 0) kill_file = "kcopyfs.conf";
    } else if (victim.writes.empty()) {
      const bool safe_merge = victim.kind == OpKind::snapshot_merge && merge_mode() == MergeMode::safe;
      const int mode = static_cast<int>(rng() % (safe_merge ? 2 : 4));
      kill_step = std::min(mode, 1);
      if (mode == 2 && victim.kind == OpKind::snapshot_create) kill_file = victim.target + ".cow";
      if (mode >= 2 && kill_file.empty()) kill_file = "kcopyfs.conf";
    } else {
      kill_step = static_cast<int>(rng() % (victim.writes.size() + 1));
    }
    std::ostringstream what;
    what << "seed " << seed << ": " << a.size() << "+" << b.size() << "+" << c.size() << " ops, kill after "
         << kill_op << " acknowledged" << (kill_stream == 1 ? " of stream B" : "") << ", " << kill_step
         << " step(s) into " << describe(victim)
         << (kill_file.empty() ? "" : ", when the daemon makes " + kill_file);

    UniqueFd watch(::inotify_init1(IN_CLOEXEC | IN_NONBLOCK));
    ASSERT_TRUE(watch.valid()) << std::strerror(errno);
    ASSERT_GE(::inotify_add_watch(watch.get(), m_.state_dir().c_str(), IN_CREATE | IN_MOVED_TO), 0);
    int pipe_fds[2];
    ASSERT_EQ(::pipe2(pipe_fds, O_CLOEXEC), 0);
    UniqueFd reports(pipe_fds[0]), report_w(pipe_fds[1]);
    const pid_t daemon = m_.daemon_pid();
    ASSERT_GT(daemon, 0) << what.str();
    UniqueFd daemon_fd(static_cast<int>(::syscall(SYS_pidfd_open, daemon, 0)));
    // Streams B and C run beside A, on their own threads: the daemon sees concurrent writes to three volumes.
    test::Forked child([&]() -> int {
      reports.reset();
      watch.reset();
      std::atomic<bool> b_ok{true}, c_ok{true};
      std::thread mirror_writer([&] { b_ok = run_stream(1, b, report_w.get(), m_); });
      std::thread snapshot_writer([&] { c_ok = run_stream(2, c, report_w.get(), m_); });
      const bool a_ok = run_stream(0, a, report_w.get(), m_);
      mirror_writer.join();
      snapshot_writer.join();
      return a_ok && b_ok && c_ok ? 0 : 1;  // 1: an op failed, the usual end once the daemon is gone
    });
    ASSERT_TRUE(child.started());
    report_w.reset();
    ASSERT_EQ(::fcntl(reports.get(), F_SETFL, O_NONBLOCK), 0);

    std::vector<Progress> progress[3] = {std::vector<Progress>(a.size()), std::vector<Progress>(b.size()),
                                         std::vector<Progress>(c.size())};
    std::vector<Progress>& pv = progress[kill_stream];  // the victim's stream
    size_t acked[3] = {0, 0, 0};
    bool killed = false, file_seen = false, victim_failed = false, eof = false;
    std::string pending;
    auto kill_now = [&] {
      if (killed || acked[kill_stream] < kill_op || !pv[kill_op].started || pv[kill_op].steps < kill_step)
        return;
      if (!kill_file.empty() && !file_seen && !pv[kill_op].acked && !victim_failed) return;
      if (::kill(daemon, SIGKILL) != 0) ADD_FAILURE() << what.str() << ": kill: " << std::strerror(errno);
      killed = true;
      if (!kill_file.empty()) ++(file_seen ? stats_.kills_at_daemon_files : stats_.kills_at_ack_instead);
    };
    // Reads every report there is, deciding the kill after each.
    auto drain_reports = [&] {
      for (;;) {
        char chunk[256];
        const ssize_t got = ::read(reports.get(), chunk, sizeof chunk);
        if (got < 0 && errno == EINTR) continue;
        if (got == 0) eof = true;
        if (got <= 0) break;
        pending.append(chunk, static_cast<size_t>(got));
      }
      while (pending.size() >= sizeof(Report)) {
        Report r{};
        std::memcpy(&r, pending.data(), sizeof r);
        pending.erase(0, sizeof r);
        if (r.stream >= 3 || r.op >= progress[r.stream].size()) {
          ADD_FAILURE() << what.str() << ": a bad report";
          continue;
        }
        Progress& g = progress[r.stream][r.op];
        if (r.what == 'S') g.started = true;
        if (r.what == 'P') ++g.steps;
        if (r.what == 'A') g.acked = true;
        if (r.what == 'E') {
          const Op& op = r.stream == 0 ? a[r.op] : r.stream == 1 ? b[r.op] : c[r.op];
          const std::string how =
              std::string(call_name(r.call)) + ": " + (r.err != 0 ? std::strerror(r.err) : "failed");
          // Before the kill the daemon is alive: any failure is a finding.
          EXPECT_TRUE(killed) << what.str() << ": stream "
                              << "ABC"[r.stream] << " op " << r.op << " (" << describe(op) << "): " << how
                              << ", on the live mount";
          ++stats_.failures_after_kill[how];
          if (r.stream == kill_stream && r.op == kill_op) victim_failed = true;
        }
        if (r.what == 'A') ++acked[r.stream];
        kill_now();
      }
    };
    const auto deadline = test::Clock::now() + kSeedDeadline;
    while (!eof) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - test::Clock::now());
      ASSERT_GT(left.count(), 0) << what.str()
                                 << ": the workload neither finished nor failed in time (hang?); "
                                 << acked[kill_stream] << " ops of stream "
                                 << "AB"[kill_stream] << " acknowledged, killed: " << killed;
      pollfd p[2] = {{reports.get(), POLLIN, 0}, {watch.get(), POLLIN, 0}};
      if (::poll(p, 2, static_cast<int>(left.count())) <= 0) continue;
      drain_reports();
      alignas(inotify_event) char events[4096];
      for (ssize_t n; (n = ::read(watch.get(), events, sizeof events)) > 0;) {
        for (ssize_t at = 0; at < n;) {
          const auto* e = reinterpret_cast<const inotify_event*>(events + at);
          at += static_cast<ssize_t>(sizeof(inotify_event) + e->len);
          if (kill_file.empty() || e->len == 0 || kill_file != e->name) continue;
          // The command of op K runs after its 'P' report was written (a mirror command: its 'S'): with the
          // reports read again, an event that op K caused finds that report; one from an earlier op does not
          // (another stream's may: a kill in op K all the same).
          drain_reports();
          if (kill_stream == 0 ? pv[kill_op].steps >= 1 : pv[kill_op].started) file_seen = true;
        }
      }
      kill_now();
    }
    const auto status = child.wait(30s);
    ASSERT_TRUE(status.has_value()) << what.str() << ": the workload did not exit after its reports ended";
    ASSERT_TRUE(killed) << what.str() << ": the workload stopped before the kill point, after "
                        << acked[kill_stream] << " acknowledged ops of stream "
                        << "AB"[kill_stream]
                        << " (an op failed on a live mount? see the child's message above)";
    ASSERT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) <= 1)
        << what.str() << ": child status " << *status;
    pollfd gone{daemon_fd.get(), POLLIN, 0};
    ASSERT_EQ(::poll(&gone, 1, 20000), 1)
        << what.str() << ": daemon " << daemon << " still there after SIGKILL";
    ++stats_.kills;
    // Finding 1 (docs/reliability.md): the killed daemon's files stay locked for a moment after it is gone
    // (its io_uring instance is torn down asynchronously and still holds them); a mount in that window loaded
    // the target as `failed` until the daemon learned to retry. KCOPYFS_SOAK_STRICT_REMOUNT=0 waits (bounded)
    // for the locks to go before remounting, counting how often and how long.
    if (!strict_remount()) {
      const auto gone_at = test::Clock::now();
      const std::vector<std::string> held = locked_files({m_.dir().path().string(), m_.state_dir()});
      if (!held.empty()) {
        ++stats_.locks_outlived_daemon;
        const bool released = test::wait_until(
            [&] {
              return locked_files({m_.dir().path().string(), m_.state_dir()}).empty();
            },
            20s);
        ASSERT_TRUE(released) << what.str() << ": " << held.front()
                              << " still locked 20 s after the daemon died";
        const auto waited =
            std::chrono::duration_cast<std::chrono::microseconds>(test::Clock::now() - gone_at).count();
        stats_.lock_wait_max_us = std::max<uint64_t>(stats_.lock_wait_max_us, static_cast<uint64_t>(waited));
      }
    }

    // The model learns what was acknowledged, and what may or may not have happened.
    apply(a, progress[0]);
    apply(b, progress[1]);
    apply(c, progress[2]);
    what << "; acknowledged " << acked[0] << "/" << a.size() << " A, " << count_acked(progress[1]) << "/"
         << b.size() << " B, " << count_acked(progress[2]) << "/" << c.size() << " C";

    // The mount is dead; the next mount of the state directory detaches it by itself.
    struct statvfs vfs {};
    const int vfs_rc = ::statvfs(m_.mnt().c_str(), &vfs);
    const int vfs_errno = errno;
    EXPECT_TRUE(vfs_rc != 0 && vfs_errno == ENOTCONN)
        << what.str()
        << ": statvfs of the dead mount: " << (vfs_rc == 0 ? "succeeded" : std::strerror(vfs_errno));
    const CommandResult mount = m_.mount();
    ASSERT_TRUE(mount.ok()) << what.str() << ": mount after the SIGKILL refused: " << mount;
    ASSERT_EQ(mounts_at(m_.mnt()), 1) << what.str() << ": the dead mount is still under the new one";
    ASSERT_NE(m_.daemon_pid(), daemon);

    verify(what.str());
    if (::testing::Test::HasFailure()) {
      // What the daemons said, for the report.
      std::cout << "the daemon's log (" << m_.state_dir() << "/kcopyfs.log):\n"
                << test::read_all(m_.state_dir() + "/kcopyfs.log") << "the volume table:\n"
                << test::read_all(m_.table_path()) << std::endl;
      return;
    }
    ASSERT_NO_FATAL_FAILURE(trim_snapshots(what.str()));
    ++stats_.seeds;
    const double secs = std::chrono::duration<double>(test::Clock::now() - started).count();
    std::cout << what.str() << "; ok (" << static_cast<int>(secs * 1000) << " ms)" << std::endl;
  }

  // The end of a group: the mirror in sync, a clean umount, the image files equal the model.
  void finish() {
    if (!merging_.empty()) {
      ASSERT_TRUE(m_.wait_for_target(
          merging_, [](const nlohmann::json& t) { return t.is_null(); }, 60s))
          << "the merge of " << merging_ << " never finished: " << m_.target(merging_).dump();
      merging_.clear();
      ++stats_.merges_finished;
    }
    for (const auto& s : snapshots_) ASSERT_TRUE(s.image.settled());
    ASSERT_TRUE(origin_.settled() && mirror_.settled());
    ASSERT_TRUE(m_.wait_for_target("m", mirror_in_sync, 60s))
        << "mirror never in sync: " << m_.target("m").dump();
    const pid_t daemon = m_.daemon_pid();
    const CommandResult umount = m_.umount();
    ASSERT_TRUE(umount.ok()) << umount;
    EXPECT_EQ(mounts_at(m_.mnt()), 0);
    EXPECT_TRUE(test::wait_gone(daemon, 20s)) << "the daemon did not exit after umount";
    ++stats_.clean_umounts;
    // The daemons of the group wrote their stderr here: a sanitizer report (the ASan+UBSan build; a leak
    // shows at this clean exit) is a failure even though no command failed.
    const std::string log = test::read_all(m_.state_dir() + "/kcopyfs.log");
    for (const char* report : {"AddressSanitizer", "LeakSanitizer", "runtime error:"}) {
      EXPECT_EQ(log.find(report), std::string::npos) << "the daemon's log has a sanitizer report:\n" << log;
    }
    uint64_t ignored = 0;
    for (const std::string& path : {origin_img_, leg0_, leg1_}) {  // leg1_: the second leg now
      VolumeModel copy = path == origin_img_ ? origin_ : mirror_;
      const std::string diff = check_volume(path, copy, &stats_.blocks_checked, &ignored);
      EXPECT_EQ(diff, "") << "after a clean umount";
    }
  }

 private:
  static uint64_t version_of(uint64_t seed, uint64_t stream, uint64_t n) {
    // Unique per (seed, stream, write), never 0.
    return (seed << 24) | (stream << 20) | (n + 1);
  }

  static std::string describe(const Op& op) {
    switch (op.kind) {
      case OpKind::origin_write:
        return std::string("origin write (") + std::to_string(op.writes.size()) + " pwrites" +
               (op.fsync ? ", fsync)" : ")");
      case OpKind::snapshot_write:
        return std::string("write to ") + op.target + " (" + std::to_string(op.writes.size()) + " pwrites" +
               (op.fsync ? ", fsync)" : ")");
      case OpKind::mirror_write:
        return "mirror write";
      case OpKind::snapshot_create:
        return std::string("snapshot create ") + op.target + (op.writable ? " --writable" : "") +
               (op.transient ? " --transient" : "") + " --chunk-size " + op.chunk_size;
      case OpKind::snapshot_merge:
        return "snapshot merge " + op.target;
      case OpKind::mirror_replace:
        return "mirror replace " + op.old_leg + " " + op.new_leg;
      case OpKind::mirror_throttle:
        return "mirror throttle --percent " + std::to_string(op.throttle_percent) + " --rate " +
               std::to_string(op.throttle_bytes_per_second);
      case OpKind::mirror_resync:
        return "mirror resync";
    }
    return "?";
  }

  static const char* call_name(char call) {
    switch (call) {
      case 'o':
        return "open";
      case 'w':
        return "pwrite";
      case 'f':
        return "fsync";
      case 'c':
        return "snapshot create";
      case 'm':
        return "snapshot merge";
      case 'r':
        return "mirror replace";
      case 't':
        return "mirror throttle";
      case 's':
        return "mirror resync";
    }
    return "?";
  }

  static size_t count_acked(const std::vector<Progress>& p) {
    return static_cast<size_t>(std::count_if(p.begin(), p.end(), [](const Progress& g) { return g.acked; }));
  }

  std::vector<Extent> random_extents(std::mt19937_64& rng, uint64_t seed, uint64_t stream,
                                     uint64_t& counter) {
    std::vector<Extent> out;
    const int n = 1 + static_cast<int>(rng() % 4);
    for (int i = 0; i < n; ++i) {
      const uint64_t count = 1 + rng() % 8;
      // Half the writes land in a hot 64-block zone, so blocks are overwritten and undecided often.
      const uint64_t first = rng() % 2 == 0 ? rng() % (64 - count) : rng() % (kVolumeBlocks - count);
      out.push_back({first, count, version_of(seed, stream, counter++)});
    }
    return out;
  }

  std::vector<Op> plan_stream_a(uint64_t seed, std::mt19937_64& rng) {
    std::vector<std::string> read_only;  // the merge candidates
    for (const auto& s : snapshots_) {
      if (!s.writable && merge_mode() == MergeMode::any) read_only.push_back(s.name);
    }
    if (merge_mode() == MergeMode::safe && !snapshots_.empty() && !snapshots_.back().writable)
      read_only.push_back(snapshots_.back().name);
    std::vector<Op> ops;
    const size_t length = 8 + rng() % 30;
    uint64_t counter = 0;
    int creates = 0;
    // A merge refuses creates (and other merges) until it is done: at most one per seed, none while one from
    // an earlier seed runs, and no creates after it.
    bool merged = !merging_.empty();
    while (ops.size() < length) {
      const uint64_t dice = rng() % 100;
      Op op;
      if (dice < 4 && !merged && !read_only.empty()) {
        op.kind = OpKind::snapshot_merge;
        op.target = read_only[rng() % read_only.size()];
        op.wait = merge_mode() == MergeMode::safe;
        merged = true;
      } else if (dice < 14 && creates < 2 && !merged) {
        op.kind = OpKind::snapshot_create;
        op.writable = rng() % 3 == 0;
        op.transient = rng() % 4 == 0;
        op.target =
            std::string(op.writable ? "w" : "s") + std::to_string(seed) + "-" + std::to_string(creates);
        static const char* kChunks[] = {"4K", "8K", "16K", "64K"};
        op.chunk_size = kChunks[rng() % 4];
        ++creates;
        // The new snapshot is now the newest: the candidates of "newest" are no longer.
        if (merge_mode() == MergeMode::safe) read_only.clear();
      } else {
        op.kind = OpKind::origin_write;
        op.writes = random_extents(rng, seed, 0, counter);
        op.fsync = rng() % 5 != 0;
      }
      ops.push_back(std::move(op));
    }
    return ops;
  }

  // Mirror writes, now and then a `mirror replace` of the second leg (by the image not in the mirror, which
  // the one replaced becomes), a forced `mirror resync` or a `mirror throttle` of the resync.
  std::vector<Op> plan_stream_b(uint64_t seed, std::mt19937_64& rng) {
    std::vector<Op> ops(40);
    uint64_t counter = 0;
    std::string second = leg1_, spare = spare_leg_;
    for (Op& op : ops) {
      const uint64_t dice = rng() % 100;
      if (dice < 4) {
        op.kind = OpKind::mirror_replace;
        op.old_leg = second;
        op.new_leg = spare;
        std::swap(second, spare);
      } else if (dice < 6) {
        op.kind = OpKind::mirror_resync;
      } else if (dice < 10) {
        op.kind = OpKind::mirror_throttle;
        static const unsigned kPercents[] = {100, 100, 50, 10};
        static const uint64_t kRates[] = {0, 0, 16 << 20, 64 << 20};
        op.throttle_percent = kPercents[rng() % 4];
        op.throttle_bytes_per_second = kRates[rng() % 4];
      } else {
        op.kind = OpKind::mirror_write;
        op.writes = random_extents(rng, seed, 1, counter);
        op.fsync = rng() % 4 != 0;
      }
    }
    return ops;
  }

  // Writes to the writable snapshots that exist before the seed (one made by this seed's stream A is
  // written from the next seed on).
  std::vector<Op> plan_stream_c(uint64_t seed, std::mt19937_64& rng) {
    std::vector<std::string> writable;
    for (const auto& s : snapshots_) {
      if (s.writable) writable.push_back(s.name);
    }
    std::vector<Op> ops;
    if (writable.empty()) return ops;
    ops.resize(30);
    uint64_t counter = 0;
    for (Op& op : ops) {
      op.kind = OpKind::snapshot_write;
      op.target = writable[rng() % writable.size()];
      op.writes = random_extents(rng, seed, 3, counter);
      op.fsync = rng() % 4 != 0;
    }
    return ops;
  }

  VolumeModel* volume(const Op& op) {
    if (op.kind == OpKind::origin_write) return &origin_;
    if (op.kind == OpKind::mirror_write) return &mirror_;
    for (auto& s : snapshots_) {
      if (s.name == op.target) return &s.image;
    }
    return nullptr;
  }

  // Applies a stream's ops to the model as far as the reports say they went. Ops of one stream run in
  // order, so at most the last started one is unacknowledged.
  void apply(const std::vector<Op>& ops, const std::vector<Progress>& progress) {
    for (size_t i = 0; i < ops.size() && progress[i].started; ++i) {
      const Op& op = ops[i];
      const Progress& g = progress[i];
      if (op.kind == OpKind::snapshot_create) {
        if (g.steps >= 1) origin_.synced();  // its fsync of the origin returned
        if (g.steps < 1) continue;           // the create was never asked for
        ASSERT_TRUE(origin_.settled());
        SnapshotModel s{op.target, op.writable, origin_, op.transient};
        if (g.acked) {
          snapshots_.push_back(std::move(s));
          ++stats_.snapshots_created;
        } else {
          interrupted_create_ = std::move(s);
          ++stats_.creates_interrupted;
        }
        continue;
      }
      if (op.kind == OpKind::snapshot_merge) {
        if (g.steps >= 1) origin_.synced();
        if (g.steps < 1) continue;
        const auto it = std::find_if(snapshots_.begin(), snapshots_.end(),
                                     [&](const SnapshotModel& s) { return s.name == op.target; });
        ASSERT_NE(it, snapshots_.end()) << op.target;
        if (g.acked) {
          // The origin shows the snapshot at once; the other snapshots keep their content.
          origin_ = it->image;
          if (op.wait) {
            ++stats_.merges_finished;  // --wait returned: it is done
          } else {
            merging_ = it->name;
          }
          snapshots_.erase(it);
          ++stats_.merges_started;
        } else {
          interrupted_merge_ = it->name;  // resolved by what the remount shows
          ++stats_.merges_interrupted;
        }
        continue;
      }
      if (op.kind == OpKind::mirror_replace) {
        if (g.acked) {
          std::swap(leg1_, spare_leg_);
          ++stats_.replaces_acked;
        } else {
          interrupted_replace_ = true;  // resolved by the table the remount loads
          ++stats_.replaces_interrupted;
        }
        continue;
      }
      if (op.kind == OpKind::mirror_resync) {
        if (g.acked) ++stats_.resyncs_acked;  // the mirror's content is the same either way
        continue;
      }
      if (op.kind == OpKind::mirror_throttle) {
        const ThrottleModel set{op.throttle_percent, op.throttle_bytes_per_second};
        if (g.acked) {
          throttle_ = set;
          ++stats_.throttles_acked;
        } else {
          interrupted_throttle_ = set;
          ++stats_.throttles_interrupted;
        }
        continue;
      }
      VolumeModel* v = volume(op);
      ASSERT_NE(v, nullptr) << "no model for " << op.target;
      // pwrites 0..steps-1 returned; pwrite `steps` may be in flight.
      const size_t issued =
          g.acked ? op.writes.size() : std::min(op.writes.size(), static_cast<size_t>(g.steps) + 1);
      for (size_t k = 0; k < issued; ++k)
        v->write(op.writes[k].block, op.writes[k].count, op.writes[k].version);
      if (g.acked && op.fsync) {
        v->synced();
        ++stats_.fsynced_writes_acked;
      } else {
        ++stats_.writes_not_durable;
      }
    }
  }

  void verify(const std::string& what) {
    const nlohmann::json status = m_.status_json();
    ASSERT_TRUE(status.is_object() && status.contains("targets")) << what << ": " << status.dump();
    std::map<std::string, nlohmann::json> targets;
    for (const auto& t : status["targets"]) targets[t.value("name", "")] = t;
    for (const auto& [name, t] : targets) {
      EXPECT_NE(state_of(t), "failed") << what << ": " << t.dump();
    }
    // A transient snapshot does not outlive its daemon: the remount dropped it and its default COW file.
    for (auto it = snapshots_.begin(); it != snapshots_.end();) {
      if (!it->transient) {
        ++it;
        continue;
      }
      expect_dropped(what, targets, it->name, true);
      it = snapshots_.erase(it);
    }
    if (interrupted_create_ && interrupted_create_->transient) {
      expect_dropped(what, targets, interrupted_create_->name, false);
      interrupted_create_.reset();
    }
    if (interrupted_create_) {
      if (targets.count(interrupted_create_->name) != 0) {
        ++stats_.interrupted_created;
        std::cout << "  the interrupted create of " << interrupted_create_->name << " happened" << std::endl;
        snapshots_.push_back(std::move(*interrupted_create_));
      } else if (test::path_exists(m_.state_dir() + "/" + interrupted_create_->name + ".cow")) {
        // Not a failure of the checks the soak makes, but worth knowing: a leftover of a create cut short.
        ++stats_.leftover_cows;
        std::cout << "  note: " << interrupted_create_->name << ".cow is left in the state directory"
                  << std::endl;
      }
      interrupted_create_.reset();
    }
    if (!interrupted_merge_.empty()) {
      // Either the merge never started (the snapshot is there, not merging) or it did, all of it.
      const auto t = targets.find(interrupted_merge_);
      if (t == targets.end() || state_of(t->second) == "merging") {
        ++stats_.interrupted_merged;
        std::cout << "  the interrupted merge of " << interrupted_merge_ << " happened" << std::endl;
        const auto it = std::find_if(snapshots_.begin(), snapshots_.end(),
                                     [&](const SnapshotModel& s) { return s.name == interrupted_merge_; });
        ASSERT_NE(it, snapshots_.end());
        origin_ = it->image;
        merging_ = it->name;
        snapshots_.erase(it);
      }
      interrupted_merge_.clear();
    }
    // A merge goes on (resumed by this mount) until the snapshot is gone: merging, then absent.
    if (!merging_.empty()) {
      const auto t = targets.find(merging_);
      if (t == targets.end()) {
        merging_.clear();
        ++stats_.merges_finished;
      } else {
        EXPECT_EQ(state_of(t->second), "merging") << what << ": " << t->second.dump();
        ++stats_.merges_seen_merging;
      }
    }
    std::set<std::string> present;
    for (const auto& [name, t] : targets) present.insert(name);
    std::set<std::string> expected{"o", "m"};
    for (const auto& s : snapshots_) expected.insert(s.name);
    if (!merging_.empty()) expected.insert(merging_);
    ASSERT_EQ(present, expected) << what
                                 << ": the targets after the remount are not the model's: " << status.dump();
    EXPECT_EQ(state_of(targets["o"]), "active") << what;
    const std::string mirror_state = state_of(targets["m"]);
    EXPECT_TRUE(mirror_state == "active" || mirror_state == "resyncing")
        << what << ": " << targets["m"].dump();
    ASSERT_NO_FATAL_FAILURE(verify_mirror_table(what, targets["m"]));
    for (const auto& s : snapshots_) {
      EXPECT_EQ(state_of(targets[s.name]), "active") << what << ": " << targets[s.name].dump();
      EXPECT_EQ(targets[s.name].value("writable", !s.writable), s.writable) << what << ": " << s.name;
    }

    uint64_t& checked = stats_.blocks_checked;
    uint64_t& undecided = stats_.undecided_blocks;
    const std::string origin_diff = check_volume(m_.origin_view("o"), origin_, &checked, &undecided);
    ASSERT_EQ(origin_diff, "") << what;
    for (auto& s : snapshots_) {
      const std::string diff = check_volume(m_.snapshot_view(s.name), s.image, &checked, &undecided);
      ASSERT_EQ(diff, "") << what << ": snapshot " << s.name << (s.writable ? " (writable)" : " (read-only)");
      ++stats_.snapshot_checks;
    }
    // Twice: reads are spread over the in-sync legs, so a leg that differs shows up on one of the passes.
    for (int pass = 0; pass < 2; ++pass) {
      const std::string diff = check_volume(m_.mirror_view("m"), mirror_, &checked, &undecided);
      ASSERT_EQ(diff, "") << what << ": mirror, pass " << pass;
    }
    // "safe" merges (merge_mode()): a merge this mount resumed ends before the next seed's kill can meet it.
    if (!merging_.empty() && merge_mode() == MergeMode::safe) {
      ASSERT_TRUE(m_.wait_for_target(
          merging_, [](const nlohmann::json& t) { return t.is_null(); }, 60s))
          << what << ": the resumed merge of " << merging_
          << " never finished: " << m_.target(merging_).dump();
      merging_.clear();
      ++stats_.merges_finished;
    }
  }

  // A transient snapshot after the remount: gone and, once its create was acknowledged (the table named it),
  // its default COW file deleted. A create cut short may leave the file, as a persistent one's may.
  void expect_dropped(const std::string& what, const std::map<std::string, nlohmann::json>& targets,
                      const std::string& name, bool acknowledged) {
    EXPECT_EQ(targets.count(name), 0u) << what << ": transient snapshot " << name << " outlived its daemon";
    const bool cow_left = test::path_exists(m_.state_dir() + "/" + name + ".cow");
    if (acknowledged) {
      EXPECT_FALSE(cow_left) << what << ": the COW file of transient snapshot " << name << " is left";
    } else if (cow_left) {
      ++stats_.leftover_cows;
      std::cout << "  note: " << name << ".cow is left in the state directory" << std::endl;
    }
    ++stats_.transients_dropped;
  }

  // The mirror's legs and throttle after the remount: what was acknowledged, or for a command in flight at
  // the kill, what it was setting, whole. The model then takes what the mount shows.
  void verify_mirror_table(const std::string& what, const nlohmann::json& t) {
    std::vector<std::string> legs;
    if (t.contains("legs"))
      for (const auto& l : t["legs"]) legs.push_back(l.value("device", ""));
    const bool replaced = legs == std::vector<std::string>{leg0_, spare_leg_};
    if (interrupted_replace_ && replaced) {
      ++stats_.interrupted_replaced;
      std::cout << "  the interrupted replace of " << leg1_ << " happened" << std::endl;
      std::swap(leg1_, spare_leg_);
    }
    interrupted_replace_ = false;
    ASSERT_EQ(legs, (std::vector<std::string>{leg0_, leg1_})) << what << ": the mirror's legs: " << t.dump();
    // A leg the killed daemon had just replaced out is in no table, so no mount waits for the dead daemon's
    // io_uring to let go of it (finding 1): the next replace onto it would meet its lock. Wait for that here,
    // as a user would retry.
    if (test::file_locked(spare_leg_)) {
      ++stats_.spare_leg_locked;
      ASSERT_TRUE(test::wait_until([&] { return !test::file_locked(spare_leg_); }, 20s))
          << what << ": " << spare_leg_ << " still locked 20 s after the daemon that held it died";
    }
    const nlohmann::json j = t.value("throttle", nlohmann::json::object());
    const ThrottleModel shown{j.value("percent", 0u), j.value("bytes_per_second", uint64_t{0})};
    if (interrupted_throttle_ && shown == *interrupted_throttle_) throttle_ = shown;
    interrupted_throttle_.reset();
    EXPECT_TRUE(shown == throttle_) << what << ": the mirror's throttle " << j.dump() << ", the model's "
                                    << throttle_.percent << "% " << throttle_.bytes_per_second << " B/s";
  }

  // Removes the oldest snapshots beyond the limits, while nothing runs (and no merge).
  void trim_snapshots(const std::string& what) {
    if (!merging_.empty()) return;
    for (const bool writable : {false, true}) {
      const size_t limit = writable ? kMaxWritable : kMaxReadOnly;
      for (;;) {
        const auto count = static_cast<size_t>(
            std::count_if(snapshots_.begin(), snapshots_.end(),
                          [&](const SnapshotModel& s) { return s.writable == writable; }));
        if (count <= limit) break;
        const auto oldest = std::find_if(snapshots_.begin(), snapshots_.end(),
                                         [&](const SnapshotModel& s) { return s.writable == writable; });
        const CommandResult r = m_.remove(oldest->name);
        ASSERT_TRUE(r.ok()) << what << ": " << r;
        snapshots_.erase(oldest);
      }
    }
  }

  uint64_t group_seed_;
  Stats& stats_;
  KcopyfsMount m_;
  std::string origin_img_, leg0_;
  std::string leg1_, spare_leg_;      // the mirror's second leg now, and the image a replace swaps in
  bool interrupted_replace_ = false;  // a replace in flight at the kill
  ThrottleModel throttle_;            // the mirror's throttle, as acknowledged
  std::optional<ThrottleModel> interrupted_throttle_;  // a throttle in flight at the kill
  VolumeModel origin_, mirror_;
  std::vector<SnapshotModel> snapshots_;  // oldest first
  std::string merging_;                   // a snapshot merging into the origin (not in snapshots_)
  // The op of stream A in flight at the kill, when it was a create or a merge: resolved by the remount.
  std::optional<SnapshotModel> interrupted_create_;
  std::string interrupted_merge_;
};

TEST(SigkillSoak, MixedWorkloadSurvivesRandomKills) {
  if (!test::running_as_root()) GTEST_SKIP() << "needs root (FUSE mounts)";
  std::vector<uint64_t> seeds;
  if (const auto one = env_number("KCOPYFS_SOAK_SEED")) {
    seeds.push_back(*one);
  } else {
#ifdef KCOPYFS_SOAK_SANITIZED
    const int default_seeds = kSanitizedSeeds;
#else
    const int default_seeds = kDefaultSeeds;
#endif
    const uint64_t count = env_number("KCOPYFS_SOAK_SEEDS").value_or(default_seeds);
    const uint64_t first =
        env_number("KCOPYFS_SOAK_FIRST")
            .value_or(static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count()) %
                      1000000 * 1000);
    for (uint64_t i = 0; i < count; ++i) seeds.push_back(first + i);
  }
  if (seeds.empty()) GTEST_SKIP() << "KCOPYFS_SOAK_SEEDS=0";
  std::cout << "SIGKILL soak: " << seeds.size() << " seeds from " << seeds.front() << ", groups of "
            << kGroupSeeds << std::endl;
  Stats stats;
  const auto started = test::Clock::now();
  for (size_t g = 0; g < seeds.size(); g += kGroupSeeds) {
    const uint64_t group_first = seeds[g];
    const size_t group_end = std::min(seeds.size(), g + kGroupSeeds);
    SCOPED_TRACE("group from seed " + std::to_string(group_first) + " (replay: KCOPYFS_SOAK_FIRST=" +
                 std::to_string(group_first) + " KCOPYFS_SOAK_SEEDS=" + std::to_string(group_end - g) + ")");
    Soak soak(group_first, stats);
    ASSERT_NO_FATAL_FAILURE(soak.set_up());
    for (size_t i = g; i < group_end; ++i) {
      ASSERT_NO_FATAL_FAILURE(soak.run_seed(seeds[i]));
      if (::testing::Test::HasFailure()) return;
    }
    ASSERT_NO_FATAL_FAILURE(soak.finish());
  }
  const double secs = std::chrono::duration<double>(test::Clock::now() - started).count();
  std::cout << "how ops failed after the kill:";
  for (const auto& [how, n] : stats.failures_after_kill) std::cout << " " << how << " x" << n << ";";
  std::cout << std::endl;
  std::cout << "SIGKILL soak done: " << stats.seeds << " seeds, " << stats.kills << " kills, "
            << stats.fsynced_writes_acked << " fsync'd writes acknowledged and checked, "
            << stats.writes_not_durable << " writes not made durable (" << stats.undecided_blocks
            << " undecided blocks resolved), " << stats.snapshots_created
            << " snapshot creates acknowledged, " << stats.creates_interrupted << " interrupted ("
            << stats.interrupted_created << " of them done), " << stats.snapshot_checks
            << " snapshot views checked, " << stats.blocks_checked << " blocks checked, "
            << stats.clean_umounts << " clean umounts with image checks; " << stats.merges_started
            << " merges acknowledged, " << stats.merges_interrupted << " interrupted ("
            << stats.interrupted_merged << " of them done), " << stats.merges_finished << " seen finished, "
            << stats.merges_seen_merging
            << " times seen merging after a remount; kills on a daemon file event: "
            << stats.kills_at_daemon_files << " (" << stats.kills_at_ack_instead << " fell back to the ack); "
            << stats.leftover_cows << " COW files left by interrupted creates; mirror replaces acknowledged: "
            << stats.replaces_acked << ", interrupted: " << stats.replaces_interrupted << " ("
            << stats.interrupted_replaced
            << " of them done); throttles acknowledged: " << stats.throttles_acked
            << ", interrupted: " << stats.throttles_interrupted
            << "; resyncs acknowledged: " << stats.resyncs_acked
            << "; transient snapshots dropped by a remount: " << stats.transients_dropped
            << "; image replaced out still locked after the remount: " << stats.spare_leg_locked
            << "; files still locked after the daemon was gone: " << stats.locks_outlived_daemon
            << " times, for at most " << stats.lock_wait_max_us / 1000.0 << " ms; " << static_cast<int>(secs)
            << " s" << std::endl;
}

}  // namespace
}  // namespace kcopyfs
