// Helpers of the fault-storm suites (tests/mirror/mirror_storm_test.cc,
// tests/snapshot/snapshot_storm_test.cc): bounded waits that end the process on a hang, and the seeds.
//
// Seeds:
// KCOPYFS_STORM_SEED=N runs exactly that seed (to repeat a failure), KCOPYFS_STORM_SEEDS=K runs K seeds
// (more than the default, for a longer run); otherwise a few seeds from the clock, so that CI explores new
// storms while every seed is printed. Each test prints the seed before it uses it.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "engine/block_device.h"

namespace kcopyfs::test {

// Every operation of a storm completes within this, or the storm has hung.
inline constexpr auto kStormTimeout = std::chrono::seconds(30);

// A lost completion cannot be recovered from: the objects waiting for it would block in their destructors,
// so the process reports the seed and ends.
[[noreturn]] inline void storm_hang(const std::string& what, uint64_t seed) {
  std::fprintf(stderr, "FATAL: seed %llu: %s did not complete within %lld s (a hang)\n",
               static_cast<unsigned long long>(seed), what.c_str(),
               static_cast<long long>(kStormTimeout.count()));
  std::fflush(stdout);
  std::fflush(stderr);
  std::_Exit(1);
}

// Starts an asynchronous operation and waits for its callback, at most kStormTimeout.
inline std::error_code bounded(const std::function<void(IoCallback)>& start, const std::string& what,
                               uint64_t seed) {
  auto p = std::make_shared<std::promise<std::error_code>>();
  auto f = p->get_future();
  start([p](std::error_code ec) { p->set_value(ec); });
  if (f.wait_for(kStormTimeout) != std::future_status::ready) storm_hang(what, seed);
  return f.get();
}

// Runs fn (a blocking call: replace, resync, a destructor) on a thread, at most kStormTimeout.
inline void bounded_call(const std::function<void()>& fn, const std::string& what, uint64_t seed) {
  auto done = std::make_shared<std::promise<void>>();
  auto f = done->get_future();
  std::thread t([&fn, done] {
    fn();
    done->set_value();
  });
  if (f.wait_for(kStormTimeout) != std::future_status::ready) storm_hang(what, seed);
  t.join();
}

inline std::vector<uint64_t> storm_seeds(unsigned default_count, uint64_t salt) {
  if (const char* s = std::getenv("KCOPYFS_STORM_SEED"); s != nullptr && *s != '\0')
    return {static_cast<uint64_t>(std::strtoull(s, nullptr, 0))};
  unsigned count = default_count;
  if (const char* s = std::getenv("KCOPYFS_STORM_SEEDS"); s != nullptr && *s != '\0')
    count = static_cast<unsigned>(std::strtoul(s, nullptr, 0));
  // One base per process, from the clock; the salt keeps the suites' seeds apart.
  static const uint64_t base =
      static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count()) % 1000000000;
  std::vector<uint64_t> out;
  for (unsigned i = 0; i < count; ++i) out.push_back(base + salt * 1000 + i);
  return out;
}

}  // namespace kcopyfs::test
