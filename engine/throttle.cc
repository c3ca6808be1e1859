#include "engine/throttle.h"

#include <algorithm>

namespace kcopyfs {

namespace {
// The kernel decays its periods when the total passes 2^SHIFT_HZ jiffies (about a second); in microseconds:
constexpr double kDecayAfterUs = 1 << 20;
}  // namespace

void Throttle::set_percent(unsigned percent) {
  std::lock_guard lock(mutex_);
  percent_ = percent;
}

void Throttle::set_bytes_per_second(uint64_t bytes_per_second) {
  std::lock_guard lock(mutex_);
  bytes_per_second_ = bytes_per_second;
  next_byte_slot_ = Clock::time_point{};  // a new cap starts from now, not from the old cap's backlog
}

unsigned Throttle::percent() const {
  std::lock_guard lock(mutex_);
  return percent_;
}

uint64_t Throttle::bytes_per_second() const {
  std::lock_guard lock(mutex_);
  return bytes_per_second_;
}

void Throttle::account_locked(Clock::time_point now) {
  if (last_ == Clock::time_point{}) last_ = now;
  const double elapsed = std::chrono::duration<double, std::micro>(now - last_).count();
  last_ = now;
  if (elapsed <= 0) return;
  if (in_flight_ > 0) io_period_us_ += elapsed;
  total_period_us_ += elapsed;
  // Old history decays by halving (the kernel shifts by fls(total >> SHIFT_HZ)).
  while (total_period_us_ >= kDecayAfterUs) {
    total_period_us_ /= 2;
    io_period_us_ /= 2;
  }
}

Throttle::Clock::time_point Throttle::try_start(uint64_t bytes, unsigned waits_so_far,
                                                Clock::time_point now) {
  std::lock_guard lock(mutex_);
  account_locked(now);
  if (percent_ < 100 && waits_so_far < kMaxWaits) {
    const double skew = io_period_us_ - percent_ * total_period_us_ / 100.0;
    if (skew > 0) return now + kWaitStep;
  }
  if (bytes_per_second_ > 0 && bytes > 0) {
    if (next_byte_slot_ > now) return std::min(next_byte_slot_, now + kWaitStep);
    const auto cost = std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double>(static_cast<double>(bytes) / static_cast<double>(bytes_per_second_)));
    // Pacing: the next I/O may start once this one's share of the second has passed. A slot left unused for
    // long is not banked, so an idle period does not turn into a burst.
    next_byte_slot_ = std::max(next_byte_slot_, now - kWaitStep) + cost;
  }
  ++in_flight_;
  return now;
}

void Throttle::finish(Clock::time_point now) {
  std::lock_guard lock(mutex_);
  account_locked(now);
  if (in_flight_ > 0) --in_flight_;
}

}  // namespace kcopyfs
