// Progress of long work (copy, resync, merge) for people and for logs.
//
// On a terminal: one line redrawn in place with a bar, percent, rate and ETA. Elsewhere: a plain line
// "LABEL: 42% (430.0 MiB of 1.0 GiB, 812.3 MiB/s)" at most once a second. Not thread-safe: one owner.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace kcopyfs::cli {

class Progress {
 public:
  // start_bytes: what was done before this Progress began (a resync under way), left out of the rate.
  Progress(std::string label, uint64_t total_bytes, std::FILE* out = stderr, uint64_t start_bytes = 0);
  // done_bytes: how much is finished. Redraws when enough time has passed (or force).
  void update(uint64_t done_bytes, bool force = false);
  // Draws the final state and ends the line.
  void finish(uint64_t done_bytes);

 private:
  void draw(uint64_t done_bytes, bool final);

  std::string label_;
  uint64_t total_;
  uint64_t start_bytes_;
  std::FILE* out_;
  bool tty_;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_{};
  bool drawn_ = false;
  uint64_t last_bytes_ = 0;  // what the last line showed
};

}  // namespace kcopyfs::cli
