// The child process of snapshot_crash_test (see crash_workload.h). It is started with fork+exec (posix_spawn)
// so that it begins without the parent's threads, and reports on fd 3.
//
//   snapshot_crash_workload random <dir> <seed>   the random workload on <dir>/origin.img, until killed
//   snapshot_crash_workload random-wsnap <dir> <seed>  the writable-snapshot random workload, until killed
//   snapshot_crash_workload point <dir> <name>     a crash-point scenario: "ready" once set up, then "hook"
//                                                  right before the process ends at the crash point (or
//                                                  "completed" if the point was never reached: only once
//                                                  the origin is closed, so every I/O the scenario started,
//                                                  deferred commits included, is over)
//
// Any unexpected error ends the process with a message on stderr and a non-zero status.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "engine/file_device.h"
#include "snapshot/origin.h"
#include "tests/snapshot/crash_workload.h"
#include "tests/snapshot/fault_file.h"

namespace kcopyfs::crash {
namespace {

constexpr auto kWait = std::chrono::seconds(60);

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "snapshot_crash_workload: %s\n", what.c_str());
  std::fflush(stderr);
  _exit(2);
}

void report(const std::string& line) {
  const std::string text = line + "\n";
  if (::write(kReportFd, text.data(), text.size()) != static_cast<ssize_t>(text.size())) die("report failed");
}

std::unique_ptr<FileDevice> open_file(const std::string& path) {
  auto dev = FileDevice::open(path, OpenOptions{});
  if (!dev) die(dev.error().message());
  return std::move(dev).value();
}

std::unique_ptr<Origin> open_origin(std::unique_ptr<BlockDevice> dev) {
  auto o = Origin::create(std::move(dev));
  if (!o) die(o.error().message());
  return std::move(o).value();
}

// Waits for a callback; any error or a timeout ends the process.
std::error_code wait_for(std::future<std::error_code>& f, const std::string& what) {
  if (f.wait_for(kWait) != std::future_status::ready) die(what + ": timeout");
  return f.get();
}

void sync_write(BlockDevice& dev, uint64_t offset, const std::vector<std::byte>& data) {
  auto p = std::make_shared<std::promise<std::error_code>>();
  auto f = p->get_future();
  dev.write(Bytes(offset), data, [p](std::error_code ec) { p->set_value(ec); });
  if (auto ec = wait_for(f, "write")) die("write to " + dev.path() + ": " + ec.message());
}

void sync_flush(BlockDevice& dev) {
  auto p = std::make_shared<std::promise<std::error_code>>();
  auto f = p->get_future();
  dev.flush([p](std::error_code ec) { p->set_value(ec); });
  if (auto ec = wait_for(f, "flush")) die("flush of " + dev.path() + ": " + ec.message());
}

// Closes the origin and its snapshots, which waits for everything they still have in flight: the deferred
// commit of an acknowledged snapshot write in particular (~Origin waits for it). On a thread, so that the
// wait is bounded: a timeout ends the process (_exit, with the thread still running).
void close_origin(std::unique_ptr<Origin>& origin) {
  auto closed = std::make_shared<std::promise<void>>();
  auto f = closed->get_future();
  std::thread closer([&origin, closed] {
    origin.reset();
    closed->set_value();
  });
  if (f.wait_for(kWait) != std::future_status::ready) die("closing the origin: timeout");
  closer.join();
}

Snapshot* create(Origin& origin, const std::string& name, std::unique_ptr<BlockDevice> cow, uint64_t chunk,
                 bool writable) {
  SnapshotOptions options;
  options.chunk_size = Sector(chunk);
  options.writable = writable;
  auto s = origin.create_snapshot(name, std::move(cow), options);
  if (!s) die(s.error().message());
  return s.value();
}

// ---- random ----

int run_random(const std::string& dir, uint64_t seed, bool wsnap) {
  Workload workload(seed, wsnap);
  auto cow_path = [&](const SnapSpec& s) { return dir + "/" + s.name + ".cow"; };
  // Slow COW flushes widen the time between a write's acknowledgement and its durable commit, so that kills
  // land there often (deferred commit: a flush of the view must wait for the commit).
  auto open_cow = [&](const SnapSpec& s) -> std::unique_ptr<BlockDevice> {
    if (!wsnap) return open_file(cow_path(s));
    auto f = test::FaultyFile::open(cow_path(s));
    f->fault().set_latency(FaultDevice::Op::flush, std::chrono::milliseconds(3));
    return f;
  };
  std::unique_ptr<Origin> origin = open_origin(open_file(dir + "/origin.img"));
  std::vector<Snapshot*> snaps;
  for (int i = 0; i < kMaxSteps; ++i) {
    const Step step = workload.next();
    switch (step.kind) {
      case Step::Kind::create: {
        // Every other COW is not zeros: the store must not rely on anything it did not write itself (such as
        // the terminator of the area after a full one). The others are sparse, as `snapshot create` makes
        // them, so the origin fills their holes ahead of the store (engine/fill_ahead_device.h) while it
        // dies.
        if (snaps.size() % 2 == 0)
          test::write_file(cow_path(step.snap), 0, std::vector<std::byte>(kCowBytes, std::byte{0xA5}));
        else
          test::make_sparse_file(cow_path(step.snap), kCowBytes);
        snaps.push_back(create(*origin, step.snap.name, open_cow(step.snap), step.snap.chunk_sectors,
                               step.snap.writable));
        break;
      }
      case Step::Kind::reopen: {
        snaps.clear();
        origin.reset();
        origin = open_origin(open_file(dir + "/origin.img"));
        for (const SnapSpec& s : workload.snapshots()) {
          auto snap = origin->attach_snapshot(s.name, open_cow(s), s.writable);
          if (!snap) die(snap.error().message());
          snaps.push_back(snap.value());
        }
        break;
      }
      case Step::Kind::write: {
        std::vector<std::vector<std::byte>> data;
        for (const WriteOp& w : step.writes) data.push_back(test::pattern(w.data_seed, 0, w.length));
        std::vector<std::future<std::error_code>> done;
        std::vector<BlockDevice*> written;
        for (size_t k = 0; k < step.writes.size(); ++k) {
          const WriteOp& w = step.writes[k];
          BlockDevice* view = w.view < 0 ? static_cast<BlockDevice*>(origin.get()) : snaps[w.view];
          auto p = std::make_shared<std::promise<std::error_code>>();
          done.push_back(p->get_future());
          view->write(Bytes(w.offset), data[k], [p](std::error_code ec) { p->set_value(ec); });
          if (std::find(written.begin(), written.end(), view) == written.end()) written.push_back(view);
        }
        for (auto& f : done) {
          if (auto ec = wait_for(f, "write")) die("write: " + ec.message());
        }
        if (step.flush) {
          for (BlockDevice* view : written) sync_flush(*view);
        }
        break;
      }
    }
    report(std::to_string(i));
  }
  return 0;
}

// ---- crash points ----

void arm(FaultDevice& dev, const CrashPoint& p) {
  const auto op = p.op == OpKind::flush ? FaultDevice::Op::flush : FaultDevice::Op::write;
  if (p.nth > 1) dev.add_rule({op, Sector(p.start), Sector(p.count), 0, {}, p.nth - 1});
  dev.add_rule({op, Sector(p.start), Sector(p.count), 0, {}, 1, [] {
                  static const char kHook[] = "hook\n";
                  if (::write(kReportFd, kHook, sizeof kHook - 1) < 0) _exit(3);
                  _exit(0);  // the crash: nothing after this point runs, nothing is flushed
                }});
}

int run_point(const std::string& dir, const CrashPoint& p) {
  const std::string scenario = p.scenario;
  auto origin_dev = test::FaultyFile::open(dir + "/origin.img");
  FaultDevice* origin_fault = &origin_dev->fault();
  std::unique_ptr<Origin> origin = open_origin(std::move(origin_dev));
  // A used device, not zeros: the store must not rely on anything it did not write itself (such as the next
  // area's terminator).
  test::write_pattern_file(dir + "/s.cow", 2 << 20, 77);
  auto cow = test::FaultyFile::open(dir + "/s.cow");
  FaultDevice* cow_fault = &cow->fault();
  Snapshot* s = create(*origin, "s", std::move(cow), 8, true);
  FaultDevice& target = p.device == Device::origin ? *origin_fault : *cow_fault;

  if (scenario == "commit" || scenario == "snapshot_write") {
    for (uint64_t c : kCommitPrefill) sync_write(*origin, c * k4K, origin_data(c));
    sync_flush(*origin);
    report("ready");
    arm(target, p);
    if (scenario == "commit") {
      sync_write(*origin, kCommitTarget * k4K, origin_data(kCommitTarget));
    } else {
      // Acknowledged once its data is in S's COW (deferred commit): the commit (pre-flush, area write,
      // post-flush), where this scenario's crash points are, may still be to come. close_origin() below waits
      // for it. (Not a flush of S: its own COW flush would run alongside the commit's and make the count of
      // COW flushes, which the points use, depend on timing.)
      sync_write(*s, kCommitSnapshotTarget * k4K, commit_snapshot_data());
    }
  } else if (scenario == "fill") {
    std::vector<std::byte> data;
    for (uint64_t c = 0; c < kFillPrefill; ++c) {
      const auto d = origin_data(c);
      data.insert(data.end(), d.begin(), d.end());
    }
    sync_write(*origin, 0, data);
    sync_flush(*origin);
    report("ready");
    arm(target, p);
    sync_write(*origin, kFillPrefill * k4K, origin_data(kFillPrefill));
  } else if (scenario == "merge") {
    for (uint64_t c : kMergeOriginWrites) sync_write(*origin, c * k4K, origin_data(c));
    sync_write(*s, kMergeSnapPartialOffset, merge_snap_partial());
    sync_write(*s, kMergeSnapFullChunk * k4K, merge_snap_full());
    test::make_sparse_file(dir + "/t.cow", 2 << 20);
    create(*origin, "t", open_file(dir + "/t.cow"), 16, false);
    sync_write(*origin, kMergeLateWrite * k4K, origin_data(kMergeLateWrite));
    sync_flush(*origin);
    sync_flush(*s);
    report("ready");
    arm(target, p);
    auto merged = std::make_shared<std::promise<Status>>();
    auto f = merged->get_future();
    const Status st = origin->start_merge("s", [merged](Status r) { merged->set_value(std::move(r)); });
    if (!st) die(st.error().message());
    if (f.wait_for(kWait) != std::future_status::ready) die("merge: timeout");
    const Status r = f.get();
    if (!r) die(r.error().message());
  } else {
    die("unknown scenario " + scenario);
  }
  // The crash point may still come from I/O in flight (as for snapshot_write); "completed" only once there is
  // none left.
  close_origin(origin);
  report("completed");
  return 0;
}

// The overflow scenario is not a crash point: the parent kills the child once the write is acknowledged.
int run_overflow(const std::string& dir) {
  std::unique_ptr<Origin> origin = open_origin(open_file(dir + "/origin.img"));
  test::make_sparse_file(dir + "/s.cow", 4 * k4K);  // header, area 0, two data chunks
  auto cow = test::FaultyFile::open(dir + "/s.cow");
  FaultDevice* cow_fault = &cow->fault();
  create(*origin, "s", std::move(cow), 8, false);
  sync_write(*origin, 0, origin_data(0));
  sync_write(*origin, k4K, origin_data(1));
  report("ready");
  cow_fault->add_rule({FaultDevice::Op::write, Sector(0), Sector(8), 0, std::chrono::seconds(1)});
  sync_write(*origin, kOverflowTarget * k4K, origin_data(kOverflowTarget));
  sync_flush(*origin);
  report("acked");
  for (;;) ::pause();  // until killed
}

}  // namespace
}  // namespace kcopyfs::crash

int main(int argc, char** argv) {
  using namespace kcopyfs::crash;
  if (argc == 4 && std::strcmp(argv[1], "random") == 0)
    return run_random(argv[2], std::strtoull(argv[3], nullptr, 10), false);
  if (argc == 4 && std::strcmp(argv[1], "random-wsnap") == 0)
    return run_random(argv[2], std::strtoull(argv[3], nullptr, 10), true);
  if (argc == 3 && std::strcmp(argv[1], "overflow") == 0) return run_overflow(argv[2]);
  if (argc == 4 && std::strcmp(argv[1], "point") == 0) {
    const CrashPoint* p = find_crash_point(argv[3]);
    if (p == nullptr) die(std::string("no crash point ") + argv[3]);
    return run_point(argv[2], *p);
  }
  std::fprintf(stderr, "usage: %s random|random-wsnap <dir> <seed> | point <dir> <name> | overflow <dir>\n",
               argv[0]);
  return 1;
}
