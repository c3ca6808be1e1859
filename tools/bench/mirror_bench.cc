// mirror_bench: what the dm-raid1 port (kcopyfs::Mirror) achieves on the library (no FUSE), issue 4.
//
// Measurements (all in one run, round-robin over the configurations in a rotating order;
// tools/bench/mirror.sh wraps it, docs/benchmarks.md explains the figures):
//  ceiling   fio: 1 MiB QD16 O_DIRECT sequential read of leg 0 and write of leg 1 at once (as copy.sh's
//            fio-ceiling); rate = size / runtime of the slower job (end_fsync included).
//  resync-wN full resync of a 2-leg mirror over a core log (every region out of sync at creation), leg 0 full
//            of random data, leg 1 different, resync_window N; time from create to in-sync plus a flush of
//            the legs; rate = bytes resynced / time.
//  throttle  forced resync (resync_all) of an in-sync mirror with a bytes/s cap; rate = bytes resynced over a
//            window that starts after a warm-up, against the cap (also from the start of the resync).
//  writes    1 MiB sequential writes QD 4 and 4 KiB random writes QD 16, for a time cap, to the raw leg-0
//            FileDevice and through a 2-leg in-sync mirror (disk log opened nosync); final flush included.
//  crash     a child process (this binary, --crash-child) opens the mirror with a disk log, writes whole
//            regions (random, distinct) summing to the dirty size, and _exits without the destructor (no
//            clean pass, the log keeps the dirty marks). The mirror is then reopened on the disk log: the
//            bytes resynced and the time to in-sync are reported.
// The page cache is dropped before every measurement when running as root.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "engine/block_device.h"
#include "engine/file_device.h"
#include "engine/sync_io.h"
#include "mirror/core_log.h"
#include "mirror/disk_log.h"
#include "mirror/mirror.h"
#include "tools/bench/bench_common.h"

namespace kcopyfs {
namespace {

using namespace bench;  // NOLINT: the shared benchmark helpers

constexpr uint64_t kRegionBytes = 512 * kKiB;  // kDefaultRegionSize

struct Options {
  std::string workdir = "/var/tmp";
  unsigned reps = 3;
  uint64_t size = 1024 * kMiB;
  std::vector<uint64_t> caps{64 * kMiB, 200 * kMiB};
  double throttle_seconds = 3.0;
  double write_seconds = 3.0;
  uint64_t dirty = 64 * kMiB;
  std::vector<unsigned> windows{1, 8, 64};
  uint32_t kcopyd_pages = MirrorOptions{}.kcopyd_pages;
  std::string fio = "fio";
  bool resync_only = false;
};

Options parse(int argc, char** argv) {
  namespace po = boost::program_options;
  Options o;
  std::string size = "1G", caps = "64M,200M", dirty = "64M", windows = "1,8,64";
  po::options_description options("Options");
  options.add_options()("workdir", po::value(&o.workdir),
                        "scratch directory made inside DIR, removed at exit (default /var/tmp)")(
      "reps", po::value(&o.reps), "repetitions, round-robin over configurations (default 3)")(
      "size", po::value(&size), "leg size, K/M/G suffixes binary, multiple of 1 MiB (default 1G)")(
      "windows", po::value(&windows), "resync windows to measure, comma separated (default 1,8,64)")(
      "caps", po::value(&caps), "throttle caps in bytes/s, comma separated (default 64M,200M)")(
      "throttle-seconds", po::value(&o.throttle_seconds),
      "measured window of a throttled resync, after 0.5 s warm-up (default 3)")(
      "write-seconds", po::value(&o.write_seconds), "time cap of one write measurement (default 3)")(
      "dirty", po::value(&dirty), "bytes written (whole random regions) before the crash (default 64M)")(
      "kcopyd-pages", po::value(&o.kcopyd_pages),
      "MirrorOptions::kcopyd_pages of the resync configurations (default 8192)")(
      "resync-only", po::bool_switch(&o.resync_only),
      "measure (1) only: the fio ceiling and the resync windows, so many repetitions fit in little time")(
      "fio", po::value(&o.fio), "fio binary (default fio)");
  parse_options(argc, argv, "Usage: mirror_bench [OPTIONS]", options);
  o.size = size_or_die(size);
  o.dirty = size_or_die(dirty);
  o.caps.clear();
  for (auto& c : split(caps)) o.caps.push_back(size_or_die(c));
  o.windows.clear();
  for (uint64_t w : numbers_or_die("--windows", windows)) o.windows.push_back(static_cast<unsigned>(w));
  if (o.reps == 0) die("--reps must be at least 1");
  if (o.size == 0 || o.size % kMiB != 0) die("--size must be a positive multiple of 1 MiB");
  if (o.dirty % kRegionBytes != 0 || o.dirty > o.size) die("--dirty must be whole 512 KiB regions, <= size");
  for (unsigned w : o.windows) {
    if (w == 0) die("resync windows start at 1");
  }
  return o;
}

// Writes `bytes` of random data (seeded) to a new file, durably.
void fill_file(const std::string& path, uint64_t bytes, uint64_t seed) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) die("create " + path + ": " + std::strerror(errno));
  std::mt19937_64 rng(seed);
  std::vector<uint64_t> chunk(kMiB / 8);
  for (uint64_t at = 0; at < bytes; at += kMiB) {
    for (auto& v : chunk) v = rng();
    if (::pwrite(fd, chunk.data(), kMiB, static_cast<off_t>(at)) != static_cast<ssize_t>(kMiB))
      die("write " + path);
  }
  if (::fsync(fd) != 0) die("fsync " + path);
  ::close(fd);
}

// ---------------------------------------------------------------------------------------------------------
// Write driver (as snapshot_bench's): `depth` writes in flight; the next is issued from the completion.

class Driver {
 public:
  Driver(BlockDevice& dev, unsigned depth, size_t io_bytes, const std::vector<uint64_t>& offsets,
         double seconds)
      : dev_(dev), depth_(depth), io_bytes_(io_bytes), offsets_(offsets), seconds_(seconds) {
    for (unsigned i = 0; i < depth; ++i) buffers_.push_back(random_buffer(io_bytes, 0x5eed + i));
  }

  // Result: seconds (first submission to the end of the final flush) and completed ops.
  std::pair<double, uint64_t> run() {
    t0_ = Clock::now();
    deadline_ = t0_ + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds_));
    active_ = depth_;
    for (unsigned s = 0; s < depth_; ++s) issue(s);
    {
      std::unique_lock lock(mutex_);
      idle_.wait(lock, [this] { return active_ == 0; });
    }
    if (auto ec = flush_sync(dev_)) die("flush: " + ec.message());
    if (error_) die("write: " + error_.message());
    return {seconds_since(t0_), completed_.load()};
  }

 private:
  void issue(unsigned slot) {
    const uint64_t i = next_.fetch_add(1);
    if (i >= offsets_.size() || stop_.load(std::memory_order_relaxed)) {
      std::lock_guard lock(mutex_);
      if (--active_ == 0) idle_.notify_all();
      return;
    }
    dev_.write(Bytes(offsets_[i]), std::span<const std::byte>(buffers_[slot].get(), io_bytes_),
               [this, slot](std::error_code ec) {
                 if (ec) {
                   std::lock_guard lock(mutex_);
                   if (!error_) error_ = ec;
                   stop_ = true;
                 }
                 completed_.fetch_add(1, std::memory_order_relaxed);
                 if (Clock::now() >= deadline_) stop_.store(true, std::memory_order_relaxed);
                 issue(slot);
               });
  }

  BlockDevice& dev_;
  const unsigned depth_;
  const size_t io_bytes_;
  const std::vector<uint64_t>& offsets_;
  const double seconds_;
  std::vector<Buffer> buffers_;
  Clock::time_point t0_, deadline_;
  std::atomic<uint64_t> next_{0};
  std::atomic<uint64_t> completed_{0};
  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  std::condition_variable idle_;
  unsigned active_ = 0;
  std::error_code error_;
};

// ---------------------------------------------------------------------------------------------------------
// Mirrors

struct Paths {
  std::string leg0, leg1, log;
};

std::vector<std::unique_ptr<BlockDevice>> open_legs(const Paths& p) {
  std::vector<std::unique_ptr<BlockDevice>> legs;
  legs.push_back(open_device(p.leg0));
  legs.push_back(open_device(p.leg1));
  return legs;
}

std::unique_ptr<Mirror> core_mirror(const Paths& p, SyncMode mode, const MirrorOptions& mo) {
  auto legs = open_legs(p);
  auto log = CoreLog::create(mo.region_size, Mirror::size_of(legs), mode);
  if (!log) die(log.error().message());
  auto m = Mirror::create(std::move(legs), std::unique_ptr<DirtyLog>(std::move(log).value()), mo);
  if (!m) die(m.error().message());
  return std::move(m).value();
}

// The log device must outlive the mirror: the caller holds it.
std::unique_ptr<Mirror> disk_mirror(const Paths& p, BlockDevice& log_device, SyncMode mode,
                                    const MirrorOptions& mo) {
  auto m = Mirror::create(
      open_legs(p),
      [&](Sector size, FlushLegs flush_legs) -> Result<std::unique_ptr<DirtyLog>> {
        auto log = DiskLog::open(log_device, mo.region_size, size, mode, std::move(flush_legs));
        if (!log) return log.error();
        return std::unique_ptr<DirtyLog>(std::move(log).value());
      },
      mo);
  if (!m) die(m.error().message());
  return std::move(m).value();
}

struct Sample {
  double rate = 0;    // MiB/s or IOPS
  double extra = 0;   // part-specific (throttle: rate from the start; crash: MiB resynced)
  double extra2 = 0;  // crash: seconds to in-sync
  double extra3 = 0;  // resync: seconds spent in Mirror::create
};

// fio's concurrent read of leg 0 and write of leg 1: MiB/s of the slower job.
Sample run_fio(const Options& o, const std::string& dir, const Paths& p) {
  const std::string job = dir + "/ceiling.fio";
  const std::string json = dir + "/fio.json";
  {
    std::ofstream f(job);
    f << "[global]\nioengine=io_uring\ndirect=1\nbs=1M\niodepth=16\nsize=" << o.size
      << "\ninvalidate=1\n[read]\nrw=read\nfilename=" << p.leg0 << "\n[write]\nrw=write\nfilename=" << p.leg1
      << "\nfallocate=none\nend_fsync=1\n";
  }
  drop_caches();
  std::string cmd = o.fio;
  cmd += " --output-format=json --output=";
  cmd += json;
  cmd += " ";
  cmd += job;
  cmd += " >/dev/null";
  if (std::system(cmd.c_str()) != 0) die("fio failed: " + cmd);
  std::ifstream f(json);
  std::string line;
  uint64_t slow_ms = 0;
  while (std::getline(f, line)) {
    const auto at = line.find("\"job_runtime\"");
    if (at == std::string::npos) continue;
    const auto colon = line.find(':', at);
    slow_ms = std::max<uint64_t>(slow_ms, std::strtoull(line.c_str() + colon + 1, nullptr, 10));
  }
  if (slow_ms == 0) die("no job_runtime in fio's output");
  return {static_cast<double>(o.size) / kMiB / (static_cast<double>(slow_ms) / 1000), 0, 0};
}

Sample run_resync(const Options& o, const Paths& p, unsigned window) {
  drop_caches();
  MirrorOptions mo;
  mo.resync_window = window;
  mo.kcopyd_pages = o.kcopyd_pages;
  const auto t0 = Clock::now();
  auto m = core_mirror(p, SyncMode::by_log, mo);
  const double create_s = seconds_since(t0);
  if (!m->wait_in_sync(std::chrono::minutes(5))) die("resync did not finish in 5 minutes");
  if (auto ec = flush_sync(*m)) die("flush: " + ec.message());
  const double s = seconds_since(t0);
  const auto st = m->status();
  m.reset();
  return {static_cast<double>(st.bytes_resynced) / kMiB / s, static_cast<double>(st.bytes_resynced) / kMiB, s,
          create_s};
}

Sample run_throttle(const Options& o, const Paths& p, uint64_t cap) {
  drop_caches();
  MirrorOptions mo;
  auto m = core_mirror(p, SyncMode::nosync, mo);
  m->set_throttle(100, cap);
  const auto t0 = Clock::now();
  if (auto st = m->resync_all(); !st) die(st.error().message());
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const uint64_t b1 = m->status().bytes_resynced;
  const auto t1 = Clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(o.throttle_seconds));
  const auto st = m->status();
  const uint64_t b2 = st.bytes_resynced;
  const double window = seconds_since(t1);
  if (st.regions_in_sync == st.regions_total)
    std::fprintf(stderr,
                 "mirror_bench: warning: the throttled resync ended inside the window (raise --size)\n");
  const double from_start = seconds_since(t0);
  m->stop_resync();
  m.reset();
  return {static_cast<double>(b2 - b1) / kMiB / window, static_cast<double>(b2) / kMiB / from_start, 0};
}

Sample run_writes(const Options& o, const Paths& p, bool through_mirror, bool random) {
  const size_t io = random ? 4 * kKiB : kMiB;
  const unsigned depth = random ? 16 : 4;
  std::vector<uint64_t> offsets;
  if (random) {
    std::mt19937_64 rng(12345);
    const uint64_t blocks = o.size / io;
    offsets.resize(1u << 22);
    for (auto& v : offsets) v = (rng() % blocks) * io;
  } else {
    for (uint64_t at = 0; at + io <= o.size; at += io) offsets.push_back(at);
  }
  drop_caches();
  std::pair<double, uint64_t> r;
  if (through_mirror) {
    auto log_device = open_device(p.log);
    MirrorOptions mo;
    auto m = disk_mirror(p, *log_device, SyncMode::nosync, mo);
    r = Driver(*m, depth, io, offsets, o.write_seconds).run();
    m.reset();
  } else {
    auto dev = open_device(p.leg0);
    r = Driver(*dev, depth, io, offsets, o.write_seconds).run();
  }
  const double ops = static_cast<double>(r.second);
  return {random ? ops / r.first : ops * static_cast<double>(io) / kMiB / r.first, 0, 0};
}

// The child: opens the mirror on the disk log (by_log), writes whole regions, _exits with the marks dirty.
int crash_child(const std::string& dir, const std::vector<uint64_t>& regions) {
  const Paths p{dir + "/leg0.img", dir + "/leg1.img", dir + "/log.img"};
  auto log_device = open_device(p.log);
  MirrorOptions mo;
  mo.update_interval = std::chrono::hours(1);  // no clean pass before the "crash"
  auto m = disk_mirror(p, *log_device, SyncMode::by_log, mo);
  if (!m->wait_in_sync(std::chrono::seconds(60))) die("crash child: the mirror was not in sync at open");
  std::vector<uint64_t> offsets;
  for (uint64_t r : regions) offsets.push_back(r * kRegionBytes);
  const auto r = Driver(*m, 4, kRegionBytes, offsets, 600).run();
  if (r.second != regions.size()) die("crash child: not every write completed");
  ::_exit(0);  // no destructor: the log is not cleaned, as after a crash
}

Sample run_crash(const Options& o, const std::string& dir, const Paths& p, const std::string& self,
                 unsigned rep) {
  // A clean, in-sync log first: opened nosync (a new log, every region clean) and closed cleanly.
  {
    auto log_device = open_device(p.log);
    MirrorOptions mo;
    auto m = disk_mirror(p, *log_device, SyncMode::nosync, mo);
  }
  const uint64_t total = o.size / kRegionBytes;
  std::vector<uint64_t> all(total);
  std::iota(all.begin(), all.end(), 0);
  std::mt19937_64 rng(1000 + rep);
  std::shuffle(all.begin(), all.end(), rng);
  all.resize(o.dirty / kRegionBytes);
  std::vector<std::string> args{self, "--crash-child", dir};
  for (uint64_t r : all) args.push_back(std::to_string(r));
  std::vector<char*> argv;  // built before fork: the child only execs
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::fflush(stdout);
  const pid_t pid = ::fork();
  if (pid < 0) die("fork failed");
  if (pid == 0) {
    ::execv(self.c_str(), argv.data());
    ::_exit(127);
  }
  int wstatus = 0;
  if (::waitpid(pid, &wstatus, 0) != pid || !WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0)
    die("the crash child failed");
  drop_caches();
  auto log_device = open_device(p.log);
  MirrorOptions mo;
  const auto t0 = Clock::now();
  auto m = disk_mirror(p, *log_device, SyncMode::by_log, mo);
  if (!m->wait_in_sync(std::chrono::minutes(5))) die("crash resync did not finish in 5 minutes");
  if (auto ec = flush_sync(*m)) die("flush: " + ec.message());
  const double s = seconds_since(t0);
  const auto st = m->status();
  m.reset();
  return {static_cast<double>(st.bytes_resynced) / kMiB / s, static_cast<double>(st.bytes_resynced) / kMiB,
          s};
}

struct Config {
  std::string name;
  std::function<Sample()> run;
};

}  // namespace
}  // namespace kcopyfs

int main(int argc, char** argv) {
  using namespace kcopyfs;
  bench::set_program_name("mirror_bench");
  if (argc >= 3 && std::string(argv[1]) == "--crash-child") {
    std::vector<uint64_t> regions;
    for (int i = 3; i < argc; ++i) regions.push_back(std::strtoull(argv[i], nullptr, 10));
    return crash_child(argv[2], regions);
  }
  const Options o = parse(argc, argv);
  std::error_code fec;
  const std::string self = std::filesystem::read_symlink("/proc/self/exe", fec).string();
  if (fec) die("cannot find /proc/self/exe");
  std::string pattern = o.workdir + "/kcopyfs-mirrorbench.XXXXXX";
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) die("mkdtemp in " + o.workdir + ": " + std::strerror(errno));
  const std::string dir(buf.data());
  const Paths p{dir + "/leg0.img", dir + "/leg1.img", dir + "/log.img"};
  std::printf("mirror_bench: %u repetitions, legs of %lu MiB, region 512 KiB, in %s\n", o.reps,
              static_cast<unsigned long>(o.size / kMiB), dir.c_str());
  std::printf("  %ld CPUs, load average %.2f at start%s\n", ::sysconf(_SC_NPROCESSORS_ONLN), load_average(),
              is_root() ? "" : "; not root: page cache NOT dropped between measurements");
  std::fflush(stdout);
  const auto t_all = Clock::now();
  fill_file(p.leg0, o.size, 1);
  fill_file(p.leg1, o.size, 2);
  fill_file(p.log, kMiB, 3);

  std::vector<Config> configs;
  configs.push_back({"fio-ceiling", [&] { return run_fio(o, dir, p); }});
  for (unsigned w : o.windows) {
    std::string name = "resync-w";
    name += std::to_string(w);
    configs.push_back({name, [&o, &p, w] { return run_resync(o, p, w); }});
  }
  for (uint64_t cap : o.resync_only ? std::vector<uint64_t>{} : o.caps) {
    std::string name = "throttle-";
    name += std::to_string(cap / kMiB);
    name += "M";
    configs.push_back({name, [&o, &p, cap] { return run_throttle(o, p, cap); }});
  }
  unsigned crash_rep = 0;
  if (!o.resync_only) {
    configs.push_back({"seq-raw", [&] { return run_writes(o, p, false, false); }});
    configs.push_back({"seq-mirror", [&] { return run_writes(o, p, true, false); }});
    configs.push_back({"rand-raw", [&] { return run_writes(o, p, false, true); }});
    configs.push_back({"rand-mirror", [&] { return run_writes(o, p, true, true); }});
    configs.push_back({"crash", [&] { return run_crash(o, dir, p, self, crash_rep); }});
  }

  std::map<std::string, std::vector<Sample>> results;
  for (unsigned rep = 0; rep < o.reps; ++rep) {
    crash_rep = rep;
    std::printf("rep %u/%u (load %.2f):", rep + 1, o.reps, load_average());
    for (size_t k = 0; k < configs.size(); ++k) {
      const Config& c = configs[(k + rep) % configs.size()];
      const Sample s = c.run();
      results[c.name].push_back(s);
      std::printf(" %s=%.0f", c.name.c_str(), s.rate);
      std::fflush(stdout);
    }
    std::printf("\n");
  }

  const auto med = [&](const std::string& name, double Sample::*field) {
    std::vector<double> v;
    for (const auto& s : results[name]) v.push_back(s.*field);
    return median(v);
  };
  const auto paired = [&](const std::string& a, const std::string& b) {
    std::vector<double> v;
    for (size_t r = 0; r < results[a].size(); ++r) v.push_back(results[a][r].rate / results[b][r].rate);
    return median(v);
  };
  const auto range = [&](const std::string& name) {
    double lo = 1e300, hi = 0;
    for (const auto& s : results[name]) {
      lo = std::min(lo, s.rate);
      hi = std::max(hi, s.rate);
    }
    return std::make_pair(lo, hi);
  };

  std::printf("\nmedians of %u repetitions; ratio = of medians [median of per-repetition ratios]\n", o.reps);
  const double ceiling = med("fio-ceiling", &Sample::rate);
  std::printf("\n(1) resync of %lu MiB, 2 legs, core log\n%-14s %9s %7s %7s %16s\n",
              static_cast<unsigned long>(o.size / kMiB), "config", "MiB/s", "min", "max", "x fio ceiling");
  {
    const auto [lo, hi] = range("fio-ceiling");
    std::printf("%-14s %9.0f %7.0f %7.0f %16s\n", "fio-ceiling", ceiling, lo, hi, "1.00");
  }
  for (unsigned w : o.windows) {
    std::string name = "resync-w";
    name += std::to_string(w);
    const auto [lo, hi] = range(name);
    const double m = med(name, &Sample::rate);
    char ratio[40];
    std::snprintf(ratio, sizeof ratio, "%.2f [%.2f]", m / ceiling, paired(name, "fio-ceiling"));
    std::printf("%-14s %9.0f %7.0f %7.0f %16s   (%.0f MiB in %.2f s, of which create %.3f s)\n", name.c_str(),
                m, lo, hi, ratio, med(name, &Sample::extra), med(name, &Sample::extra2),
                med(name, &Sample::extra3));
  }

  if (!o.resync_only) {
    std::printf(
        "\n(2) throttled forced resync: rate over %.1f s after 0.5 s warm-up\n%-14s %9s %9s %7s %7s %9s "
        "%14s\n",
        o.throttle_seconds, "config", "cap MiB/s", "MiB/s", "min", "max", "x cap", "from start");
    for (uint64_t cap : o.caps) {
      std::string name = "throttle-";
      name += std::to_string(cap / kMiB);
      name += "M";
      const auto [lo, hi] = range(name);
      const double capm = static_cast<double>(cap) / kMiB;
      const double m = med(name, &Sample::rate);
      std::printf("%-14s %9.0f %9.1f %7.1f %7.1f %9.3f %14.1f\n", name.c_str(), capm, m, lo, hi, m / capm,
                  med(name, &Sample::extra));
    }

    std::printf(
        "\n(3) writes, raw leg-0 FileDevice vs 2-leg in-sync mirror (disk log), %.1f s cap, flush incl.\n",
        o.write_seconds);
    std::printf("%-28s %10s %10s %10s %16s\n", "workload", "raw", "mirror", "", "mirror x raw");
    for (const auto& [label, raw, mir] :
         {std::tuple<std::string, std::string, std::string>{"1 MiB seq QD4 (MiB/s)", "seq-raw", "seq-mirror"},
          std::tuple<std::string, std::string, std::string>{"4 KiB rand QD16 (IOPS)", "rand-raw",
                                                            "rand-mirror"}}) {
      const double a = med(raw, &Sample::rate);
      const double b = med(mir, &Sample::rate);
      char ratio[40];
      std::snprintf(ratio, sizeof ratio, "%.2f [%.2f]", b / a, paired(mir, raw));
      std::printf("%-28s %10.0f %10.0f %10s %16s\n", label.c_str(), a, b, "", ratio);
    }

    std::printf("\n(4) reopen after a crash with %lu MiB written in %lu random regions (disk log)\n",
                static_cast<unsigned long>(o.dirty / kMiB),
                static_cast<unsigned long>(o.dirty / kRegionBytes));
    {
      std::vector<double> mib;
      for (const auto& s : results["crash"]) mib.push_back(s.extra);
      std::printf("  resynced MiB per repetition:");
      for (double v : mib) std::printf(" %.1f", v);
      std::printf("\n  median %.1f MiB resynced (device %lu MiB), %.2f s to in-sync, %.0f MiB/s\n",
                  median(mib), static_cast<unsigned long>(o.size / kMiB), med("crash", &Sample::extra2),
                  med("crash", &Sample::rate));
    }
  }

  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  std::printf("\ntotal %.0f s, load average %.2f at end\n", seconds_since(t_all), load_average());
  return 0;
}
