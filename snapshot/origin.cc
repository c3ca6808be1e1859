#include "snapshot/origin.h"

#include <algorithm>
#include <cstring>
#include <map>

#include "engine/fan_in.h"
#include "engine/file_device.h"
#include "engine/fill_ahead_device.h"
#include "engine/io_ring.h"
#include "snapshot/persistent_store.h"
#include "snapshot/transient_store.h"

namespace kcopyfs {

namespace {
constexpr uint32_t kKcopydPages = 2048;  // 8 MiB of copy buffers per origin
// Copy batches in flight at once (start_copies_locked), and the most chunks one gather job takes.
constexpr unsigned kCopyBatches = 4;
constexpr size_t kGatherChunks = 256;
}  // namespace

Result<std::unique_ptr<Origin>> Origin::create(std::unique_ptr<BlockDevice> device) {
  std::unique_ptr<Origin> origin(new Origin(std::move(device)));
  KcopydOptions options;
  options.num_pages = kKcopydPages;
  options.allow_offload = false;  // chunks are small and the COW data must not sit in the page cache
  auto client = KcopydClient::create(options);
  if (!client) return client.error();
  origin->kcopyd_ = std::move(client).value();
  return origin;
}

Origin::Origin(std::unique_ptr<BlockDevice> device) : device_(std::move(device)) {}

Origin::~Origin() {
  stop_merge();
  {
    // Write-back writes are acknowledged I/O still on its way to the device (through kcopyd's copies).
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return writes_in_flight_ == 0; });
  }
  kcopyd_.reset();  // waits for every copy; their callbacks still find the snapshots
  {
    // An invalidation's header write still in flight calls back into its snapshot, and so does the deferred
    // commit of a writable snapshot's acknowledged write.
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] {
      return std::none_of(snapshots_.begin(), snapshots_.end(),
                          [](const auto& s) { return s->header_pending_ || !s->pending_.empty(); });
    });
  }
  snapshots_.clear();
}

void Origin::run(Actions& after) {
  for (auto& a : after) a();
  after.clear();
}

void Origin::fail_async(IoCallback done, int error) {
  auto ring = IoRing::shared();
  ring.value()->defer(
      [done = std::move(done), error] { done(std::error_code(error, std::generic_category())); });
}

Result<Snapshot*> Origin::create_snapshot(const std::string& name, std::unique_ptr<BlockDevice> cow,
                                          const SnapshotOptions& options) {
  if (find_snapshot(name) != nullptr) return Error::invalid("snapshot " + name + " exists already");
  const std::string rule =
      check_chunk_size(options.chunk_size, device_->logical_block_size(), cow->logical_block_size());
  if (!rule.empty()) return Error::invalid(rule);
  if (cow_fill_ahead_) cow = FillAheadDevice::wrap_if_sparse_file(std::move(cow));
  std::unique_ptr<ExceptionStore> store;
  if (options.persistent) {
    auto s = PersistentStore::create(*cow, options.chunk_size);
    if (!s) return s.error();
    store = std::move(s).value();
  } else {
    auto s = TransientStore::create(*cow, options.chunk_size);
    if (!s) return s.error();
    store = std::move(s).value();
  }
  return add_snapshot(std::unique_ptr<Snapshot>(
      new Snapshot(*this, name, std::move(cow), std::move(store), options.writable)));
}

Result<Snapshot*> Origin::attach_snapshot(const std::string& name, std::unique_ptr<BlockDevice> cow,
                                          bool writable) {
  if (find_snapshot(name) != nullptr) return Error::invalid("snapshot " + name + " exists already");
  if (cow_fill_ahead_) cow = FillAheadDevice::wrap_if_sparse_file(std::move(cow));
  std::vector<Exception> exceptions;
  auto store = PersistentStore::open(*cow, device_->size_in_sectors(),
                                     [&](const Exception& e) { exceptions.push_back(e); });
  if (!store) return store.error();
  const std::string rule =
      check_chunk_size(store.value()->chunk_size(), device_->logical_block_size(), cow->logical_block_size());
  if (!rule.empty()) return Error::invalid("COW " + cow->path() + ": " + rule);
  const bool valid = store.value()->valid();
  std::unique_ptr<Snapshot> snap(
      new Snapshot(*this, name, std::move(cow), std::move(store).value(), writable));
  snap->table_.insert_bulk(exceptions);
  snap->valid_ = valid;
  if (!valid) snap->invalid_reason_ = "its COW header says invalid";
  return add_snapshot(std::move(snap));
}

Result<Snapshot*> Origin::add_snapshot(std::unique_ptr<Snapshot> snapshot) {
  Actions released;
  Snapshot* raw = snapshot.get();
  {
    std::unique_lock lock(mutex_);
    if (holding_writes_) return Error::invalid("another snapshot is being added to this origin");
    if (merging_ != nullptr) return Error::invalid("the origin is merging snapshot " + merging_->name());
    // Hold new writes and drain the ones in flight: the snapshot starts at a point where none is half done.
    holding_writes_ = true;
    changed_.wait(lock, [&] { return writes_in_flight_ == 0; });
    snapshots_.push_back(std::move(snapshot));
    // The kernel keeps snapshots sorted by chunk size, largest first (§2.2).
    std::stable_sort(snapshots_.begin(), snapshots_.end(), [](const auto& a, const auto& b) {
      return a->geometry_.chunk_size() > b->geometry_.chunk_size();
    });
    holding_writes_ = false;
    released.swap(held_writes_);
  }
  run(released);
  return raw;
}

Status Origin::remove_snapshot(const std::string& name) {
  Actions released;
  std::unique_ptr<Snapshot> doomed;
  {
    std::unique_lock lock(mutex_);
    auto it =
        std::find_if(snapshots_.begin(), snapshots_.end(), [&](const auto& s) { return s->name() == name; });
    if (it == snapshots_.end()) return Error::invalid("no snapshot " + name);
    if (it->get() == merging_) return Error::invalid("snapshot " + name + " is merging");
    holding_writes_ = true;
    Snapshot* s = it->get();
    changed_.wait(lock, [&] { return writes_in_flight_ == 0 && s->pending_.empty() && !s->header_pending_; });
    it = std::find_if(snapshots_.begin(), snapshots_.end(), [&](const auto& p) { return p.get() == s; });
    doomed = std::move(*it);
    snapshots_.erase(it);
    holding_writes_ = false;
    released.swap(held_writes_);
  }
  doomed.reset();
  run(released);
  return {};
}

Snapshot* Origin::find_snapshot(const std::string& name) const {
  std::lock_guard lock(mutex_);
  for (const auto& s : snapshots_) {
    if (s->name() == name) return s.get();
  }
  return nullptr;
}

std::optional<SnapshotStatus> Origin::snapshot_status(const std::string& name) const {
  std::lock_guard lock(mutex_);
  for (const auto& s : snapshots_) {
    if (s->name() == name) return s->status_locked();
  }
  return std::nullopt;
}

std::vector<Snapshot*> Origin::snapshots() const {
  std::lock_guard lock(mutex_);
  std::vector<Snapshot*> out;
  for (const auto& s : snapshots_) out.push_back(s.get());
  return out;
}

void Origin::read(Bytes offset, std::span<std::byte> buffer, IoCallback done, FixedBuffer fixed) {
  if (merge_active_.load(std::memory_order_acquire))
    return read_during_merge(offset, buffer, std::move(done));
  if (landing_count_.load() > 0 && !buffer.empty()) {
    std::lock_guard lock(mutex_);
    auto it = find_landing_locked(offset.value(), offset.value() + buffer.size());
    if (it != landing_.end()) {
      // The device does not hold this write's data yet: read once it does.
      it->second.waiters.push_back([this, offset, buffer, done = std::move(done), fixed]() mutable {
        read(offset, buffer, std::move(done), fixed);
      });
      return;
    }
  }
  device_->read(offset, buffer, std::move(done), fixed);
}

void Origin::set_write_back_limit(Bytes limit) {
  std::lock_guard lock(mutex_);
  write_back_limit_ = limit.value();
}

Bytes Origin::write_back_limit() const {
  std::lock_guard lock(mutex_);
  return Bytes(write_back_limit_);
}

std::map<uint64_t, Origin::Landing>::iterator Origin::find_landing_locked(uint64_t begin, uint64_t end) {
  // Landing writes never overlap one another, so only the last one starting at or before begin and the
  // first one after it can overlap [begin, end).
  auto it = landing_.upper_bound(begin);
  if (it != landing_.begin()) {
    auto before = std::prev(it);
    if (before->second.end > begin) return before;
  }
  if (it != landing_.end() && it->first < end) return it;
  return landing_.end();
}

void Origin::landed_locked(const Write& w, std::error_code ec, Actions& after) {
  auto it = landing_.find(w.offset.value());
  for (auto& waiter : it->second.waiters) after.push_back(std::move(waiter));
  landing_.erase(it);
  landing_sequences_.erase(w.sequence);
  landing_count_.store(landing_.size());
  write_back_bytes_ -= w.buffer.size();
  if (ec) {
    landing_errors_.emplace(w.sequence, ec.value());
    if (landing_reporter_)
      after.push_back([this, offset = w.offset, length = Bytes(w.buffer.size()), ec] {
        landing_reporter_(offset, length, ec);
      });
  }
  while (!flush_waiters_.empty() &&
         (landing_sequences_.empty() || flush_waiters_.front().first < *landing_sequences_.begin())) {
    after.push_back(
        [this, mark = flush_waiters_.front().first,
         done = std::move(flush_waiters_.front().second)]() mutable { flush_now(mark, std::move(done)); });
    flush_waiters_.pop_front();
  }
}

void Origin::flush(IoCallback done) {
  uint64_t mark;
  {
    std::lock_guard lock(mutex_);
    mark = write_back_sequence_;
    if (!landing_sequences_.empty()) {
      // Every write acknowledged so far must be on the device before the device's flush.
      flush_waiters_.emplace_back(mark, std::move(done));
      return;
    }
  }
  flush_now(mark, std::move(done));
}

void Origin::flush_now(uint64_t mark, IoCallback caller_done) {
  // A write-back write that failed to land fails the flushes that cover it (its caller was told it
  // succeeded), once: the first such flush to complete reports it.
  IoCallback done = [this, mark, caller_done = std::move(caller_done)](std::error_code ec) {
    {
      std::lock_guard lock(mutex_);
      auto end = landing_errors_.upper_bound(mark);
      if (!ec && end != landing_errors_.begin())
        ec = std::error_code(landing_errors_.begin()->second, std::generic_category());
      landing_errors_.erase(landing_errors_.begin(), end);
    }
    caller_done(ec);
  };
  BlockDevice* cow = nullptr;
  if (merge_active_.load(std::memory_order_acquire)) {
    std::lock_guard lock(mutex_);
    if (merging_ != nullptr) {
      cow = merging_->cow_.get();
      ++merge_cow_io_;
    }
  }
  if (cow == nullptr) return device_->flush(std::move(done));
  // Writes through the origin view may sit in the merging COW store: flush both devices, as the kernel's
  // snapshot-merge target does (one flush bio to the origin, one to the COW).
  auto fan = std::make_shared<FanIn>(2, std::move(done));
  device_->flush([fan](std::error_code ec) { fan->arrive(ec); });
  cow->flush([this, fan](std::error_code ec) {
    {
      std::lock_guard lock(mutex_);
      if (--merge_cow_io_ == 0) changed_.notify_all();
    }
    fan->arrive(ec);
  });
}

void Origin::write_zeroes(Bytes offset, Bytes length, bool /*may_unmap*/, IoCallback done) {
  // Through the write path, so the snapshots keep the old data.
  write_zeroes_by_writing(*this, offset, length, std::move(done));
}

void Origin::write(Bytes offset, std::span<const std::byte> buffer, IoCallback done, FixedBuffer fixed) {
  if (device_->read_only()) return fail_async(std::move(done), EROFS);
  if (offset.value() > size().value() || buffer.size() > size().value() - offset.value())
    return fail_async(std::move(done), EINVAL);
  auto w = std::make_shared<Write>();
  w->offset = offset;
  w->buffer = buffer;
  w->fixed = fixed;
  w->done = std::move(done);
  Actions after;
  bool write_back = false;
  {
    std::lock_guard lock(mutex_);
    if (holding_writes_) {
      held_writes_.push_back([this, w] { write(w->offset, w->buffer, std::move(w->done), w->fixed); });
      return;
    }
    if (merging_ != nullptr && !buffer.empty()) {
      write_during_merge_locked(w, after);
    } else {
      const uint64_t begin = offset.value(), end = begin + buffer.size();
      if (!landing_.empty() && !buffer.empty()) {
        auto it = find_landing_locked(begin, end);
        if (it != landing_.end()) {
          // An acknowledged write to these bytes is not on the device yet: this one must land after it.
          it->second.waiters.push_back(
              [this, w] { write(w->offset, w->buffer, std::move(w->done), w->fixed); });
          return;
        }
      }
      ++writes_in_flight_;
      const Sector first = to_sectors(offset);
      const Sector last = first + to_sectors(Bytes(buffer.size())) - Sector(1);
      auto ready = [this, w] {
        if (w->gates.fetch_sub(1) == 1) issue_device_write(w);
      };
      if (buffer.empty() || !protect_range_locked(first, last, ready, after)) {
        after.push_back([this, w] { issue_device_write(w); });
      } else if (write_back_bytes_ + buffer.size() <= write_back_limit_) {
        // Copy-on-write is needed: acknowledge once the data is ours (write-back, see origin.h).
        write_back = true;
        w->gates.store(2);
        w->sequence = ++write_back_sequence_;
        landing_.emplace(begin, Landing{end, w->sequence, {}});
        landing_sequences_.insert(w->sequence);
        landing_count_.store(landing_.size());
        write_back_bytes_ += buffer.size();
      }
    }
  }
  run(after);  // starts the copies
  if (!write_back) return;
  w->owned = allocate_aligned(io_alignment(*device_), buffer.size());
  std::memcpy(w->owned.get(), buffer.data(), buffer.size());
  w->buffer = std::span<const std::byte>(w->owned.get(), buffer.size());
  w->fixed = {};
  auto ring = IoRing::shared();
  ring.value()->defer([done = std::move(w->done)] { done(std::error_code()); });
  w->done = nullptr;
  if (w->gates.fetch_sub(1) == 1) issue_device_write(w);
}

bool Origin::protect_range_locked(Sector first, Sector last, std::function<void()> ready, Actions& after) {
  // Counts the pending exceptions still to complete; the last one to complete runs ready.
  struct Barrier {
    unsigned waits = 0;
    std::function<void()> ready;
  };
  auto barrier = std::make_shared<Barrier>();
  barrier->ready = std::move(ready);
  auto arrive = [this, barrier] {
    bool last_one;
    {
      std::lock_guard lock(mutex_);
      last_one = --barrier->waits == 0;
    }
    if (last_one) barrier->ready();
  };
  std::vector<PendingException*> fresh;
  for (auto& sp : snapshots_) {
    Snapshot& s = *sp;
    if (&s == merging_) continue;
    if (!s.valid_) {
      // Skipped, but not before its header says it is invalid (a crash must not find it valid without the
      // old data of a chunk this write overwrites).
      if (s.header_pending_) {
        ++barrier->waits;
        s.header_waiters_.push_back(arrive);
      }
      continue;
    }
    const ChunkGeometry& g = s.geometry_;
    for (uint64_t c = g.chunk_of(first).value(); c <= g.chunk_of(last).value(); ++c) {
      const ChunkIndex chunk(c);
      // A pending exception first: a writable snapshot's chunk is in its table before its commit is durable
      // (deferred commit), and the origin must not overwrite the chunk until it is.
      PendingException* pe = s.find_pending_locked(chunk);
      if (pe == nullptr && s.table_.lookup(chunk)) continue;
      if (pe == nullptr) {
        pe = s.new_pending_locked(chunk);
        if (pe == nullptr) {
          // The COW store is full: an origin write always invalidates (even a "PO" store, §2.4).
          invalidate_locked(s, after, "the COW device is full");
          ++barrier->waits;
          s.header_waiters_.push_back(arrive);
          break;
        }
        fresh.push_back(pe);
      }
      ++barrier->waits;
      pe->waiters.push_back([this, arrive, sp = &s](bool ok) {
        if (!ok) {
          // The exception failed and the snapshot is invalid: go on once its header says so. (The snapshot
          // lives: this write is in flight, so it cannot be removed.)
          std::unique_lock lock(mutex_);
          if (sp->header_pending_) {
            sp->header_waiters_.push_back(arrive);
            return;
          }
        }
        arrive();
      });
    }
  }
  start_copies_locked(fresh, after);
  return barrier->waits > 0;
}

// Fresh exceptions queue for copying; at most kCopyBatches batches are copied at once, and whatever queued
// behind them goes as the next batch. A batch becomes few kcopyd jobs: the store allocates COW chunks in
// sequence, so exceptions made one after the other have adjacent new chunks in every snapshot that takes
// them, and one gather job reads their scattered old chunks and writes one run per snapshot (up to 8). With
// many first writes in flight this turns one COW write per exception and snapshot into one per batch.
void Origin::start_copies_locked(std::vector<PendingException*>& fresh, Actions& after) {
  for (PendingException* pe : fresh) {
    pe->copy_started = true;
    copy_queue_.push_back(pe);
  }
  if (copy_batches_ < kCopyBatches) launch_copies_locked(after);
}

void Origin::launch_copies_locked(Actions& after) {
  if (copy_queue_.empty()) return;
  std::vector<PendingException*> batch;
  batch.swap(copy_queue_);
  ++copy_batches_;
  // chunk size -> old chunk -> its exceptions, one per snapshot taking it (in the snapshots' order)
  std::map<uint64_t, std::map<uint64_t, std::vector<PendingException*>>> by_size;
  for (PendingException* pe : batch)
    by_size[pe->snapshot->geometry_.chunk_size().value()][pe->old_chunk.value()].push_back(pe);
  struct Job {
    std::vector<Region> sources;
    std::vector<std::vector<PendingException*>> per_dest;  // per destination: its exceptions, in copy order
    bool closed = false;                                   // ends with a partial chunk: nothing may follow
  };
  std::vector<Job> jobs;
  for (auto& [size, by_old] : by_size) {
    const ChunkGeometry g{Sector(size)};
    size_t slices = 0;
    for (auto& [old, pes] : by_old)
      slices = std::max(slices, (pes.size() + kMaxDestinations - 1) / kMaxDestinations);
    for (size_t slice = 0; slice < slices; ++slice) {
      // This slice's destinations of each chunk, in the allocation order of the first destination.
      std::vector<std::span<PendingException* const>> items;
      for (auto& [old, pes] : by_old) {
        const size_t begin = slice * kMaxDestinations;
        if (begin >= pes.size()) continue;
        items.emplace_back(pes.data() + begin, std::min(pes.size(), begin + kMaxDestinations) - begin);
      }
      std::sort(items.begin(), items.end(), [](const auto& a, const auto& b) {
        if (a.front()->snapshot != b.front()->snapshot)
          return std::less<const Snapshot*>{}(a.front()->snapshot, b.front()->snapshot);
        return a.front()->new_chunk.value() < b.front()->new_chunk.value();
      });
      const size_t first_job = jobs.size();
      for (const auto& item : items) {
        const Sector start = g.start_of(item.front()->old_chunk);
        // The origin's last chunk may be partial.
        const Sector count = min(g.chunk_size(), device_->size_in_sectors() - start);
        bool extends = false;
        if (jobs.size() > first_job) {
          const Job& j = jobs.back();
          extends =
              !j.closed && j.per_dest.size() == item.size() && j.per_dest.front().size() < kGatherChunks;
          for (size_t d = 0; d < item.size() && extends; ++d) {
            const PendingException* last = j.per_dest[d].back();
            extends = item[d]->snapshot == last->snapshot &&
                      item[d]->new_chunk.value() == last->new_chunk.value() + 1;
          }
        }
        if (!extends)
          jobs.push_back(Job{{}, std::vector<std::vector<PendingException*>>(item.size()), false});
        Job& j = jobs.back();
        for (size_t d = 0; d < item.size(); ++d) j.per_dest[d].push_back(item[d]);
        if (!j.sources.empty() && j.sources.back().start + j.sources.back().count == start)
          j.sources.back().count += count;  // adjacent old chunks: one read
        else
          j.sources.push_back(Region{device_.get(), start, count});
        j.closed = count < g.chunk_size();
      }
    }
  }
  auto left = std::make_shared<std::atomic<size_t>>(jobs.size());
  for (Job& j : jobs) {
    std::vector<Region> dests;
    for (auto& list : j.per_dest) {
      Snapshot& s = *list.front()->snapshot;
      dests.push_back(Region{s.cow_.get(), s.geometry_.start_of(list.front()->new_chunk), Sector(0)});
    }
    auto per_dest = std::make_shared<std::vector<std::vector<PendingException*>>>(std::move(j.per_dest));
    after.push_back([this, sources = std::move(j.sources), dests = std::move(dests), per_dest, left] {
      auto finished = [this, per_dest, left](bool read_error, uint32_t write_errors) {
        for (size_t d = 0; d < per_dest->size(); ++d)
          copy_finished((*per_dest)[d], !read_error && (write_errors & (1u << d)) == 0);
        if (--*left == 0) copy_batch_done();
      };
      auto st = sources.size() == 1 ? kcopyd_->copy(sources.front(), dests, CopyFlags{}, finished)
                                    : kcopyd_->copy_gather(sources, dests, CopyFlags{}, finished);
      if (!st) finished(true, 0);
    });
  }
}

void Origin::copy_batch_done() {
  Actions after;
  {
    std::lock_guard lock(mutex_);
    --copy_batches_;
    launch_copies_locked(after);
  }
  run(after);
}

void Origin::copy_finished(std::vector<PendingException*> pes, bool ok) {
  Actions after;
  {
    std::lock_guard lock(mutex_);
    for (PendingException* pe : pes) {
      pe->copy_done = true;
      pe->copy_ok = ok;
      Snapshot& s = *pe->snapshot;
      s.copied_[pe->sequence] = pe;
      if (ok && s.valid_ && s.writable_) {
        // Deferred commit: the copy is in place, so snapshot reads and writes may use it now; only origin
        // writes (pe->waiters) need the commit to be durable.
        s.table_.insert(pe->old_chunk, pe->new_chunk);
        pe->visible = true;
        auto waiters = std::make_shared<std::vector<std::function<void(bool)>>>(std::move(pe->copy_waiters));
        pe->copy_waiters.clear();
        if (!waiters->empty())
          after.push_back([waiters] {
            for (auto& w : *waiters) w(true);
          });
      }
    }
    // All of one job's exceptions belong to one snapshot per list; commit whatever is now in order.
    if (!pes.empty()) commit_in_order_locked(*pes.front()->snapshot, after);
  }
  run(after);
}

// Commits go to the store in allocation order, as the kernel forces (§2.4): a chunk allocated later must
// never be recorded before an earlier one, or a crash could lose track of allocated space.
void Origin::commit_in_order_locked(Snapshot& s, Actions& after) {
  for (;;) {
    auto it = s.copied_.find(s.next_commit_);
    if (it == s.copied_.end()) return;
    PendingException* pe = it->second;
    s.copied_.erase(it);
    ++s.next_commit_;
    const Exception e{pe->old_chunk, pe->new_chunk};
    ExceptionStore* store = s.store_.get();
    const bool ok = pe->copy_ok;
    after.push_back([this, store, e, ok, pe] {
      store->commit_exception(e, ok, [this, pe](bool valid) { commit_finished(pe, valid); });
    });
  }
}

void Origin::commit_finished(PendingException* pe, bool valid) {
  Actions after;
  {
    std::lock_guard lock(mutex_);
    Snapshot& s = *pe->snapshot;
    if (valid && s.valid_) {
      // From now on reads of the chunk go to the COW store; reads already sent to the origin must finish
      // before the origin write that waits on this exception may overwrite the chunk.
      if (!pe->visible) s.table_.insert(pe->old_chunk, pe->new_chunk);
      s.commit_done_locked(pe->sequence, after);
      auto tracked = s.tracked_reads_.find(pe->old_chunk.value());
      if (tracked != s.tracked_reads_.end() && tracked->second > 0) {
        s.read_drain_waiters_[pe->old_chunk.value()].push_back([this, pe] {
          Actions next;
          {
            std::lock_guard l(mutex_);
            complete_pending_locked(pe, true, next);
          }
          run(next);
        });
        return;
      }
      complete_pending_locked(pe, true, after);
    } else {
      if (s.valid_)
        invalidate_locked(s, after,
                          pe->copy_ok ? "recording an exception on the COW device failed"
                                      : "copying a chunk to the COW device failed");
      s.commit_done_locked(pe->sequence, after);
      complete_pending_locked(pe, false, after);
    }
  }
  run(after);
}

void Origin::complete_pending_locked(PendingException* pe, bool ok, Actions& after) {
  Snapshot& s = *pe->snapshot;
  auto it = s.pending_.find(pe->old_chunk.value());
  std::unique_ptr<PendingException> owned = std::move(it->second);
  s.pending_.erase(it);
  auto waiters = std::make_shared<std::vector<std::function<void(bool)>>>(std::move(owned->copy_waiters));
  for (auto& w : owned->waiters) waiters->push_back(std::move(w));
  after.push_back([waiters, ok] {
    for (auto& w : *waiters) w(ok);
  });
  changed_.notify_all();
}

void Origin::invalidate_locked(Snapshot& s, Actions& after, const std::string& reason) {
  if (!s.valid_) return;
  s.valid_ = false;
  s.invalid_reason_ = reason;
  s.header_pending_ = true;
  ExceptionStore* store = s.store_.get();
  Snapshot* sp = &s;
  after.push_back([this, store, sp] {
    store->invalidate([this, sp](bool ok) {
      auto release = [this, sp] {
        Actions waiters;
        {
          std::lock_guard lock(mutex_);
          sp->header_pending_ = false;
          waiters.swap(sp->header_waiters_);
          changed_.notify_all();
        }
        run(waiters);
      };
      // The kernel lets the writes go on even when the header write failed (it only warns); a recorder may
      // keep the invalidation where the failing COW device cannot.
      if (!ok && recorder_) return recorder_(sp->name_, release);
      release();
    });
  });
}

Status Origin::invalidate_snapshot(const std::string& name, const std::string& reason) {
  Actions after;
  {
    std::lock_guard lock(mutex_);
    Snapshot* s = nullptr;
    for (auto& snap : snapshots_)
      if (snap->name_ == name) s = snap.get();
    if (s == nullptr) return Error::invalid("no snapshot " + name);
    invalidate_locked(*s, after, reason);
  }
  run(after);
  return {};
}

void Origin::issue_device_write(const std::shared_ptr<Write>& w) {
  device_->write(
      w->offset, w->buffer,
      [this, w](std::error_code ec) {
        Actions after;
        if (w->sequence != 0) {
          std::lock_guard lock(mutex_);
          landed_locked(*w, ec, after);
        }
        run(after);
        {
          // Only now may ~Origin go on: what the landing started above still uses the origin.
          std::lock_guard lock(mutex_);
          if (--writes_in_flight_ == 0) changed_.notify_all();
        }
        if (w->done) w->done(ec);
      },
      w->fixed);
}

}  // namespace kcopyfs
