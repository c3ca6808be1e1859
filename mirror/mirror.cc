#include "mirror/mirror.h"

#include <algorithm>
#include <future>

#include "engine/fan_in.h"
#include "engine/file_device.h"
#include "engine/io_ring.h"

namespace kcopyfs {

namespace {

constexpr uint32_t bit(unsigned leg) { return 1u << leg; }

std::string mirror_name(const std::vector<std::unique_ptr<BlockDevice>>& legs) {
  std::string name = "mirror:";
  for (size_t i = 0; i < legs.size(); ++i) {
    if (i > 0) name += ',';
    name += legs[i] ? legs[i]->path() : std::string("?");
  }
  return name;
}

}  // namespace

// One caller write: the regions it touches and the legs' answers.
struct Mirror::WriteOp {
  Bytes offset;
  std::span<const std::byte> buffer;
  FixedBuffer fixed;
  IoCallback done;
  RegionIndex first, last;
  unsigned pending = 0;  // leg writes not yet answered (guarded by mutex_)
  bool any_ok = false;
  bool any_failed = false;
  bool registered = false;  // in writing_ (guarded by mutex_)
};

// One caller read and the legs it has tried.
struct Mirror::ReadOp {
  Bytes offset;
  std::span<std::byte> buffer;
  FixedBuffer fixed;
  IoCallback done;
  RegionIndex first, last;
  uint32_t tried = 0;
};

Sector Mirror::size_of(const std::vector<std::unique_ptr<BlockDevice>>& legs) {
  Sector size(~0ull);
  for (const auto& leg : legs)
    if (leg) size = min(size, leg->size_in_sectors());
  return legs.empty() ? Sector(0) : size;
}

Status Mirror::check_legs(const std::vector<std::unique_ptr<BlockDevice>>& legs,
                          const MirrorOptions& options) {
  if (legs.size() < kMinLegs || legs.size() > kMaxLegs) {
    std::string m = "a mirror has 2 to 9 legs, not ";
    m += std::to_string(legs.size());
    return Error::invalid(m);
  }
  for (const auto& leg : legs) {
    if (!leg) return Error::invalid("a mirror leg is missing");
    if (leg->read_only()) return Error::from_errno(EROFS, "mirror leg " + leg->path());
  }
  if (options.resync_window == 0) return Error::invalid("the resync window must be at least 1 region");
  const std::string rule = check_region_size(options.region_size, size_of(legs));
  if (!rule.empty()) return Error::invalid("mirror: " + rule);
  return {};
}

Result<std::unique_ptr<Mirror>> Mirror::create(std::vector<std::unique_ptr<BlockDevice>> legs,
                                               LogFactory make_log, const MirrorOptions& options) {
  if (auto st = check_legs(legs, options); !st) return st.error();
  const RegionGeometry geometry(options.region_size, size_of(legs));
  std::unique_ptr<Mirror> mirror(new Mirror(std::move(legs), geometry, options));
  Mirror* raw = mirror.get();
  auto log = make_log(geometry.mirror_size(), [raw](std::function<void(bool)> done) {
    raw->flush_legs([done = std::move(done)](bool all_ok, bool) { done(all_ok); });
  });
  if (!log) return log.error();
  if (auto st = mirror->finish_create(std::move(log).value()); !st) return st.error();
  return mirror;
}

Result<std::unique_ptr<Mirror>> Mirror::create(std::vector<std::unique_ptr<BlockDevice>> legs,
                                               std::unique_ptr<DirtyLog> log, const MirrorOptions& options) {
  auto holder = std::make_shared<std::unique_ptr<DirtyLog>>(std::move(log));
  return create(
      std::move(legs),
      [holder](Sector, FlushLegs) -> Result<std::unique_ptr<DirtyLog>> {
        if (!*holder) return Error::invalid("mirror: no dirty log");
        return std::move(*holder);
      },
      options);
}

Mirror::Mirror(std::vector<std::unique_ptr<BlockDevice>> legs, const RegionGeometry& geometry,
               const MirrorOptions& options)
    : name_(mirror_name(legs)),
      geometry_(geometry),
      options_(options),
      throttle_(std::make_shared<Throttle>(options.throttle_percent, options.throttle_bytes_per_second)) {
  for (auto& leg : legs) {
    block_size_ = std::max(block_size_, leg->logical_block_size());
    alignment_ = std::max(alignment_, leg->memory_alignment());
    legs_.push_back(Leg{std::move(leg)});
  }
}

Status Mirror::finish_create(std::unique_ptr<DirtyLog> log) {
  if (log->region_size() != geometry_.region_size() || log->region_count() != geometry_.region_count()) {
    std::string m = "mirror: the dirty log describes ";
    m += std::to_string(log->region_count());
    m += " regions of ";
    m += std::to_string(log->region_size().value());
    m += " sectors; the mirror has ";
    m += std::to_string(geometry_.region_count());
    m += " of ";
    m += std::to_string(geometry_.region_size().value());
    return Error::invalid(m);
  }
  log_ = std::move(log);
  hash_ = std::make_unique<RegionHash>(*log_);
  // Regions out of sync at the start are held by the default leg (leg 0) only, as the kernel assumes.
  if (log_->sync_count() < geometry_.region_count()) {
    for (unsigned i = 1; i < legs_.size(); ++i) legs_[i].complete = false;
  }
  KcopydOptions k;
  k.num_pages = options_.kcopyd_pages;
  k.throttle = throttle_;
  // Legs are often images on one filesystem; offloaded copies would bypass O_DIRECT and the throttle's view.
  k.allow_offload = false;
  auto client = KcopydClient::create(k);
  if (!client) return client.error();
  kcopyd_ = std::move(client).value();
  worker_ = std::thread([this] { worker_loop(); });
  if (options_.start_resync) start_resync();
  return {};
}

Mirror::~Mirror() {
  if (worker_.joinable()) {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    worker_.join();
  }
  if (log_) {
    stop_resync();
    {
      std::unique_lock lock(mutex_);
      changed_.wait(lock, [&] { return io_in_flight_ == 0 && copies_in_flight_ == 0; });
    }
    // The kernel's suspend: idle regions cleaned and the log made durable.
    update_pass();
    flush_log_wait();
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return io_in_flight_ == 0; });
  }
  kcopyd_.reset();
  log_.reset();
}

void Mirror::run(Actions& after) {
  for (auto& a : after) a();
  after.clear();
}

void Mirror::complete_async(IoCallback done, int error) {
  IoRing::shared().value()->defer([done = std::move(done), error] {
    done(error == 0 ? std::error_code() : std::error_code(error, std::generic_category()));
  });
}

void Mirror::io_done_locked() {
  if (--io_in_flight_ == 0) changed_.notify_all();
}

char Mirror::health_char(const Leg& leg) {
  if (leg.error_kinds & kFlushError) return 'F';
  if (leg.error_kinds & kWriteError) return 'D';
  if (leg.error_kinds & kSyncError) return 'S';
  if (leg.error_kinds & kReadError) return 'R';
  return leg.errors == 0 ? 'A' : 'U';
}

int Mirror::complete_leg_locked(int except) const {
  for (unsigned i = 0; i < legs_.size(); ++i) {
    if (static_cast<int>(i) != except && in_set_locked(i) && legs_[i].complete) return static_cast<int>(i);
  }
  return -1;
}

void Mirror::mark_legs_complete_locked() {
  for (unsigned i = 0; i < legs_.size(); ++i) {
    if (in_set_locked(i)) legs_[i].complete = true;
  }
}

void Mirror::fail_leg_locked(unsigned leg, ErrorKind kind) {
  legs_[leg].error_kinds |= kind;
  ++legs_[leg].errors;
  if (leg == default_leg_ && !in_set_locked(leg)) {
    // The default leg is the resync source and the only reader of out-of-sync regions: hand the role to the
    // first leg still in the set that holds every region (the kernel's fail_mirror moves it only while the
    // mirror is in sync). With none, it stays: out-of-sync regions fail rather than read stale data.
    if (const int next = complete_leg_locked(-1); next >= 0) default_leg_ = static_cast<unsigned>(next);
  }
  changed_.notify_all();
}

bool Mirror::range_in_sync_locked(RegionIndex first, RegionIndex last) const {
  for (uint64_t r = first.value(); r <= last.value(); ++r)
    if (!hash_->in_sync(RegionIndex(r))) return false;
  return true;
}

int Mirror::choose_read_leg_locked(bool in_sync, uint32_t tried) {
  const unsigned n = static_cast<unsigned>(legs_.size());
  if (!in_sync) {
    // Only the default leg is known to hold an out-of-sync region.
    const unsigned d = default_leg_;
    return (tried & bit(d)) != 0 || !in_set_locked(d) ? -1 : static_cast<int>(d);
  }
  // Legs without errors first, the least loaded (fewest reads in flight), ties broken round-robin; a leg
  // that failed a read only when no other is left.
  for (bool allow_read_errors : {false, true}) {
    int best = -1;
    for (unsigned i = 0; i < n; ++i) {
      const unsigned leg = (next_read_leg_ + i) % n;
      if ((tried & bit(leg)) != 0 || !in_set_locked(leg)) continue;
      if (!allow_read_errors && legs_[leg].error_kinds != 0) continue;
      if (best < 0 || legs_[leg].reads_in_flight < legs_[best].reads_in_flight) best = static_cast<int>(leg);
    }
    if (best >= 0) {
      next_read_leg_ = (static_cast<unsigned>(best) + 1) % n;
      return best;
    }
  }
  return -1;
}

unsigned Mirror::default_leg() const {
  std::lock_guard lock(mutex_);
  return default_leg_;
}

// ---- writes

void Mirror::write(Bytes offset, std::span<const std::byte> buffer, IoCallback done, FixedBuffer fixed) {
  const uint64_t len = buffer.size();
  if (offset.value() % block_size_ != 0 || len % block_size_ != 0 || offset.value() > size().value() ||
      len > size().value() - offset.value())
    return complete_async(std::move(done), EINVAL);
  if (len == 0) return complete_async(std::move(done), 0);
  auto w = std::make_shared<WriteOp>();
  w->offset = offset;
  w->buffer = buffer;
  w->fixed = fixed;
  w->done = std::move(done);
  w->first = geometry_.region_of(to_sectors(offset));
  w->last = geometry_.region_of(to_sectors(offset + Bytes(len)) - Sector(1));
  start_write(w);
}

void Mirror::start_write(const std::shared_ptr<WriteOp>& w) {
  {
    std::lock_guard lock(mutex_);
    if (holding_) {
      held_.push_back([this, w] { start_write(w); });
      return;
    }
    for (uint64_t r = w->first.value(); r <= w->last.value(); ++r) {
      if (hash_->recovering(RegionIndex(r))) {
        // Parked whole: it is tried again, from the start, when that region's copy has ended.
        hash_->park(RegionIndex(r), [this, w] { start_write(w); });
        return;
      }
    }
    if (!w->registered) {
      if (overlaps_locked(*w)) {
        overlap_waiting_.push_back(w);
        return;
      }
      writing_.push_back(w.get());
      w->registered = true;
    }
    for (uint64_t r = w->first.value(); r <= w->last.value(); ++r) hash_->begin_write(RegionIndex(r));
    ++io_in_flight_;
  }
  // Write-ahead: every leg is written only once the log says durably that these regions may differ. The
  // flush is asked for every write, even when its regions were dirty already, since the flush that made
  // them dirty may still be in flight.
  log_->flush([this, w](bool ok) {
    if (!ok) {
      std::lock_guard lock(mutex_);
      log_failed_ = true;  // reported by the log's health; the mirror keeps serving, as the kernel's
    }
    issue_leg_writes(w);
  });
}

void Mirror::issue_leg_writes(const std::shared_ptr<WriteOp>& w) {
  std::vector<std::pair<unsigned, BlockDevice*>> targets;
  {
    std::lock_guard lock(mutex_);
    for (unsigned i = 0; i < legs_.size(); ++i)
      if (in_set_locked(i)) targets.emplace_back(i, legs_[i].device.get());
    w->pending = static_cast<unsigned>(targets.size());
    if (targets.empty()) {
      ++w->pending;  // completed below as one failed leg
    }
  }
  if (targets.empty()) return leg_write_done(w, 0, std::make_error_code(std::errc::io_error));
  for (auto& [leg, device] : targets) {
    device->write(
        w->offset, w->buffer, [this, w, leg = leg](std::error_code ec) { leg_write_done(w, leg, ec); },
        w->fixed);
  }
}

void Mirror::leg_write_done(const std::shared_ptr<WriteOp>& w, unsigned leg, std::error_code ec) {
  Actions after;
  int result = 0;
  {
    std::lock_guard lock(mutex_);
    if (ec) {
      w->any_failed = true;
      if (legs_[leg].device && in_set_locked(leg)) fail_leg_locked(leg, kWriteError);
    } else {
      w->any_ok = true;
    }
    if (--w->pending > 0) return;
    bool quiesced = false;
    for (uint64_t r = w->first.value(); r <= w->last.value(); ++r) {
      const RegionIndex region(r);
      // A leg missed this write: the region must be copied again among the legs left.
      if (w->any_failed) hash_->mark_nosync(region);
      if (hash_->end_write(region)) {
        start_copy_locked(region, after);
        quiesced = true;
      }
    }
    // A copy that could not start may have emptied the resync window.
    if (quiesced) wake_if_resync_idle_locked();
    writing_.erase(std::find(writing_.begin(), writing_.end(), w.get()));
    release_overlapping_locked(after);
    io_done_locked();
    result = w->any_ok ? 0 : EIO;
  }
  run(after);
  w->done(result == 0 ? std::error_code() : std::error_code(result, std::generic_category()));
}

namespace {
bool ranges_overlap(Bytes a, size_t a_len, Bytes b, size_t b_len) {
  return a.value() < b.value() + b_len && b.value() < a.value() + a_len;
}
}  // namespace

bool Mirror::overlaps_locked(const WriteOp& w) const {
  for (const WriteOp* o : writing_)
    if (ranges_overlap(w.offset, w.buffer.size(), o->offset, o->buffer.size())) return true;
  for (const auto& o : overlap_waiting_)
    if (o.get() != &w && ranges_overlap(w.offset, w.buffer.size(), o->offset, o->buffer.size())) return true;
  return false;
}

void Mirror::release_overlapping_locked(Actions& after) {
  // In arrival order: a write goes once nothing in flight and nothing waiting before it overlaps it.
  for (size_t i = 0; i < overlap_waiting_.size();) {
    const WriteOp& w = *overlap_waiting_[i];
    bool blocked = false;
    for (const WriteOp* o : writing_)
      blocked = blocked || ranges_overlap(w.offset, w.buffer.size(), o->offset, o->buffer.size());
    for (size_t j = 0; j < i && !blocked; ++j)
      blocked = ranges_overlap(w.offset, w.buffer.size(), overlap_waiting_[j]->offset,
                               overlap_waiting_[j]->buffer.size());
    if (blocked) {
      ++i;
      continue;
    }
    std::shared_ptr<WriteOp> ready = std::move(overlap_waiting_[i]);
    overlap_waiting_.erase(overlap_waiting_.begin() + static_cast<ptrdiff_t>(i));
    // In flight from now on, so that a write arriving before start_write runs waits behind it.
    writing_.push_back(ready.get());
    ready->registered = true;
    after.push_back([this, ready] { start_write(ready); });
  }
}

void Mirror::write_zeroes(Bytes offset, Bytes length, bool /*may_unmap*/, IoCallback done) {
  // Through the write path, so the log and every leg see the zeros.
  write_zeroes_by_writing(*this, offset, length, std::move(done));
}

// ---- reads

void Mirror::read(Bytes offset, std::span<std::byte> buffer, IoCallback done, FixedBuffer fixed) {
  const uint64_t len = buffer.size();
  if (offset.value() % block_size_ != 0 || len % block_size_ != 0 || offset.value() > size().value() ||
      len > size().value() - offset.value())
    return complete_async(std::move(done), EINVAL);
  if (len == 0) return complete_async(std::move(done), 0);
  auto r = std::make_shared<ReadOp>();
  r->offset = offset;
  r->buffer = buffer;
  r->fixed = fixed;
  r->done = std::move(done);
  r->first = geometry_.region_of(to_sectors(offset));
  r->last = geometry_.region_of(to_sectors(offset + Bytes(len)) - Sector(1));
  {
    std::lock_guard lock(mutex_);
    if (holding_) {
      held_.push_back([this, r] {
        {
          std::lock_guard relock(mutex_);
          ++io_in_flight_;
        }
        issue_read(r);
      });
      return;
    }
    ++io_in_flight_;
  }
  issue_read(r);
}

void Mirror::issue_read(const std::shared_ptr<ReadOp>& r) {
  BlockDevice* device = nullptr;
  int leg = -1;
  bool split = false;
  {
    std::lock_guard lock(mutex_);
    // Asked again on every try: a leg may have failed a write to the range meanwhile.
    leg = choose_read_leg_locked(range_in_sync_locked(r->first, r->last), r->tried);
    if (leg >= 0) {
      device = legs_[leg].device.get();
      ++legs_[leg].reads_in_flight;
    } else if (r->tried != 0 && r->first != r->last) {
      // Every leg failed this read, but each may have failed another region of it: the kernel never sends a
      // bio across a region (max_io_len), so it retries region by region; so do we. Each region's read
      // counts as I/O in flight; this one's count goes.
      split = true;
      io_in_flight_ += r->last.value() - r->first.value() + 1;
      io_done_locked();
    } else {
      io_done_locked();
    }
  }
  if (split) return split_read(r);
  if (leg < 0) return complete_async(std::move(r->done), EIO);
  device->read(
      r->offset, r->buffer,
      [this, r, leg](std::error_code ec) { read_done(r, static_cast<unsigned>(leg), ec); }, r->fixed);
}

void Mirror::split_read(const std::shared_ptr<ReadOp>& r) {
  // Runs on the completion thread of a failed leg read (tried != 0), never inside the caller's read().
  const uint64_t regions = r->last.value() - r->first.value() + 1;
  auto fan = std::make_shared<FanIn>(static_cast<unsigned>(regions), std::move(r->done));
  std::vector<std::shared_ptr<ReadOp>> pieces;
  for (uint64_t k = r->first.value(); k <= r->last.value(); ++k) {
    const RegionIndex region(k);
    const Bytes start = std::max(r->offset, to_bytes(geometry_.start_of(region)));
    const Bytes end = min(r->offset + Bytes(r->buffer.size()),
                          to_bytes(geometry_.start_of(region) + geometry_.length_of(region)));
    auto piece = std::make_shared<ReadOp>();
    piece->offset = start;
    piece->buffer = r->buffer.subspan((start - r->offset).value(), (end - start).value());
    piece->fixed = r->fixed;
    piece->done = [fan](std::error_code ec) { fan->arrive(ec); };
    piece->first = piece->last = region;
    pieces.push_back(std::move(piece));
  }
  for (auto& piece : pieces) issue_read(piece);
}

void Mirror::read_done(const std::shared_ptr<ReadOp>& r, unsigned leg, std::error_code ec) {
  {
    std::lock_guard lock(mutex_);
    --legs_[leg].reads_in_flight;
    if (ec) {
      fail_leg_locked(leg, kReadError);
      r->tried |= bit(leg);
    } else {
      io_done_locked();
    }
  }
  if (ec) return issue_read(r);
  r->done(std::error_code());
}

// ---- flushes

void Mirror::flush_legs(std::function<void(bool all_ok, bool any_ok)> done) {
  std::vector<std::pair<unsigned, BlockDevice*>> targets;
  {
    std::lock_guard lock(mutex_);
    for (unsigned i = 0; i < legs_.size(); ++i)
      if (in_set_locked(i)) targets.emplace_back(i, legs_[i].device.get());
    ++io_in_flight_;
  }
  if (targets.empty()) {
    IoRing::shared().value()->defer([this, done = std::move(done)] {
      {
        std::lock_guard lock(mutex_);
        io_done_locked();
      }
      done(false, false);
    });
    return;
  }
  struct Join {
    unsigned left;
    bool all_ok = true;
    bool any_ok = false;
    std::function<void(bool, bool)> done;
  };
  auto join =
      std::make_shared<Join>(Join{static_cast<unsigned>(targets.size()), true, false, std::move(done)});
  for (auto& [leg, device] : targets) {
    device->flush([this, join, leg = leg](std::error_code ec) {
      bool last = false;
      {
        std::lock_guard lock(mutex_);
        if (ec) {
          join->all_ok = false;
          if (in_set_locked(leg)) fail_leg_locked(leg, kFlushError);
        } else {
          join->any_ok = true;
        }
        last = --join->left == 0;
        if (last) io_done_locked();
      }
      if (last) join->done(join->all_ok, join->any_ok);
    });
  }
}

void Mirror::flush(IoCallback done) {
  {
    std::lock_guard lock(mutex_);
    if (holding_) {
      held_.push_back([this, done = std::move(done)]() mutable { flush(std::move(done)); });
      return;
    }
  }
  flush_legs([done = std::move(done)](bool, bool any_ok) {
    done(any_ok ? std::error_code() : std::make_error_code(std::errc::io_error));
  });
}

// ---- suspend, forced resync, replace

Status Mirror::suspend(std::unique_lock<std::mutex>& lock) {
  if (holding_)
    return Error(std::make_error_code(std::errc::device_or_resource_busy),
                 "mirror " + name_ + ": another reconfiguration is running");
  holding_ = true;
  changed_.wait(lock, [&] { return io_in_flight_ == 0 && copies_in_flight_ == 0; });
  return {};
}

void Mirror::resume(std::unique_lock<std::mutex>& lock) {
  holding_ = false;
  Actions released;
  released.swap(held_);
  rate_start_ = std::chrono::steady_clock::now();
  rate_start_bytes_ = bytes_resynced_;
  lock.unlock();
  run(released);
  wake_.notify_all();
  lock.lock();
}

void Mirror::mark_all_out_of_sync_locked() {
  for (uint64_t r = 0; r < geometry_.region_count(); ++r) {
    // Dirty in the log too, so that a crash before the copy still resyncs the region.
    log_->mark_region(RegionIndex(r));
    log_->set_region_sync(RegionIndex(r), false);
  }
  hash_->reset();
  log_->reset_resync_scan();
}

void Mirror::flush_log_wait() {
  auto p = std::make_shared<std::promise<bool>>();
  auto f = p->get_future();
  {
    std::lock_guard lock(mutex_);
    ++io_in_flight_;
  }
  log_->flush([this, p](bool ok) {
    {
      std::lock_guard lock(mutex_);
      if (!ok) log_failed_ = true;
      io_done_locked();
    }
    p->set_value(ok);
  });
  f.wait();
}

Status Mirror::resync_all() {
  std::unique_lock lock(mutex_);
  if (auto st = suspend(lock); !st) return st;
  mark_all_out_of_sync_locked();
  lock.unlock();
  flush_log_wait();
  lock.lock();
  resume(lock);
  return {};
}

Result<std::unique_ptr<BlockDevice>> Mirror::replace_leg(const std::string& old_path,
                                                         std::unique_ptr<BlockDevice> new_leg) {
  unsigned index = 0;
  {
    std::lock_guard lock(mutex_);
    while (index < legs_.size() && legs_[index].device->path() != old_path) ++index;
  }
  if (index == legs_.size()) return Error::invalid("mirror " + name_ + " has no leg " + old_path);
  return replace_leg(index, std::move(new_leg));
}

Result<std::unique_ptr<BlockDevice>> Mirror::replace_leg(unsigned index, std::unique_ptr<BlockDevice> new_leg,
                                                         const std::function<void()>& while_suspended) {
  if (!new_leg) return Error::invalid("replace_leg: no new device");
  if (new_leg->read_only()) return Error::from_errno(EROFS, "new mirror leg " + new_leg->path());
  if (new_leg->size_in_sectors() < geometry_.mirror_size()) {
    std::string m = "new mirror leg ";
    m += new_leg->path();
    m += " is smaller than the mirror (";
    m += std::to_string(new_leg->size_in_sectors().value());
    m += " < ";
    m += std::to_string(geometry_.mirror_size().value());
    m += " sectors)";
    return Error::invalid(m);
  }
  if (new_leg->logical_block_size() > block_size_)
    return Error::invalid("new mirror leg " + new_leg->path() + " has a larger logical block size");
  std::unique_lock lock(mutex_);
  if (index >= legs_.size()) return Error::invalid("replace_leg: no leg " + std::to_string(index));
  // Another leg must hold every region: the data of a region out of sync may be on the default leg only, and
  // a leg still being resynced lacks the regions not copied yet.
  if (complete_leg_locked(static_cast<int>(index)) < 0)
    return Error::invalid("mirror " + name_ + ": leg " + legs_[index].device->path() +
                          " is the only one holding the data");
  if (auto st = suspend(lock); !st) return st.error();
  // Checked again: a leg may have failed while the I/O drained.
  const int other = complete_leg_locked(static_cast<int>(index));
  if (other < 0) {
    resume(lock);
    return Error::invalid("mirror " + name_ + ": leg " + legs_[index].device->path() +
                          " is the only one holding the data");
  }
  if (default_leg_ == index) default_leg_ = static_cast<unsigned>(other);
  std::unique_ptr<BlockDevice> old = std::move(legs_[index].device);
  legs_[index] = Leg{std::move(new_leg)};
  // It holds none of the mirror's data until the resync below has copied every region to it.
  legs_[index].complete = false;
  // The new leg holds nothing of the mirror: every region is copied to it.
  mark_all_out_of_sync_locked();
  lock.unlock();
  flush_log_wait();
  if (while_suspended) while_suspended();
  lock.lock();
  resume(lock);
  return old;
}

// ---- status

std::string Mirror::status_info() const {
  std::lock_guard lock(mutex_);
  std::string out = std::to_string(legs_.size());
  for (const auto& leg : legs_) {
    out += ' ';
    out += leg.device->path();
  }
  out += ' ';
  out += std::to_string(log_->sync_count());
  out += '/';
  out += std::to_string(geometry_.region_count());
  out += " 1 ";
  for (const auto& leg : legs_) out += health_char(leg);
  out += ' ';
  out += log_->status_info();
  return out;
}

std::string Mirror::status_table() const {
  std::lock_guard lock(mutex_);
  std::string out = log_->status_table();
  out += std::to_string(legs_.size());
  for (const auto& leg : legs_) {
    out += ' ';
    out += leg.device->path();
    out += " 0";
  }
  return out;
}

MirrorStatus Mirror::status() const {
  std::lock_guard lock(mutex_);
  MirrorStatus s;
  for (unsigned i = 0; i < legs_.size(); ++i) {
    s.legs.push_back(MirrorStatus::Leg{legs_[i].device->path(), health_char(legs_[i]), in_set_locked(i),
                                       i == default_leg_});
  }
  s.regions_in_sync = log_->sync_count();
  s.regions_total = geometry_.region_count();
  s.resyncing = resync_enabled_ && s.regions_in_sync < s.regions_total;
  s.regions_resynced = regions_resynced_;
  s.bytes_resynced = bytes_resynced_;
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - rate_start_).count();
  if (seconds > 0)
    s.resync_bytes_per_second = static_cast<double>(bytes_resynced_ - rate_start_bytes_) / seconds;
  s.log_health = log_->health();
  s.throttle_percent = throttle_->percent();
  s.throttle_bytes_per_second = throttle_->bytes_per_second();
  return s;
}

}  // namespace kcopyfs
