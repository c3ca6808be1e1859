// Origin's snapshot-merge (kernel-dm-notes.md §2.9): rolls the origin back to a snapshot while the origin
// view stays usable.
//
// While a merge runs, the origin view is served as the snapshot would be: chunks the snapshot still holds an
// exception for are read from, and written to, its COW store; the rest go to the origin device (writes
// through the usual copy-on-write into the other snapshots). The merge thread repeats one step until the
// store is empty:
//   1. the store names its newest run of exceptions (consecutive in old and new chunks, within one area);
//   2. the other snapshots copy those origin chunks first (they must keep their own content);
//   3. new writes to the run are held and writes in flight to it drain;
//   4. kcopyd copies the run from the COW store to the origin, and the origin is flushed;
//   5. the store clears the run's records durably; the run leaves the exception table; held writes go again.
// A crash anywhere in a step repeats that step on resume, which is harmless: the copy is idempotent.
#include <future>

#include "engine/fan_in.h"
#include "engine/sync_io.h"
#include "snapshot/origin.h"

namespace kcopyfs {

Status Origin::start_merge(const std::string& name, std::function<void(Status)> on_done) {
  std::unique_lock lock(mutex_);
  // A previous merge's thread first (it has finished: merging_ is null), before the writes are drained: the
  // join lets go of the mutex, and writes that came in meanwhile would go on unmerged.
  while (merging_ == nullptr && merge_thread_.joinable()) {
    lock.unlock();
    merge_thread_.join();
    lock.lock();
  }
  Snapshot* s = nullptr;
  for (auto& p : snapshots_) {
    if (p->name() == name) s = p.get();
  }
  if (s == nullptr) return Error::invalid("no snapshot " + name);
  if (merging_ != nullptr)
    return Error::invalid("snapshot " + merging_->name() + " is already merging into this origin");
  if (s->store_->type_letter() != 'P')
    return Error::invalid("snapshot " + name + " is transient and cannot be merged");
  if (!s->valid_) return Error::invalid("snapshot " + name + " is invalid and cannot be merged");
  // Writes in flight were issued against the un-merged origin, and writes to the snapshot must be in its
  // image before the merge reads it: let them finish before reads and writes reroute.
  holding_writes_ = true;
  changed_.wait(lock,
                [&] { return writes_in_flight_ == 0 && s->writes_in_flight_ == 0 && s->pending_.empty(); });
  holding_writes_ = false;
  merging_ = s;
  merge_active_.store(true, std::memory_order_release);
  merge_total_ = s->table_.size();
  merge_stop_ = false;
  merge_done_ = std::move(on_done);
  Actions released;
  released.swap(held_writes_);
  merge_thread_ = std::thread([this] { merge_loop(); });
  lock.unlock();
  run(released);
  return {};
}

Origin::MergeProgress Origin::merge_progress() const {
  std::lock_guard lock(mutex_);
  MergeProgress p;
  if (merging_ == nullptr) return p;
  p.snapshot = merging_->name();
  p.total_chunks = merge_total_;
  p.done_chunks = merge_total_ - std::min(merge_total_, merging_->table_.size());
  return p;
}

void Origin::stop_merge() {
  {
    std::lock_guard lock(mutex_);
    merge_stop_ = true;
  }
  if (merge_thread_.joinable()) merge_thread_.join();
}

void Origin::merge_loop() {
  Status result;
  Snapshot* s;
  {
    std::lock_guard lock(mutex_);
    s = merging_;
  }
  for (;;) {
    {
      std::lock_guard lock(mutex_);
      if (merge_stop_) return;  // unmount: the merge resumes when the snapshot is attached again
    }
    Exception last{};
    const int n = s->store_->prepare_merge(last);
    if (n == 0) break;
    if (n < 0) {
      result = Error::from_errno(-n, "merge of " + s->name() + ": read error in the exception store");
      break;
    }
    result = merge_step(*s, last, static_cast<unsigned>(n));
    if (!result) break;
  }
  std::function<void(Status)> done;
  std::unique_ptr<Snapshot> finished;
  {
    std::unique_lock lock(mutex_);
    done = std::move(merge_done_);
    if (result) {
      // Merged: the snapshot is gone, and the origin is served directly again.
      for (auto it = snapshots_.begin(); it != snapshots_.end(); ++it) {
        if (it->get() == s) {
          finished = std::move(*it);
          snapshots_.erase(it);
          break;
        }
      }
      merging_ = nullptr;
      merge_active_.store(false, std::memory_order_release);
      // Reads and flushes that went to its COW device finish before the device is closed.
      changed_.wait(lock, [&] { return merge_cow_io_ == 0; });
    } else {
      // The kernel keeps serving the origin through the merging target; so do we, with "Merge failed".
      s->merge_failed_ = true;
    }
  }
  finished.reset();
  if (done) done(result);
}

Status Origin::merge_step(Snapshot& s, const Exception& last, unsigned n) {
  const ChunkGeometry& g = s.geometry_;
  const ChunkIndex old_first(last.old_chunk.value() + 1 - n);
  const ChunkIndex new_first(last.new_chunk.value() + 1 - n);
  const Sector start = g.start_of(old_first);
  const Sector count = min(Sector(uint64_t{n} << g.shift()), device_->size_in_sectors() - start);

  // 2. The other snapshots keep their copy of the origin chunks about to be overwritten.
  // Promises are shared with the callbacks: the other thread may still be inside set_value() when get()
  // returns.
  auto protected_promise = std::make_shared<std::promise<void>>();
  Actions after;
  bool waiting;
  {
    std::lock_guard lock(mutex_);
    // 3. From here on, new writes to the run wait for the step.
    merge_first_ = old_first.value();
    merge_end_ = old_first.value() + n;
    waiting = protect_range_locked(
        start, start + count - Sector(1), [protected_promise] { protected_promise->set_value(); }, after);
  }
  run(after);
  if (waiting) protected_promise->get_future().wait();
  {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] {
      for (uint64_t c = merge_first_; c < merge_end_; ++c) {
        if (merge_cow_writes_.count(c)) return false;
      }
      return true;
    });
  }

  // 4. Copy back and make it durable on the origin.
  auto copied = std::make_shared<std::promise<bool>>();
  Region from{s.cow_.get(), g.start_of(new_first), count};
  Region to{device_.get(), start, count};
  auto st = kcopyd_->copy(
      from, std::span(&to, 1), CopyFlags{},
      [copied](bool read_error, uint32_t write_errors) { copied->set_value(!read_error && !write_errors); });
  Status result;
  if (!st) {
    result = st;
  } else if (!copied->get_future().get()) {
    result = Error::from_errno(
        EIO, "merge of " + s.name() + ": copying chunks back to " + device_->path() + " failed");
  } else if (auto ec = flush_sync(*device_)) {
    result = Error::from_errno(ec.value(),
                               "merge of " + s.name() + ": flush after merge failed on " + device_->path());
  } else {
    // 5. Forget the run durably, then in memory.
    auto committed = std::make_shared<std::promise<bool>>();
    s.store_->commit_merge(n, [committed](bool ok) { committed->set_value(ok); });
    if (!committed->get_future().get())
      result = Error::from_errno(EIO, "merge of " + s.name() + ": clearing merged records failed");
  }
  Actions released;
  {
    std::lock_guard lock(mutex_);
    if (result) {
      for (uint64_t c = merge_end_; c-- > merge_first_;) s.table_.remove(ChunkIndex(c));
    }
    merge_first_ = merge_end_ = 0;
    released.swap(held_for_merge_);
  }
  run(released);
  return result;
}

void Origin::write_during_merge_locked(const std::shared_ptr<Write>& w, Actions& after) {
  Snapshot& m = *merging_;
  const ChunkGeometry& g = m.geometry_;
  const uint64_t chunk_bytes = g.chunk_bytes().value();
  const uint64_t begin = w->offset.value(), end = begin + w->buffer.size();
  const uint64_t first_chunk = begin / chunk_bytes, last_chunk = (end - 1) / chunk_bytes;
  if (first_chunk < merge_end_ && merge_first_ <= last_chunk) {
    // Part of the write lands on the run being copied back: it goes once the step is done.
    held_for_merge_.push_back([this, w] { write(w->offset, w->buffer, std::move(w->done), w->fixed); });
    return;
  }
  // Pieces: runs of chunks that go to the merging COW store (an exception still unmerged) or to the origin.
  struct Piece {
    bool to_cow;
    uint64_t device_offset;
    uint64_t begin, end;  // in the view
    std::vector<uint64_t> chunks;
  };
  std::vector<Piece> pieces;
  for (uint64_t pos = begin; pos < end;) {
    const uint64_t c = pos / chunk_bytes;
    const uint64_t piece_end = std::min(end, (c + 1) * chunk_bytes);
    auto cow = m.table_.lookup(ChunkIndex(c));
    const uint64_t dev = cow ? cow->value() * chunk_bytes + pos % chunk_bytes : pos;
    Piece* lastp = pieces.empty() ? nullptr : &pieces.back();
    if (lastp && lastp->to_cow == cow.has_value() &&
        lastp->device_offset + (lastp->end - lastp->begin) == dev) {
      lastp->end = piece_end;
    } else {
      pieces.push_back(Piece{cow.has_value(), dev, pos, piece_end, {}});
    }
    if (cow) {
      pieces.back().chunks.push_back(c);
      ++merge_cow_writes_[c];
    }
    pos = piece_end;
  }
  auto fan = std::make_shared<FanIn>(static_cast<unsigned>(pieces.size()), std::move(w->done));
  for (Piece& p : pieces) {
    auto data = w->buffer.subspan(p.begin - begin, p.end - p.begin);
    if (p.to_cow) {
      after.push_back([this, &m, data, dev = p.device_offset, chunks = p.chunks, fan] {
        m.cow_->write(Bytes(dev), data, [this, chunks, fan](std::error_code ec) {
          {
            std::lock_guard lock(mutex_);
            for (uint64_t c : chunks) {
              auto it = merge_cow_writes_.find(c);
              if (--it->second == 0) merge_cow_writes_.erase(it);
            }
            changed_.notify_all();
          }
          fan->arrive(ec);
        });
      });
    } else {
      auto sub = std::make_shared<Write>();
      sub->offset = Bytes(p.begin);
      sub->buffer = data;
      sub->done = [fan](std::error_code ec) { fan->arrive(ec); };
      ++writes_in_flight_;
      const Sector first = to_sectors(Bytes(p.begin));
      const Sector last = to_sectors(Bytes(p.end)) - Sector(1);
      if (!protect_range_locked(
              first, last, [this, sub] { issue_device_write(sub); }, after))
        after.push_back([this, sub] { issue_device_write(sub); });
    }
  }
}

void Origin::read_during_merge(Bytes offset, std::span<std::byte> buffer, IoCallback done) {
  struct Piece {
    bool from_cow;
    uint64_t device_offset;
    uint64_t begin, end;
  };
  std::vector<Piece> pieces;
  Snapshot* m;
  {
    std::lock_guard lock(mutex_);
    m = merging_;
    if (m == nullptr) {
      // The merge ended between the check and the lock.
      pieces.push_back(Piece{false, offset.value(), offset.value(), offset.value() + buffer.size()});
    } else {
      const uint64_t chunk_bytes = m->geometry_.chunk_bytes().value();
      const uint64_t begin = offset.value(), end = begin + buffer.size();
      for (uint64_t pos = begin; pos < end;) {
        const uint64_t c = pos / chunk_bytes;
        const uint64_t piece_end = std::min(end, (c + 1) * chunk_bytes);
        auto cow = m->table_.lookup(ChunkIndex(c));
        const uint64_t dev = cow ? cow->value() * chunk_bytes + pos % chunk_bytes : pos;
        Piece* lastp = pieces.empty() ? nullptr : &pieces.back();
        if (lastp && lastp->from_cow == cow.has_value() &&
            lastp->device_offset + (lastp->end - lastp->begin) == dev)
          lastp->end = piece_end;
        else
          pieces.push_back(Piece{cow.has_value(), dev, pos, piece_end});
        pos = piece_end;
      }
      for (const Piece& p : pieces) merge_cow_io_ += p.from_cow ? 1 : 0;
    }
  }
  // A chunk read from the COW store keeps its data there until after the step that merges it has cleared the
  // records; the COW device itself stays open until the reads counted in merge_cow_io_ are done.
  auto fan = std::make_shared<FanIn>(static_cast<unsigned>(pieces.size()), std::move(done));
  for (const Piece& p : pieces) {
    auto span = buffer.subspan(p.begin - offset.value(), p.end - p.begin);
    if (!p.from_cow) {
      device_->read(Bytes(p.device_offset), span, [fan](std::error_code ec) { fan->arrive(ec); });
      continue;
    }
    m->cow_->read(Bytes(p.device_offset), span, [this, fan](std::error_code ec) {
      {
        std::lock_guard lock(mutex_);
        if (--merge_cow_io_ == 0) changed_.notify_all();
      }
      fan->arrive(ec);
    });
  }
}

}  // namespace kcopyfs
