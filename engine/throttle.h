// Throttle: limits how hard a group of kcopyd clients drives the disks, shared by every client given it.
//
// Two limits, both changeable while jobs run:
//  - percent: the kernel's kcopyd throttle (kernel-dm-notes.md §1.7). It keeps the time during which at least
//  one
//    of the group's I/Os was in flight and the total time, both decaying about every second; an I/O may start
//    while the in-flight time is at most percent% of the total, and otherwise waits in 100 ms steps, at most
//    ten times (then it goes anyway, as the kernel does). 100 means no limit.
//  - bytes per second: a pacing cap on the data copied; 0 means no limit.
// Thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>

namespace kcopyfs {

class Throttle {
 public:
  using Clock = std::chrono::steady_clock;

  explicit Throttle(unsigned percent = 100, uint64_t bytes_per_second = 0)
      : percent_(percent), bytes_per_second_(bytes_per_second) {}

  void set_percent(unsigned percent);
  void set_bytes_per_second(uint64_t bytes_per_second);
  unsigned percent() const;
  uint64_t bytes_per_second() const;

  // Asks to start an I/O of `bytes` (0 for an I/O that does not count against the byte cap). `waits_so_far`
  // counts earlier refusals of this same I/O. Result: a time point not after `now` when the I/O may start (it
  // is then accounted as in flight, and finish() must follow), or the later time at which to ask again.
  Clock::time_point try_start(uint64_t bytes, unsigned waits_so_far, Clock::time_point now);
  // Records that an I/O started by try_start has completed.
  void finish(Clock::time_point now);

  static constexpr unsigned kMaxWaits = 10;
  static constexpr auto kWaitStep = std::chrono::milliseconds(100);

 private:
  void account_locked(Clock::time_point now);

  mutable std::mutex mutex_;
  // Guarded by mutex_.
  unsigned percent_;
  uint64_t bytes_per_second_;
  unsigned in_flight_ = 0;
  double io_period_us_ = 0;     // time with at least one I/O in flight
  double total_period_us_ = 0;  // all time
  Clock::time_point last_{};
  Clock::time_point next_byte_slot_{};  // the byte cap's pacing clock
};

}  // namespace kcopyfs
