// The child process of mirror_crash_test: a 2-leg mirror with a disk log over images in <dir>, writing to a
// few regions without end until it is killed. It is started with posix_spawn, so it begins without the
// parent's threads, and reports on fd 3: "ready" after its first writes have completed.
//
//   mirror_crash_workload <dir> <region>...   leg0.img, leg1.img and log.img in <dir>; writes to the regions
//
// Any unexpected error ends the process with a message on stderr and a non-zero status.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/file_device.h"
#include "mirror/disk_log.h"
#include "mirror/mirror.h"
#include "tests/support/test_support.h"

namespace {

using namespace kcopyfs;

constexpr int kReportFd = 3;
constexpr Sector kRegion = Sector(128);
constexpr uint64_t kRegionBytes = 64 * 1024;

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "mirror_crash_workload: %s\n", what.c_str());
  std::fflush(stderr);
  _exit(2);
}

std::unique_ptr<FileDevice> open_file(const std::string& path) {
  auto dev = FileDevice::open(path, OpenOptions{});
  if (!dev) die(dev.error().message());
  return std::move(dev).value();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) die("usage: mirror_crash_workload <dir> <region>...");
  const std::string dir = argv[1];
  std::vector<uint64_t> regions;
  for (int i = 2; i < argc; ++i) regions.push_back(std::strtoull(argv[i], nullptr, 10));
  auto log_device = open_file(dir + "/log.img");
  std::vector<std::unique_ptr<BlockDevice>> legs;
  legs.push_back(open_file(dir + "/leg0.img"));
  legs.push_back(open_file(dir + "/leg1.img"));
  MirrorOptions o;
  o.region_size = kRegion;
  // Regions stay dirty while written: the clean pass would otherwise race the kill.
  o.update_interval = std::chrono::seconds(30);
  auto m = Mirror::create(
      std::move(legs),
      [&](Sector size, FlushLegs flush_legs) -> Result<std::unique_ptr<DirtyLog>> {
        auto log = DiskLog::open(*log_device, kRegion, size, SyncMode::by_log, std::move(flush_legs));
        if (!log) return log.error();
        return std::unique_ptr<DirtyLog>(std::move(log).value());
      },
      o);
  if (!m) die(m.error().message());
  Mirror& mirror = *m.value();

  // Several writes in flight at once, to the chosen regions only, for ever.
  constexpr unsigned kInFlight = 4;
  std::mt19937_64 rng(42);
  std::vector<std::byte*> buffers;
  for (unsigned i = 0; i < kInFlight; ++i) {
    auto* p = static_cast<std::byte*>(std::aligned_alloc(4096, kRegionBytes));
    if (p == nullptr) die("out of memory");
    buffers.push_back(p);
  }
  bool reported = false;
  for (uint64_t round = 0;; ++round) {
    std::vector<std::future<std::error_code>> done;
    for (unsigned i = 0; i < kInFlight; ++i) {
      const uint64_t r = regions[rng() % regions.size()];
      const uint64_t len = (1 + rng() % 16) * 4096;
      const uint64_t off = r * kRegionBytes + (rng() % (16 - len / 4096 + 1)) * 4096;
      const auto data = test::pattern(rng(), 0, len);
      std::memcpy(buffers[i], data.data(), len);
      auto p = std::make_shared<std::promise<std::error_code>>();
      done.push_back(p->get_future());
      mirror.write(Bytes(off), std::span<const std::byte>(buffers[i], len),
                   [p](std::error_code ec) { p->set_value(ec); });
    }
    for (auto& f : done)
      if (auto ec = f.get()) die("write: " + ec.message());
    if (!reported && round >= 20) {
      const char line[] = "ready\n";
      if (::write(kReportFd, line, sizeof line - 1) != static_cast<ssize_t>(sizeof line - 1)) die("report");
      reported = true;
    }
  }
}
