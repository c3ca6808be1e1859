// The mirror's background work: the lazy cleaning of idle regions and the resync (kernel-dm-notes.md §4.5,
// §6.3). One worker thread wakes every update_interval (or when asked); it never waits for I/O itself: it
// clears the clean list in the log, starts a log flush, and hands out resync work up to the window. Copies
// run on kcopyd; each completion hands out the next region at once, so the window stays full.
#include <future>

#include "mirror/mirror.h"

namespace kcopyfs {

void Mirror::worker_loop() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    wake_.wait_for(lock, options_.update_interval);
    if (stopping_) break;
    if (holding_) continue;
    lock.unlock();
    update_pass();
    lock.lock();
  }
}

void Mirror::update_pass() {
  Actions after;
  bool flush = false;
  {
    std::lock_guard lock(mutex_);
    const size_t cleared = hash_->clear_clean_regions();
    flush = cleared > 0 || log_touched_;
    log_touched_ = false;
    schedule_recovery_locked(after);
    if (flush) ++io_in_flight_;
  }
  run(after);
  if (!flush) return;
  // The disk log flushes the legs before it writes the clean bits (FlushLegs), so they never get ahead of
  // the data they cover.
  log_->flush([this](bool ok) {
    std::lock_guard lock(mutex_);
    if (!ok) log_failed_ = true;
    io_done_locked();
  });
}

void Mirror::start_resync() {
  Actions after;
  {
    std::lock_guard lock(mutex_);
    if (!resync_enabled_) {
      resync_enabled_ = true;
      rate_start_ = std::chrono::steady_clock::now();
      rate_start_bytes_ = bytes_resynced_;
    }
    schedule_recovery_locked(after);
    wake_if_resync_idle_locked();
  }
  run(after);
}

void Mirror::stop_resync() {
  std::unique_lock lock(mutex_);
  resync_enabled_ = false;
  changed_.wait(lock, [&] { return copies_in_flight_ == 0; });
}

void Mirror::set_throttle(unsigned percent, uint64_t bytes_per_second) {
  throttle_->set_percent(percent);
  throttle_->set_bytes_per_second(bytes_per_second);
}

bool Mirror::wait_in_sync(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  return changed_.wait_for(lock, timeout, [&] {
    return log_->sync_count() == geometry_.region_count() && copies_in_flight_ == 0;
  });
}

void Mirror::schedule_recovery_locked(Actions& after) {
  if (!resync_enabled_ || holding_ || stopping_) return;
  // The source must hold the data: a default leg out of the set means no leg in it holds every region.
  if (!in_set_locked(default_leg_)) return;
  while (copies_in_flight_ < options_.resync_window) {
    auto r = log_->get_resync_work();
    if (!r) {
      // The log's scan does not come back by itself (the kernel restarts it at resume only): regions that
      // fell out of sync behind it, or whose copy failed, are found by a new scan once this one has ended.
      if (copies_in_flight_ == 0 && log_->sync_count() < geometry_.region_count()) log_->reset_resync_scan();
      return;
    }
    ++copies_in_flight_;
    if (hash_->begin_recovery(*r)) start_copy_locked(*r, after);
  }
}

void Mirror::start_copy_locked(RegionIndex r, Actions& after) {
  const unsigned source = default_leg_;
  if (!in_set_locked(source)) return finish_recovery_locked(r, false, after);
  std::vector<unsigned> dests;
  std::vector<Region> regions;
  const Sector start = geometry_.start_of(r);
  const Sector length = geometry_.length_of(r);
  for (unsigned i = 0; i < legs_.size(); ++i) {
    if (i == source || !in_set_locked(i)) continue;
    dests.push_back(i);
    regions.push_back(Region{legs_[i].device.get(), start, length});
  }
  // A single leg left is in sync with itself.
  if (dests.empty()) return finish_recovery_locked(r, true, after);
  BlockDevice* from = legs_[source].device.get();
  after.push_back(
      [this, r, source, dests = std::move(dests), regions = std::move(regions), from, start, length] {
        // ignore_error: one failing destination must not stop the copy to the others; a read error is
        // reported all the same, and the region then stays out of sync.
        auto st = kcopyd_->copy(Region{from, start, length}, regions, CopyFlags{.ignore_error = true},
                                [this, r, source, dests](bool read_error, uint32_t write_errors) {
                                  copy_done(r, source, dests, read_error, write_errors);
                                });
        if (!st) copy_done(r, source, dests, true, 0);
      });
}

void Mirror::copy_done(RegionIndex r, unsigned source, const std::vector<unsigned>& dests, bool read_error,
                       uint32_t write_errors) {
  Actions after;
  {
    std::lock_guard lock(mutex_);
    if (read_error) fail_leg_locked(source, kSyncError);
    for (size_t k = 0; k < dests.size(); ++k)
      if ((write_errors & (1u << k)) != 0) fail_leg_locked(dests[k], kSyncError);
    // The destinations that failed have left the set; the others hold the source's data.
    const bool ok = !read_error;
    if (ok) {
      ++regions_resynced_;
      bytes_resynced_ += to_bytes(geometry_.length_of(r)).value();
    }
    finish_recovery_locked(r, ok, after);
    schedule_recovery_locked(after);
    wake_if_resync_idle_locked();
  }
  run(after);
}

void Mirror::finish_recovery_locked(RegionIndex r, bool ok, Actions& after) {
  std::vector<RegionHash::Parked> released;
  hash_->end_recovery(r, ok, released);
  for (auto& p : released) after.push_back(std::move(p));
  // The last region copied: every leg still in the set now holds every region.
  if (ok && log_->sync_count() == geometry_.region_count()) mark_legs_complete_locked();
  log_touched_ = true;
  --copies_in_flight_;
  // Every waiter on changed_ waits for the window to empty; waking them once per region made a thread switch
  // per region on a busy machine (the kcopyd worker is on every copy's path).
  if (copies_in_flight_ == 0) changed_.notify_all();
}

void Mirror::wake_if_resync_idle_locked() {
  // Only once the window is empty after refilling: waking the update pass whenever it empties for a moment
  // (every region with a window of 1) wrote the log, and flushed the legs, once per region.
  if (copies_in_flight_ == 0) wake_.notify_all();
}

}  // namespace kcopyfs
