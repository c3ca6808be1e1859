#include "snapshot/persistent_store.h"

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <new>
#include <thread>
#include <unordered_map>

#include "engine/aligned_memory.h"
#include "engine/file_device.h"
#include "engine/io_ring.h"
#include "engine/sync_io.h"
#include "snapshot/persistent_format.h"

namespace kcopyfs {

namespace fmt = cow_format;

namespace {

// A zero-filled buffer that O_DIRECT accepts as it is (no bounce copy in the device).
AlignedBytes allocate(const BlockDevice& dev, Bytes length) {
  AlignedBytes b = allocate_aligned(io_alignment(dev), length.value());
  std::memset(b.get(), 0, length.value());
  return b;
}

Error cow_fault(const BlockDevice& cow, const std::string& what) {
  return Error(std::make_error_code(std::errc::invalid_argument), "COW " + cow.path() + ": " + what);
}

Error cow_io_error(const BlockDevice& cow, std::error_code ec, const std::string& what) {
  return Error(ec, "COW " + cow.path() + ": " + what + ": " + ec.message());
}

// Completes a callback on an I/O completion thread without I/O of our own, as the ExceptionStore contract
// asks of results known at once (an invalid store, a refused merge).
void call_later(std::function<void()> fn) {
  auto ring = IoRing::shared();
  if (ring) {
    ring.value()->defer(std::move(fn));
    return;
  }
  // Unreachable in practice: a FileDevice cannot exist without the shared ring.
  std::thread(std::move(fn)).detach();
}

void encode_header(std::byte* chunk0, bool valid, Sector chunk_size) {
  fmt::store_le32(chunk0 + fmt::kMagicOffset, fmt::kMagic);
  fmt::store_le32(chunk0 + fmt::kValidOffset, valid ? 1 : 0);
  fmt::store_le32(chunk0 + fmt::kVersionOffset, fmt::kVersion);
  fmt::store_le32(chunk0 + fmt::kChunkSizeOffset, static_cast<uint32_t>(chunk_size.value()));
}

// Names a record by its number in on-disk order, as messages do: every area before the last one is full.
std::string where(uint64_t index, uint64_t epa) {
  return "record " + std::to_string(index % epa) + " of area " + std::to_string(index / epa);
}

// Reads the metadata areas ahead of the parser. The read-ahead grows by one area with each full area, so a
// small store costs a read or two and a large one keeps up to max_window_ reads in flight.
class AreaReader {
 public:
  AreaReader(BlockDevice& cow, Sector chunk_size, uint64_t cow_chunks)
      : cow_(cow), chunk_size_(chunk_size), chunk_bytes_(to_bytes(chunk_size)), cow_chunks_(cow_chunks) {
    // Enough in flight to hide the latency of the disk, bounded in memory (8 MiB) for large chunks.
    max_window_ = static_cast<size_t>(std::clamp<uint64_t>((8u << 20) / chunk_bytes_.value(), 4, 64));
    slots_.resize(max_window_);
    issue_up_to(0);
  }

  ~AreaReader() {
    std::unique_lock lock(mutex_);
    idle_.wait(lock, [this] { return in_flight_ == 0; });
  }

  bool exists(uint64_t area) const { return fmt::area_location(chunk_size_, area).value() < cow_chunks_; }

  // Waits for area `area` (which must exist) and returns its bytes, valid until the next call.
  Result<const std::byte*> get(uint64_t area) {
    // The areas after this one are needed if this one is full, which the parser learns only later.
    issue_up_to(area + std::min<uint64_t>(max_window_ - 1, area + 1));
    Slot& slot = slots_[area % max_window_];
    std::unique_lock lock(mutex_);
    idle_.wait(lock, [&] { return slot.done; });
    if (slot.error) {
      const ChunkIndex at = fmt::area_location(chunk_size_, area);
      return cow_io_error(
          cow_, slot.error,
          "read metadata area " + std::to_string(area) + " (chunk " + std::to_string(at.value()) + ")");
    }
    return static_cast<const std::byte*>(slot.buffer.get());
  }

 private:
  struct Slot {
    AlignedBytes buffer;
    bool done = false;
    std::error_code error;
  };

  // Issues reads for every area up to `last` not issued yet. Areas before the one being parsed are consumed,
  // so a window of max_window_ slots never reuses a slot still needed.
  void issue_up_to(uint64_t last) {
    for (; next_to_issue_ <= last && exists(next_to_issue_); ++next_to_issue_) {
      Slot& slot = slots_[next_to_issue_ % max_window_];
      if (!slot.buffer) slot.buffer = allocate(cow_, chunk_bytes_);  // a small store never fills the window
      {
        std::lock_guard lock(mutex_);
        slot.done = false;
        slot.error.clear();
        ++in_flight_;
      }
      const ChunkIndex at = fmt::area_location(chunk_size_, next_to_issue_);
      cow_.read(to_bytes(Sector(at.value() * chunk_size_.value())),
                std::span<std::byte>(slot.buffer.get(), chunk_bytes_.value()),
                [this, &slot](std::error_code ec) {
                  std::lock_guard lock(mutex_);
                  slot.done = true;
                  slot.error = ec;
                  --in_flight_;
                  idle_.notify_all();
                });
    }
  }

  BlockDevice& cow_;
  const Sector chunk_size_;
  const Bytes chunk_bytes_;
  const uint64_t cow_chunks_;
  size_t max_window_ = 1;
  uint64_t next_to_issue_ = 0;
  std::vector<Slot> slots_;

  std::mutex mutex_;
  std::condition_variable idle_;  // a read completed
  unsigned in_flight_ = 0;        // guarded by mutex_
};

// Finds the first record (in on-disk order) whose key repeats an earlier one. Only called once a repeat is
// known to exist, so the hash map costs nothing on the normal path.
template <class Key>
std::pair<uint64_t, uint64_t> first_repeat(const std::vector<Exception>& all, Key key) {
  std::unordered_map<uint64_t, uint64_t> seen;
  for (uint64_t i = 0; i < all.size(); ++i) {
    auto [it, inserted] = seen.emplace(key(all[i]), i);
    if (!inserted) return {it->second, i};
  }
  return {0, 0};
}

bool has_repeat(std::vector<uint64_t>& values) {
  std::sort(values.begin(), values.end());
  return std::adjacent_find(values.begin(), values.end()) != values.end();
}

}  // namespace

// A group of commits written by one area write.
struct CommitBatch {
  uint64_t area = 0;
  bool full = false;     // the area is complete: zero the next one on disk first
  bool preflush = true;  // flush before the area write: some of its records' data may not be durable yet
  AlignedBytes owned;    // a full area's own buffer; a partial batch writes from State::write_buffer
  std::byte* data = nullptr;
  std::vector<std::function<void(bool)>> callbacks;
};

struct PersistentStore::State {
  State(BlockDevice& device, Sector chunk_size)
      : cow(device),
        geometry(chunk_size),
        epa(fmt::exceptions_per_area(chunk_size)),
        chunk_bytes(to_bytes(chunk_size)),
        cow_chunks(device.size().value() / to_bytes(chunk_size).value()),
        area(allocate(device, chunk_bytes)),
        write_buffer(allocate(device, chunk_bytes)) {
    const auto zeros = zero_region();
    if (kPageSize % std::max<uint32_t>(device.memory_alignment(), 1) == 0 &&
        chunk_bytes.value() <= zeros.size()) {
      zero_chunk = zeros.data();
    } else {
      own_zero_chunk = allocate(device, chunk_bytes);
      zero_chunk = own_zero_chunk.get();
    }
  }

  Bytes offset_of(ChunkIndex c) const { return to_bytes(geometry.start_of(c)); }
  ChunkIndex area_location(uint64_t a) const { return fmt::area_location(geometry.chunk_size(), a); }
  bool is_metadata(ChunkIndex c) const { return fmt::is_metadata_chunk(geometry.chunk_size(), c); }
  std::span<const std::byte> chunk_span(const std::byte* p) const { return {p, chunk_bytes.value()}; }

  void io_done_locked() {
    if (--io_in_flight == 0) idle.notify_all();
  }

  // Moves the full current area into a batch of its own and starts the next area in memory.
  void seal_locked() {
    auto b = std::make_shared<CommitBatch>();
    b->area = current_area;
    b->full = true;
    b->owned = std::move(area);
    b->data = b->owned.get();
    b->callbacks = std::move(unwritten);
    unwritten.clear();
    sealed.push_back(std::move(b));
    area = allocate(cow, chunk_bytes);
    ++current_area;
    current_committed = 0;
  }

  // The next batch to write, oldest area first; nullptr when nothing waits. Marks the write as started.
  std::shared_ptr<CommitBatch> next_batch_locked() {
    std::shared_ptr<CommitBatch> b;
    if (!sealed.empty()) {
      b = std::move(sealed.front());
      sealed.pop_front();
    } else if (!unwritten.empty()) {
      b = std::make_shared<CommitBatch>();
      b->area = current_area;
      // A snapshot: commits arriving during the write keep filling `area` without tearing what is written.
      std::memcpy(write_buffer.get(), area.get(), chunk_bytes.value());
      b->data = write_buffer.get();
      // Commits whose data a completed flush already made durable need no flush before their records are
      // written. When some are, the batch takes only those (the oldest: unwritten is in arrival order) and
      // skips the pre-flush; the rest stay out of the written copy and wait for the next batch.
      const uint64_t first = commits_arrived - unwritten.size();
      const uint64_t covered =
          commits_flushed > first ? std::min<uint64_t>(commits_flushed - first, unwritten.size()) : 0;
      if (covered == 0) {
        b->callbacks = std::move(unwritten);
        unwritten.clear();
      } else {
        b->preflush = false;
        const uint64_t rest = unwritten.size() - covered;
        std::memset(write_buffer.get() + (current_committed - rest) * fmt::kRecordBytes, 0,
                    rest * fmt::kRecordBytes);
        b->callbacks.assign(std::make_move_iterator(unwritten.begin()),
                            std::make_move_iterator(unwritten.begin() + static_cast<ptrdiff_t>(covered)));
        unwritten.erase(unwritten.begin(), unwritten.begin() + static_cast<ptrdiff_t>(covered));
      }
    } else {
      return nullptr;
    }
    writing = true;
    ++io_in_flight;
    return b;
  }

  // A durable area write, preceded for a full area by zeroing the next one, so that on disk a full area is
  // always followed by a terminator.
  void run_batch(std::shared_ptr<CommitBatch> b) {
    State* s = this;
    auto write_area = [s, b] {
      s->write_durably(
          s->offset_of(s->area_location(b->area)), b->data,
          [s, b](std::error_code ec) { s->finish_batch(b, ec); }, b->preflush);
    };
    if (!b->full) return write_area();
    const ChunkIndex next = area_location(b->area + 1);
    if (next.value() >= cow_chunks) {
      // As in the kernel, whose zeroing write would fail here: the store cannot record a full last area.
      return call_later([s, b] { s->finish_batch(b, std::make_error_code(std::errc::no_space_on_device)); });
    }
    cow.write(offset_of(next), chunk_span(zero_chunk), [s, b, write_area](std::error_code ec) {
      if (ec) return s->finish_batch(b, ec);
      write_area();
    });
  }

  void finish_batch(const std::shared_ptr<CommitBatch>& b, std::error_code ec) {
    std::vector<std::function<void(bool)>> done = std::move(b->callbacks);
    std::vector<std::function<void(bool)>> failed;
    std::shared_ptr<CommitBatch> next;
    bool ok = false;
    {
      std::lock_guard lock(mutex);
      writing = false;
      if (ec) valid = false;
      ok = valid;
      if (ok) {
        next = next_batch_locked();
      } else {
        // Nothing more is written once invalid; everything queued learns it now.
        for (auto& q : sealed)
          for (auto& cb : q->callbacks) failed.push_back(std::move(cb));
        sealed.clear();
        for (auto& cb : unwritten) failed.push_back(std::move(cb));
        unwritten.clear();
      }
      io_done_locked();
    }
    // From here on `this` may only be used through `next`, which keeps the store alive (io_in_flight).
    if (next) run_batch(std::move(next));
    for (auto& cb : done) cb(ok);
    for (auto& cb : failed) cb(false);
  }

  // Flushes the COW device; once the flush succeeded, the data of every commit that arrived before it was
  // issued is durable (commits arrive after their data write completed).
  void flush_cow(std::function<void(std::error_code)> then) {
    uint64_t mark = 0;
    {
      std::lock_guard lock(mutex);
      mark = commits_arrived;
    }
    State* s = this;
    cow.flush([s, mark, then = std::move(then)](std::error_code ec) {
      if (!ec) {
        std::lock_guard lock(s->mutex);
        s->commits_flushed = std::max(s->commits_flushed, mark);
      }
      then(ec);
    });
  }

  // Writes a metadata area: flush (the data chunks its records point at become durable; skipped when the
  // caller knows they are), write, flush (the records become durable: the kernel's PREFLUSH|FUA); then(ec)
  // afterwards.
  void write_durably(Bytes offset, const std::byte* data, std::function<void(std::error_code)> then,
                     bool preflush = true) {
    State* s = this;
    auto write = [s, offset, data, then = std::move(then)](std::error_code ec) mutable {
      if (ec) return then(ec);
      {
        std::lock_guard lock(s->mutex);
        ++s->area_writes;
      }
      s->cow.write(offset, s->chunk_span(data), [s, then = std::move(then)](std::error_code ec) mutable {
        if (ec) return then(ec);
        s->flush_cow(std::move(then));
      });
    };
    if (preflush) return flush_cow(std::move(write));
    write(std::error_code());
  }

  // Constant after construction.
  BlockDevice& cow;
  const ChunkGeometry geometry;
  const uint64_t epa;
  const Bytes chunk_bytes;
  const uint64_t cow_chunks;
  const std::byte* zero_chunk = nullptr;
  AlignedBytes own_zero_chunk;

  mutable std::mutex mutex;
  std::condition_variable idle;  // io_in_flight reached 0
  // Guarded by mutex.
  bool valid = true;
  ChunkIndex next_free = fmt::kFirstDataChunk;
  uint64_t current_area = 0;
  uint64_t current_committed = 0;                    // records in `area`
  AlignedBytes area;                                 // the current area as it will be written
  std::vector<std::function<void(bool)>> unwritten;  // commits in `area` not yet part of a batch
  std::deque<std::shared_ptr<CommitBatch>> sealed;   // full areas waiting for their write
  bool writing = false;                              // one batch (or merge write) at a time, in order
  AlignedBytes write_buffer;                         // what a partial-area batch or a merge writes
  unsigned io_in_flight = 0;  // batches, merge and header writes the destructor must wait for
  uint64_t area_writes = 0;

  uint64_t commits_arrived = 0;  // commits recorded in memory so far (their data writes had completed)
  uint64_t commits_flushed = 0;  // the first commits_flushed of them have durable data (a flush completed)
};

PersistentStore::PersistentStore(std::unique_ptr<State> state) : state_(std::move(state)) {}

PersistentStore::~PersistentStore() {
  std::unique_lock lock(state_->mutex);
  state_->idle.wait(lock, [this] { return state_->io_in_flight == 0; });
}

namespace {

struct RawHeader {
  uint32_t magic, valid, version, chunk_size;
};

// Reads the first logical block of the COW device, which holds the 16 header bytes whatever the chunk size.
Result<RawHeader> read_raw_header(BlockDevice& cow) {
  const uint32_t block = std::max<uint32_t>(cow.logical_block_size(), kSectorSize);
  if (cow.size() < Bytes(block))
    return cow_fault(cow,
                     "device of " + std::to_string(cow.size().value()) + " bytes is too small for a header");
  AlignedBytes buffer = allocate(cow, Bytes(block));
  if (auto ec = read_sync(cow, Bytes(0), {buffer.get(), block})) return cow_io_error(cow, ec, "read header");
  const std::byte* p = buffer.get();
  return RawHeader{fmt::load_le32(p + fmt::kMagicOffset), fmt::load_le32(p + fmt::kValidOffset),
                   fmt::load_le32(p + fmt::kVersionOffset), fmt::load_le32(p + fmt::kChunkSizeOffset)};
}

}  // namespace

Result<PersistentHeader> PersistentStore::read_header(BlockDevice& cow) {
  auto raw = read_raw_header(cow);
  if (!raw) return raw.error();
  const RawHeader& h = raw.value();
  if (h.magic == 0)
    return Error(std::make_error_code(std::errc::no_such_file_or_directory),
                 "COW " + cow.path() + ": no snapshot header (chunk 0 starts with zeros: a new device)");
  if (h.magic != fmt::kMagic) {
    char hex[16];
    std::snprintf(hex, sizeof hex, "0x%08x", h.magic);
    return cow_fault(cow, "invalid or corrupt snapshot: bad magic " + std::string(hex) + " in the header");
  }
  if (h.version != fmt::kVersion)
    return cow_fault(cow, "unable to handle snapshot disk version " + std::to_string(h.version) + " (only " +
                              std::to_string(fmt::kVersion) + ")");
  const uint32_t block = cow.logical_block_size();
  const std::string rule = check_chunk_size(Sector(h.chunk_size), block, block);
  if (!rule.empty()) return cow_fault(cow, "header: " + rule);
  return PersistentHeader{h.valid != 0, Sector(h.chunk_size)};
}

Bytes PersistentStore::device_size_for(Bytes origin_size, Sector chunk_size) {
  const uint64_t chunk_bytes = to_bytes(chunk_size).value();
  const uint64_t data = (origin_size.value() + chunk_bytes - 1) / chunk_bytes;
  const uint64_t epa = cow_format::exceptions_per_area(chunk_size);
  const uint64_t areas = (data + epa - 1) / epa + 1;  // +1: the next area is zeroed before one fills
  return Bytes((cow_format::kHeaderChunks + areas + data) * chunk_bytes);
}

Result<std::unique_ptr<PersistentStore>> PersistentStore::create(BlockDevice& cow, Sector chunk_size) {
  const uint32_t block = cow.logical_block_size();
  const std::string rule = check_chunk_size(chunk_size, block, block);
  if (!rule.empty()) return cow_fault(cow, rule);
  const Bytes chunk_bytes = to_bytes(chunk_size);
  const uint64_t needed = (fmt::kHeaderChunks + 2) * chunk_bytes.value();
  if (cow.size().value() < needed)
    return Error(std::make_error_code(std::errc::no_space_on_device),
                 "COW " + cow.path() + " is too small: " + std::to_string(cow.size().value()) +
                     " bytes; a persistent store with " + std::to_string(chunk_bytes.value()) +
                     "-byte chunks needs at least " + std::to_string(needed) +
                     " bytes (header, one metadata area and one data chunk)");
  if (cow.read_only()) return Error::from_errno(EROFS, "COW " + cow.path());

  auto raw = read_raw_header(cow);
  if (!raw) return raw.error();
  // Any other content is overwritten: creating is what makes a device a COW store. A store is kept, whatever
  // its version, so that a mistyped command cannot destroy a snapshot.
  if (raw.value().magic == fmt::kMagic)
    return Error(std::make_error_code(std::errc::file_exists),
                 "COW " + cow.path() + " already holds a snapshot header: use attach to load it");

  auto state = std::make_unique<State>(cow, chunk_size);
  // Area 0 is durable before the header that makes it reachable, so no crash leaves a header over garbage.
  if (auto ec =
          write_sync(cow, state->offset_of(state->area_location(0)), state->chunk_span(state->zero_chunk)))
    return cow_io_error(cow, ec, "zero metadata area 0");
  if (auto ec = flush_sync(cow)) return cow_io_error(cow, ec, "flush");
  AlignedBytes header = allocate(cow, chunk_bytes);
  encode_header(header.get(), true, chunk_size);
  if (auto ec = write_sync(cow, Bytes(0), state->chunk_span(header.get())))
    return cow_io_error(cow, ec, "write header");
  if (auto ec = flush_sync(cow)) return cow_io_error(cow, ec, "flush");
  return std::unique_ptr<PersistentStore>(new PersistentStore(std::move(state)));
}

Result<std::unique_ptr<PersistentStore>> PersistentStore::open(
    BlockDevice& cow, Sector origin_size, const std::function<void(const Exception&)>& each) {
  auto header = read_header(cow);
  if (!header) return header.error();
  const Sector chunk_size = header.value().chunk_size;
  const ChunkGeometry geometry(chunk_size);
  const uint64_t cow_chunks = cow.size().value() / to_bytes(chunk_size).value();
  if (cow_chunks < fmt::kHeaderChunks + 1)
    return cow_fault(cow, "device of " + std::to_string(cow.size().value()) +
                              " bytes is too small for a header and metadata area 0 of " +
                              std::to_string(to_bytes(chunk_size).value()) + "-byte chunks");
  auto state = std::make_unique<State>(cow, chunk_size);
  if (!header.value().valid) {
    // The kernel does not read the exceptions of an invalidated store either: they will never be used.
    state->valid = false;
    return std::unique_ptr<PersistentStore>(new PersistentStore(std::move(state)));
  }

  const uint64_t epa = state->epa;
  const uint64_t origin_chunks = geometry.chunks_covering(origin_size);
  std::vector<Exception> all;
  uint64_t max_new = 0;
  bool news_ascending = true;  // the usual case (commits in allocation order): no repeat is possible then
  uint64_t last_area = 0;
  uint64_t committed = 0;
  {
    AreaReader reader(cow, chunk_size, cow_chunks);
    for (uint64_t a = 0;; ++a) {
      auto bytes = reader.get(a);
      if (!bytes) return bytes.error();
      const std::byte* p = bytes.value();
      uint64_t r = 0;
      for (; r < epa; ++r, p += fmt::kRecordBytes) {
        const uint64_t old_chunk = fmt::load_le64(p + fmt::kRecordOldOffset);
        const uint64_t new_chunk = fmt::load_le64(p + fmt::kRecordNewOffset);
        auto at = [&] { return "record " + std::to_string(r) + " of area " + std::to_string(a); };
        if (new_chunk == 0) {
          // A true terminator is all zeros: neither the kernel nor kcopyfs ever writes half a record.
          if (old_chunk != 0)
            return cow_fault(
                cow, at() + " (old chunk " + std::to_string(old_chunk) + ") points at chunk 0, the header");
          break;
        }
        if (new_chunk >= cow_chunks)
          return cow_fault(cow, at() + " points at chunk " + std::to_string(new_chunk) +
                                    ", beyond the end of the device (" + std::to_string(cow_chunks) +
                                    " chunks)");
        if (state->is_metadata(ChunkIndex(new_chunk)))
          return cow_fault(cow, at() + " points at metadata chunk " + std::to_string(new_chunk));
        if (old_chunk >= origin_chunks)
          return cow_fault(cow, at() + " has old chunk " + std::to_string(old_chunk) +
                                    ", beyond the end of the origin (" + std::to_string(origin_chunks) +
                                    " chunks)");
        if (new_chunk <= max_new) news_ascending = false;
        max_new = std::max(max_new, new_chunk);
        all.push_back(Exception{ChunkIndex(old_chunk), ChunkIndex(new_chunk)});
      }
      if (r < epa) {
        last_area = a;
        committed = r;
        // Records after the terminator are leftovers of an interrupted write; they must not reappear on disk
        // behind the next record written into this area.
        std::memcpy(state->area.get(), bytes.value(), r * fmt::kRecordBytes);
        break;
      }
      if (!reader.exists(a + 1))
        return cow_fault(cow, "area " + std::to_string(a) + " is full but the next area (chunk " +
                                  std::to_string(state->area_location(a + 1).value()) +
                                  ") lies beyond the end of the device");
    }
  }

  std::vector<uint64_t> keys(all.size());
  std::transform(all.begin(), all.end(), keys.begin(),
                 [](const Exception& e) { return e.old_chunk.value(); });
  if (has_repeat(keys)) {
    auto [first, again] = first_repeat(all, [](const Exception& e) { return e.old_chunk.value(); });
    return cow_fault(cow, where(again, epa) + " repeats old chunk " +
                              std::to_string(all[again].old_chunk.value()) + " of " + where(first, epa));
  }
  if (!news_ascending) {
    std::transform(all.begin(), all.end(), keys.begin(),
                   [](const Exception& e) { return e.new_chunk.value(); });
    if (has_repeat(keys)) {
      auto [first, again] = first_repeat(all, [](const Exception& e) { return e.new_chunk.value(); });
      return cow_fault(cow, where(again, epa) + " repeats new chunk " +
                                std::to_string(all[again].new_chunk.value()) + " of " + where(first, epa));
    }
  }
  keys = {};

  state->current_area = last_area;
  state->current_committed = committed;
  state->next_free = ChunkIndex(std::max(fmt::kFirstDataChunk.value(), max_new + 1));
  if (state->is_metadata(state->next_free)) state->next_free += ChunkIndex(1);
  for (const Exception& e : all) each(e);
  return std::unique_ptr<PersistentStore>(new PersistentStore(std::move(state)));
}

Sector PersistentStore::chunk_size() const { return state_->geometry.chunk_size(); }

bool PersistentStore::valid() const {
  std::lock_guard lock(state_->mutex);
  return state_->valid;
}

std::optional<ChunkIndex> PersistentStore::prepare_exception() {
  State& s = *state_;
  std::lock_guard lock(s.mutex);
  if (s.next_free.value() + 1 > s.cow_chunks) return std::nullopt;
  const ChunkIndex chunk = s.next_free;
  s.next_free += ChunkIndex(1);
  if (s.is_metadata(s.next_free)) s.next_free += ChunkIndex(1);
  return chunk;
}

void PersistentStore::commit_exception(const Exception& e, bool copy_ok,
                                       std::function<void(bool valid)> done) {
  State& s = *state_;
  std::shared_ptr<CommitBatch> start;
  {
    std::unique_lock lock(s.mutex);
    if (!copy_ok) s.valid = false;
    if (!s.valid) {
      lock.unlock();
      call_later([done = std::move(done)] { done(false); });
      return;
    }
    std::byte* record = s.area.get() + s.current_committed * fmt::kRecordBytes;
    fmt::store_le64(record + fmt::kRecordOldOffset, e.old_chunk.value());
    fmt::store_le64(record + fmt::kRecordNewOffset, e.new_chunk.value());
    ++s.current_committed;
    ++s.commits_arrived;
    s.unwritten.push_back(std::move(done));
    if (s.current_committed == s.epa) s.seal_locked();
    // Group commit: while a write is in flight, commits accumulate and its completion starts the next batch.
    if (!s.writing) start = s.next_batch_locked();
  }
  if (start) s.run_batch(std::move(start));
}

void PersistentStore::invalidate(std::function<void(bool ok)> done) {
  State& s = *state_;
  {
    std::lock_guard lock(s.mutex);
    s.valid = false;
    ++s.io_in_flight;
  }
  // Its own buffer: the header write may overlap an area write in flight.
  auto header = std::make_shared<AlignedBytes>(allocate(s.cow, s.chunk_bytes));
  encode_header(header->get(), false, s.geometry.chunk_size());
  State* sp = &s;
  auto finish = [sp, header, done = std::move(done)](std::error_code ec) {
    {
      std::lock_guard lock(sp->mutex);
      sp->io_done_locked();
    }
    done(!ec);
  };
  s.cow.write(Bytes(0), s.chunk_span(header->get()), [sp, finish](std::error_code ec) {
    if (ec) return finish(ec);
    sp->cow.flush(finish);
  });
}

StoreUsage PersistentStore::usage() const {
  const State& s = *state_;
  std::lock_guard lock(s.mutex);
  const uint64_t chunk = s.geometry.chunk_size().value();
  return StoreUsage{Sector(s.next_free.value() * chunk), s.cow.size_in_sectors(),
                    Sector((s.current_area + 2) * chunk)};
}

int PersistentStore::prepare_merge(Exception& last) {
  State& s = *state_;
  std::unique_lock lock(s.mutex);
  // A merging store takes no new exceptions; refusing here keeps the area buffer out of two hands.
  if (s.writing || !s.unwritten.empty() || !s.sealed.empty()) return -EBUSY;
  if (s.current_committed == 0) {
    if (s.current_area == 0) return 0;
    // The current area is merged away: step back to the previous one, full by construction.
    const uint64_t previous = s.current_area - 1;
    lock.unlock();
    AlignedBytes buffer = allocate(s.cow, s.chunk_bytes);
    if (read_sync(s.cow, s.offset_of(s.area_location(previous)), {buffer.get(), s.chunk_bytes.value()}))
      return -EIO;
    lock.lock();
    if (s.writing || s.current_committed != 0 || s.current_area != previous + 1) return -EBUSY;
    s.area = std::move(buffer);
    s.current_area = previous;
    s.current_committed = s.epa;
  }
  auto record = [&](uint64_t i) {
    const std::byte* p = s.area.get() + i * fmt::kRecordBytes;
    return std::pair{fmt::load_le64(p + fmt::kRecordOldOffset), fmt::load_le64(p + fmt::kRecordNewOffset)};
  };
  const auto [old_chunk, new_chunk] = record(s.current_committed - 1);
  last = Exception{ChunkIndex(old_chunk), ChunkIndex(new_chunk)};
  uint64_t n = 1;
  for (; n < s.current_committed; ++n) {
    const auto [o, w] = record(s.current_committed - 1 - n);
    if (n > old_chunk || n > new_chunk || o != old_chunk - n || w != new_chunk - n) break;
  }
  return static_cast<int>(n);
}

void PersistentStore::commit_merge(unsigned n, std::function<void(bool ok)> done) {
  State& s = *state_;
  uint64_t area = 0;
  {
    std::lock_guard lock(s.mutex);
    if (n == 0 || n > s.current_committed || s.writing || !s.unwritten.empty() || !s.sealed.empty()) {
      call_later([done = std::move(done)] { done(false); });
      return;
    }
    s.current_committed -= n;
    std::memset(s.area.get() + s.current_committed * fmt::kRecordBytes, 0, n * fmt::kRecordBytes);
    // Approximate, as the kernel's: it only feeds the usage figures while merging.
    s.next_free = ChunkIndex(s.area_location(s.current_area).value() + s.current_committed + 1);
    std::memcpy(s.write_buffer.get(), s.area.get(), s.chunk_bytes.value());
    area = s.current_area;
    s.writing = true;
    ++s.io_in_flight;
  }
  State* sp = &s;
  s.write_durably(s.offset_of(s.area_location(area)), s.write_buffer.get(),
                  [sp, done = std::move(done)](std::error_code ec) {
                    std::shared_ptr<CommitBatch> next;
                    {
                      std::lock_guard lock(sp->mutex);
                      sp->writing = false;
                      if (sp->valid) next = sp->next_batch_locked();
                      sp->io_done_locked();
                    }
                    if (next) sp->run_batch(std::move(next));
                    done(!ec);
                  });
}

uint64_t PersistentStore::area_writes() const {
  std::lock_guard lock(state_->mutex);
  return state_->area_writes;
}

}  // namespace kcopyfs
