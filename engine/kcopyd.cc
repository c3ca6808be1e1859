#include "engine/kcopyd.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <optional>

#include "engine/file_device.h"
#include "engine/io_ring.h"

namespace kcopyfs {

namespace {
// Zeroing needs no buffer, so its pieces may be larger than a sub-job.
constexpr Sector kMaxZeroPiece = Sector(256 * 1024);  // 128 MiB
constexpr unsigned kOffloadThreads = 4;

uint32_t all_dests_mask(unsigned n) { return n >= 32 ? ~0u : ((1u << n) - 1); }
}  // namespace

struct KcopydClient::Job {
  bool zero = false;
  Region source;
  // Copies: the sources (one for copy(), several for a gather), and where each starts in the job.
  std::vector<Region> sources;
  std::vector<Sector> source_offsets;
  std::array<Region, kMaxDestinations> dests{};
  unsigned num_dests = 0;
  CopyFlags flags;
  CopyCallback callback;
  Sector total;
  Sector claimed;
  Sector align = Sector(1);  // pieces start and end on the largest logical block of the devices
  unsigned active = 0;
  bool read_error = false;
  uint32_t write_errors = 0;
  bool offload = false;
  Sector seq_next;                   // write_seq: the offset whose write goes next
  std::vector<SubJob*> seq_waiting;  // write_seq: sub-jobs ready to write out of turn
  std::list<std::unique_ptr<Job>>::iterator self;
};

struct KcopydClient::SubJob {
  enum class Kind { copy, zero, offload };
  enum class Phase { read, write, offload };
  Job* job = nullptr;
  Sector offset;  // relative to the job's start
  Sector count;
  Kind kind = Kind::copy;
  Phase phase = Phase::read;
  bool may_unmap = false;
  bool skip_write = false;  // write_seq: a failed read keeps its turn but writes nothing
  std::optional<PoolBuffer> buffer;
  unsigned throttle_waits = 0;
  Throttle::Clock::time_point not_before{};
  bool throttle_accounted = false;
  unsigned writes_left = 0;
  uint32_t write_errors = 0;
  unsigned reads_left = 0;  // reads of this sub-job still in flight (several for a gather)
  bool read_failed = false;
};

// A copy sub-job reads one piece per source its range [offset, offset + count) overlaps, in source order.
size_t KcopydClient::first_source(const SubJob& sub) {
  const auto& starts = sub.job->source_offsets;
  return static_cast<size_t>(std::upper_bound(starts.begin(), starts.end(), sub.offset) - starts.begin()) - 1;
}

unsigned KcopydClient::read_pieces(const SubJob& sub) {
  const Job& job = *sub.job;
  const Sector end = sub.offset + sub.count;
  size_t i = first_source(sub);
  unsigned n = 0;
  for (; i < job.sources.size() && job.source_offsets[i] < end; ++i) ++n;
  return n;
}

std::pair<Sector, Sector> KcopydClient::read_piece(const SubJob& sub, unsigned piece) {
  const Job& job = *sub.job;
  const Sector end = sub.offset + sub.count;
  const size_t i = first_source(sub) + piece;
  return {std::max(sub.offset, job.source_offsets[i]),
          min(end, job.source_offsets[i] + job.sources[i].count)};
}

struct KcopydClient::Event {
  enum class Kind { job, read_done, write_done, offload_done };
  Kind kind = Kind::job;
  std::unique_ptr<Job> job;
  SubJob* sub = nullptr;
  unsigned dest = 0;
  int err = 0;
};

Result<std::unique_ptr<KcopydClient>> KcopydClient::create(const KcopydOptions& options) {
  if (options.num_pages == 0) return Error::invalid("kcopyd: num_pages must be at least 1");
  if (options.sub_job_size.value() == 0 || options.max_sub_jobs_in_flight == 0)
    return Error::invalid("kcopyd: sub-job size and sub-jobs in flight must be at least 1");
  IoRing* ring = options.ring;
  if (ring == nullptr) {
    auto shared = IoRing::shared();
    if (!shared) return shared.error();
    ring = shared.value();
  }
  KcopydOptions o = options;
  o.ring = ring;
  return std::unique_ptr<KcopydClient>(new KcopydClient(o));
}

KcopydClient::KcopydClient(const KcopydOptions& options)
    : sub_job_size_(
          min(options.sub_job_size, Sector(uint64_t{options.num_pages} * (kPageSize / kSectorSize)))),
      max_in_flight_(options.max_sub_jobs_in_flight),
      throttle_(options.throttle),
      allow_offload_(options.allow_offload),
      pool_(options.num_pages, options.ring) {
  worker_ = std::thread([this] { worker_loop(); });
}

KcopydClient::~KcopydClient() {
  {
    std::lock_guard lock(mutex_);
    destroying_ = true;
  }
  wake_.notify_one();
  worker_.join();
  {
    std::lock_guard lock(offload_mutex_);
    offload_stop_ = true;
  }
  offload_wake_.notify_all();
  for (auto& t : offload_threads_) t.join();
}

Status KcopydClient::copy(const Region& from, std::span<const Region> dests, CopyFlags flags,
                          CopyCallback callback) {
  return submit(std::span<const Region>(&from, 1), dests, flags, std::move(callback));
}

Status KcopydClient::copy_gather(std::span<const Region> sources, std::span<const Region> dests,
                                 CopyFlags flags, CopyCallback callback) {
  if (sources.empty()) return Error::invalid("kcopyd: a gather copy needs at least one source");
  if (flags.sparse || flags.write_seq)
    return Error::invalid("kcopyd: a gather copy takes neither sparse nor write_seq");
  return submit(sources, dests, flags, std::move(callback));
}

Status KcopydClient::zero(std::span<const Region> dests, CopyFlags flags, CopyCallback callback) {
  return submit({}, dests, flags, std::move(callback));
}

Status KcopydClient::submit(std::span<const Region> from, std::span<const Region> dests, CopyFlags flags,
                            CopyCallback callback) {
  if (dests.empty() || dests.size() > kMaxDestinations)
    return Error::invalid("kcopyd: a job takes 1 to 8 destinations, not " + std::to_string(dests.size()));
  auto job = std::make_unique<Job>();
  job->zero = from.empty();
  job->total = dests[0].count;
  if (!from.empty()) {
    job->total = Sector(0);
    for (const Region& r : from) job->total += r.count;
  }
  uint32_t align_bytes = kSectorSize;
  auto check = [&](const Region& r, Sector count, const char* what) -> Status {
    if (r.device == nullptr) return Error::invalid(std::string("kcopyd: ") + what + " has no device");
    const uint64_t end = r.start.value() + count.value();
    if (end < r.start.value() || end > r.device->size_in_sectors().value())
      return Error::invalid(std::string("kcopyd: ") + what + " range ends beyond " + r.device->path());
    const uint32_t lbs = r.device->logical_block_size();
    const uint64_t lbs_sectors = lbs / kSectorSize;
    if (r.start.value() % lbs_sectors != 0 || count.value() % lbs_sectors != 0)
      return Error::invalid(std::string("kcopyd: ") + what + " is not aligned to the logical block size of " +
                            r.device->path());
    align_bytes = std::max(align_bytes, lbs);
    return {};
  };
  for (const Region& r : from) {
    if (auto s = check(r, r.count, "source"); !s) return s;
  }
  if (!from.empty()) {
    // sources are what reads use; source (the whole job for copy(), the first device for a gather) is what
    // sparse copies and offload look at.
    job->source = Region{from[0].device, from[0].start, job->total};
    Sector at(0);
    for (const Region& r : from) {
      job->sources.push_back(r);
      job->source_offsets.push_back(at);
      at += r.count;
    }
  }
  for (size_t i = 0; i < dests.size(); ++i) {
    if (auto s = check(dests[i], job->total, "destination"); !s) return s;
    if (dests[i].device->read_only())
      return Error::invalid("kcopyd: destination " + dests[i].device->path() + " is read-only");
    job->dests[i] = dests[i];
  }
  job->num_dests = static_cast<unsigned>(dests.size());
  job->flags = flags;
  if (job->flags.write_seq) job->flags.ignore_error = false;
  job->callback = std::move(callback);
  job->align = Sector(align_bytes / kSectorSize);

  Event e;
  e.kind = Event::Kind::job;
  e.job = std::move(job);
  {
    std::lock_guard lock(mutex_);
    if (destroying_ && outstanding_ == 0)
      return Error(std::error_code(ESHUTDOWN, std::generic_category()), "kcopyd: client is being destroyed");
    ++outstanding_;
    inbox_.push_back(std::move(e));
  }
  wake_.notify_one();
  return {};
}

void KcopydClient::post(Event event) {
  // Notify under the lock: once the worker sees this (possibly last) event, the client may be destroyed, so
  // the I/O thread must not touch wake_ after releasing mutex_.
  std::lock_guard lock(mutex_);
  inbox_.push_back(std::move(event));
  wake_.notify_one();
}

void KcopydClient::worker_loop() {
  std::vector<Event> events;
  for (;;) {
    {
      std::unique_lock lock(mutex_);
      auto ready = [&] { return !inbox_.empty() || (destroying_ && outstanding_ == 0); };
      if (ready_.empty()) {
        wake_.wait(lock, ready);
      } else {
        // Everything left in ready_ waits for the throttle: sleep until the earliest of them may go.
        auto deadline = (*std::min_element(ready_.begin(), ready_.end(), [](SubJob* a, SubJob* b) {
                          return a->not_before < b->not_before;
                        }))->not_before;
        wake_.wait_until(lock, deadline, ready);
      }
      if (inbox_.empty() && destroying_ && outstanding_ == 0) return;
      events.swap(inbox_);
    }
    for (Event& e : events) {
      switch (e.kind) {
        case Event::Kind::job:
          start_job(std::move(e.job));
          break;
        case Event::Kind::read_done:
          on_read_done(e.sub, e.dest, e.err);
          break;
        case Event::Kind::write_done:
          on_write_done(e.sub, e.dest, e.err);
          break;
        case Event::Kind::offload_done:
          on_offload_done(e.sub, e.err);
          break;
      }
    }
    events.clear();
    grant_buffers();
    issue_ready(Throttle::Clock::now());

    // Callbacks last, one at a time, on this thread: they never overlap.
    auto finished = std::move(finished_);
    finished_.clear();
    for (auto& [job, result] : finished) {
      job->callback(result.first, result.second);
      jobs_.erase(job->self);
      jobs_completed_.fetch_add(1, std::memory_order_relaxed);
      std::lock_guard lock(mutex_);
      --outstanding_;
    }
  }
}

void KcopydClient::start_job(std::unique_ptr<Job> owned) {
  jobs_.push_back(std::move(owned));
  Job& job = *jobs_.back();
  job.self = std::prev(jobs_.end());
  if (job.total.value() == 0) {
    finished_.push_back({&job, {false, 0}});
    return;
  }
  // Offloaded pieces finish in any order, so write_seq jobs never offload.
  if (!job.zero && allow_offload_ && job.num_dests == 1 && !job.flags.write_seq && job.sources.size() == 1) {
    FileDevice* src = job.source.device->as_file();
    FileDevice* dst = job.dests[0].device->as_file();
    job.offload = src != nullptr && dst != nullptr && src->filesystem() == dst->filesystem();
  }
  for (unsigned i = 0; i < max_in_flight_; ++i) {
    if (!claim_piece(job)) break;
  }
}

// The kernel's segment_complete(): a free slot of the job takes the next piece, unless an error (without
// ignore_error) stops the job from starting new ones.
bool KcopydClient::claim_piece(Job& job) {
  if (job.claimed == job.total) return false;
  if (!job.flags.ignore_error && (job.read_error || job.write_errors != 0)) return false;
  const Sector remaining = job.total - job.claimed;
  auto sub = std::make_unique<SubJob>();
  sub->job = &job;
  sub->offset = job.claimed;
  Sector count = min(remaining, sub_job_size_);
  if (job.zero) {
    sub->kind = SubJob::Kind::zero;
    count = min(remaining, kMaxZeroPiece);
  } else {
    sub->kind = job.offload ? SubJob::Kind::offload : SubJob::Kind::copy;
    if (job.flags.sparse) {
      const Extent e = job.source.device->extent_at(to_bytes(job.source.start + job.claimed));
      const uint64_t a = job.align.value();
      uint64_t len = to_sectors(e.length).value();
      if (!e.data) len = len / a * a;  // a hole shrinks to whole blocks; the rest is read as data
      if (!e.data && len > 0) {
        sub->kind = SubJob::Kind::zero;
        sub->may_unmap = true;
        count = min(remaining, min(Sector(len), kMaxZeroPiece));
      } else {
        len = std::max<uint64_t>((len + a - 1) / a * a, a);
        count = min(count, Sector(len));
      }
    }
  }
  sub->count = count;
  job.claimed += count;
  ++job.active;
  unsigned peak = peak_sub_jobs_.load(std::memory_order_relaxed);
  while (job.active > peak && !peak_sub_jobs_.compare_exchange_weak(peak, job.active)) {
  }
  enqueue(sub.release());
  return true;
}

void KcopydClient::enqueue(SubJob* sub) {
  switch (sub->kind) {
    case SubJob::Kind::copy:
      sub->phase = SubJob::Phase::read;
      waiting_buffers_.push_back(sub);
      break;
    case SubJob::Kind::zero:
      sub->phase = SubJob::Phase::write;
      ready_.push_back(sub);
      break;
    case SubJob::Kind::offload:
      sub->phase = SubJob::Phase::offload;
      ready_.push_back(sub);
      break;
  }
}

void KcopydClient::grant_buffers() {
  while (!waiting_buffers_.empty()) {
    SubJob* sub = waiting_buffers_.front();
    const uint64_t bytes = to_bytes(sub->count).value();
    const auto pages = static_cast<uint32_t>((bytes + kPageSize - 1) / kPageSize);
    auto buffer = pool_.allocate(pages);
    if (!buffer) break;  // first come, first served: later ones wait behind it
    sub->buffer = *buffer;
    peak_pages_.store(pool_.peak_pages_in_use(), std::memory_order_relaxed);
    waiting_buffers_.pop_front();
    ready_.push_back(sub);
  }
}

void KcopydClient::issue_ready(Throttle::Clock::time_point now) {
  std::deque<SubJob*> waiting;
  while (!ready_.empty()) {
    SubJob* sub = ready_.front();
    ready_.pop_front();
    Job& job = *sub->job;
    if (sub->phase == SubJob::Phase::write && job.flags.write_seq) {
      if (sub->offset != job.seq_next) {
        job.seq_waiting.push_back(sub);
        continue;
      }
      if (sub->skip_write || job.write_errors != 0) {
        // The kernel fails every later write of a WRITE_SEQ job once one has failed.
        if (!sub->skip_write) sub->write_errors = all_dests_mask(job.num_dests);
        sub->writes_left = 0;
        on_write_done(sub, 0, 0);
        continue;
      }
    }
    if (sub->not_before > now) {
      waiting.push_back(sub);
      continue;
    }
    if (throttle_) {
      const bool counts_bytes = sub->phase != SubJob::Phase::write || sub->kind == SubJob::Kind::zero;
      const uint64_t bytes = counts_bytes ? to_bytes(sub->count).value() : 0;
      const auto when = throttle_->try_start(bytes, sub->throttle_waits, now);
      if (when > now) {
        ++sub->throttle_waits;
        sub->not_before = when;
        waiting.push_back(sub);
        continue;
      }
      sub->throttle_waits = 0;
      sub->throttle_accounted = true;
    }
    issue(sub);
  }
  ready_ = std::move(waiting);
}

void KcopydClient::issue(SubJob* sub) {
  Job& job = *sub->job;
  switch (sub->phase) {
    case SubJob::Phase::read: {
      // One read per source overlapping [offset, offset + count) of the job (several for a gather), each
      // into its place in the buffer.
      const unsigned n = read_pieces(*sub);
      const size_t first = first_source(*sub);
      sub->reads_left = n;
      for (unsigned p = 0; p < n; ++p) {
        const auto [from, to] = read_piece(*sub, p);
        const size_t i = first + p;
        const Region& src = job.sources[i];
        src.device->read(
            to_bytes(src.start + (from - job.source_offsets[i])),
            sub->buffer->bytes.subspan(to_bytes(from - sub->offset).value(), to_bytes(to - from).value()),
            completion(true, sub, p), sub->buffer->fixed);
      }
      break;
    }
    case SubJob::Phase::write:
      issue_writes(sub);
      break;
    case SubJob::Phase::offload: {
      {
        std::lock_guard lock(offload_mutex_);
        offload_queue_.push_back(sub);
        if (offload_threads_.empty()) {
          for (unsigned i = 0; i < kOffloadThreads; ++i)
            offload_threads_.emplace_back([this] { offload_loop(); });
        }
      }
      offload_wake_.notify_one();
      break;
    }
  }
}

IoCallback KcopydClient::completion(bool read, SubJob* sub, unsigned index) {
  return [this, read, sub, index](std::error_code ec) {
    Event e;
    e.kind = read ? Event::Kind::read_done : Event::Kind::write_done;
    e.sub = sub;
    e.dest = index;
    e.err = ec.value();
    post(std::move(e));
  };
}

void KcopydClient::issue_writes(SubJob* sub) {
  Job& job = *sub->job;
  const Bytes bytes = to_bytes(sub->count);
  sub->writes_left = job.num_dests;
  for (unsigned i = 0; i < job.num_dests; ++i) {
    IoCallback done = completion(false, sub, i);
    const Region& d = job.dests[i];
    if (sub->kind == SubJob::Kind::zero) {
      d.device->write_zeroes(to_bytes(d.start + sub->offset), bytes, sub->may_unmap, std::move(done));
    } else {
      d.device->write(to_bytes(d.start + sub->offset), sub->buffer->bytes.first(bytes.value()),
                      std::move(done), sub->buffer->fixed);
    }
  }
}

void KcopydClient::on_read_done(SubJob* sub, unsigned piece, int err) {
  Job& job = *sub->job;
  if (err != 0) {
    sub->read_failed = true;
    if (job.flags.ignore_error) {
      // Zero just the part this read was for: in a gather the rest of the buffer holds good data.
      const auto [from, to] = read_piece(*sub, piece);
      std::memset(sub->buffer->bytes.data() + to_bytes(from - sub->offset).value(), 0,
                  to_bytes(to - from).value());
    }
  }
  if (--sub->reads_left > 0) return;
  if (sub->throttle_accounted) {
    throttle_->finish(Throttle::Clock::now());
    sub->throttle_accounted = false;
  }
  sub->phase = SubJob::Phase::write;
  if (sub->read_failed) {
    job.read_error = true;
    if (!job.flags.ignore_error) {
      if (!job.flags.write_seq) return finish_sub(sub);
      sub->skip_write = true;  // keep its place in the write order
    }
  } else {
    bytes_read_.fetch_add(to_bytes(sub->count).value(), std::memory_order_relaxed);
  }
  ready_.push_back(sub);
}

void KcopydClient::on_write_done(SubJob* sub, unsigned dest, int err) {
  Job& job = *sub->job;
  if (err != 0) sub->write_errors |= 1u << dest;
  if (sub->writes_left > 0 && --sub->writes_left > 0) return;
  if (sub->throttle_accounted) {
    throttle_->finish(Throttle::Clock::now());
    sub->throttle_accounted = false;
  }
  if (sub->kind == SubJob::Kind::zero && !sub->skip_write)
    bytes_zeroed_.fetch_add(to_bytes(sub->count).value() * job.num_dests, std::memory_order_relaxed);
  job.write_errors |= sub->write_errors;
  if (job.flags.write_seq) {
    job.seq_next += sub->count;
    release_write_seq_waiters(job);
  }
  finish_sub(sub);
}

void KcopydClient::release_write_seq_waiters(Job& job) {
  auto it = std::find_if(job.seq_waiting.begin(), job.seq_waiting.end(),
                         [&](SubJob* s) { return s->offset == job.seq_next; });
  if (it == job.seq_waiting.end()) return;
  ready_.push_back(*it);
  job.seq_waiting.erase(it);
}

void KcopydClient::on_offload_done(SubJob* sub, int err) {
  Job& job = *sub->job;
  if (sub->throttle_accounted) {
    throttle_->finish(Throttle::Clock::now());
    sub->throttle_accounted = false;
  }
  if (err == 0) {
    bytes_offloaded_.fetch_add(to_bytes(sub->count).value(), std::memory_order_relaxed);
    return finish_sub(sub);
  }
  // Redo the piece by read and write, which attributes any error to the source or the destination; stop
  // offloading this job, since the filesystem refused or failed once already.
  job.offload = false;
  sub->kind = SubJob::Kind::copy;
  enqueue(sub);
}

void KcopydClient::finish_sub(SubJob* owned) {
  std::unique_ptr<SubJob> sub(owned);
  Job& job = *sub->job;
  if (sub->buffer) pool_.release(*sub->buffer);
  --job.active;
  if (claim_piece(job)) return;
  if (job.active == 0) finished_.push_back({&job, {job.read_error, job.write_errors}});
}

void KcopydClient::offload_loop() {
  for (;;) {
    SubJob* sub = nullptr;
    {
      std::unique_lock lock(offload_mutex_);
      offload_wake_.wait(lock, [&] { return offload_stop_ || !offload_queue_.empty(); });
      if (offload_queue_.empty()) return;
      sub = offload_queue_.front();
      offload_queue_.pop_front();
    }
    const Job& job = *sub->job;
    FileDevice* src = job.source.device->as_file();
    FileDevice* dst = job.dests[0].device->as_file();
    auto src_off = static_cast<loff_t>(to_bytes(job.source.start + sub->offset).value());
    auto dst_off = static_cast<loff_t>(to_bytes(job.dests[0].start + sub->offset).value());
    uint64_t left = to_bytes(sub->count).value();
    int err = 0;
    // A reflink shares the extents outright where the filesystem can (btrfs, XFS); ext4 refuses it.
    constexpr uint64_t kCloneAlign = 4096;
    bool cloned = false;
    if ((src_off | dst_off | left) % kCloneAlign == 0 && !clone_refused_.load(std::memory_order_relaxed)) {
      file_clone_range r{};
      r.src_fd = src->fd();
      r.src_offset = static_cast<uint64_t>(src_off);
      r.src_length = left;
      r.dest_offset = static_cast<uint64_t>(dst_off);
      cloned = ::ioctl(dst->fd(), FICLONERANGE, &r) == 0;
      // A filesystem that cannot share extents (ext4) says so at once; don't ask again for every piece.
      if (!cloned && (errno == EOPNOTSUPP || errno == ENOTTY || errno == EXDEV || errno == EINVAL))
        clone_refused_.store(true, std::memory_order_relaxed);
    }
    while (!cloned && left > 0) {
      ssize_t n = ::copy_file_range(src->fd(), &src_off, dst->fd(), &dst_off, left, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        err = n < 0 ? errno : EIO;
        break;
      }
      left -= static_cast<uint64_t>(n);
    }
    Event e;
    e.kind = Event::Kind::offload_done;
    e.sub = sub;
    e.err = err;
    post(std::move(e));
  }
}

KcopydStats KcopydClient::stats() const {
  KcopydStats s;
  s.pool_pages = pool_.capacity_pages();
  s.peak_pages_in_use = peak_pages_.load(std::memory_order_relaxed);
  s.peak_sub_jobs_of_one_job = peak_sub_jobs_.load(std::memory_order_relaxed);
  s.jobs_completed = jobs_completed_.load(std::memory_order_relaxed);
  s.bytes_read = bytes_read_.load(std::memory_order_relaxed);
  s.bytes_offloaded = bytes_offloaded_.load(std::memory_order_relaxed);
  s.bytes_zeroed = bytes_zeroed_.load(std::memory_order_relaxed);
  return s;
}

}  // namespace kcopyfs
