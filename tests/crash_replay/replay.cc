#include "tests/crash_replay/replay.h"

#include <algorithm>
#include <cstring>
#include <set>
#include <stdexcept>

namespace kcopyfs::replay {

namespace {

struct Op {
  uint64_t submitted;
  uint64_t completed = UINT64_MAX;  // UINT64_MAX: still in flight at the cut
  const WriteEvent* event;
};

void apply(Image& image, const WriteEvent& e, uint64_t sector_offset, uint64_t sectors) {
  const uint64_t at = e.offset.value() + sector_offset * kSectorSize;
  const uint64_t len = sectors * kSectorSize;
  if (e.zeroes) {
    std::memset(image.data() + at, 0, len);
  } else {
    std::memcpy(image.data() + at, e.data->data() + sector_offset * kSectorSize, len);
  }
}

}  // namespace

std::vector<Image> rebuild(const std::vector<WriteEvent>& events, const std::vector<Image>& initial,
                           uint64_t cut, unsigned variant, std::mt19937_64& rng, ReplayCounts* counts) {
  ReplayCounts local;
  const uint64_t end = std::min<uint64_t>(cut, events.size());
  std::vector<std::vector<Op>> ops(initial.size());
  std::vector<std::vector<size_t>> by_index(initial.size());  // position in ops[d] by submission index
  // The last submission index of a flush that completed successfully before the cut, per device: the writes
  // completed before it are durable.
  std::vector<uint64_t> durable_before(initial.size(), 0);
  std::vector<std::pair<DeviceId, size_t>> op_of(events.size(), {kNoDevice, 0});
  for (uint64_t i = 0; i < end; ++i) {
    const WriteEvent& e = events[i];
    if (e.device != kNoDevice && e.device >= initial.size())
      throw std::invalid_argument("event of an unknown device");
    switch (e.kind) {
      case WriteEvent::Kind::write_submitted:
        op_of[i] = {e.device, ops[e.device].size()};
        ops[e.device].push_back(Op{i, UINT64_MAX, &e});
        break;
      case WriteEvent::Kind::write_completed: {
        const auto [d, pos] = op_of.at(e.op);
        ops[d][pos].completed = i;
        break;
      }
      case WriteEvent::Kind::flush_completed:
        if (e.error == 0) durable_before[e.device] = std::max(durable_before[e.device], e.op);
        break;
      default:
        break;
    }
  }
  for (uint64_t i = end; i < events.size(); ++i)
    if (events[i].kind == WriteEvent::Kind::write_submitted) ++local.after_cut;

  std::vector<Image> out = initial;
  for (size_t d = 0; d < ops.size(); ++d) {
    auto& list = ops[d];
    // Completion order; those in flight last, in submission order.
    std::stable_sort(list.begin(), list.end(), [](const Op& a, const Op& b) {
      return a.completed != b.completed ? a.completed < b.completed : a.submitted < b.submitted;
    });
    for (const Op& op : list) {
      const WriteEvent& e = *op.event;
      const uint64_t sectors = e.length.value() / kSectorSize;
      if (e.offset.value() + e.length.value() > out[d].size())
        throw std::invalid_argument("write beyond the device's image");
      const bool durable = op.completed != UINT64_MAX && op.completed < durable_before[d];
      if (durable) {
        ++local.durable;
        apply(out[d], e, 0, sectors);
        continue;
      }
      if (variant == 0) {
        if (op.completed != UINT64_MAX) {
          ++local.present;
          apply(out[d], e, 0, sectors);
        } else {
          ++local.absent;
        }
        continue;
      }
      switch (rng() % 3) {
        case 0:
          ++local.present;
          apply(out[d], e, 0, sectors);
          break;
        case 1:
          ++local.absent;
          break;
        default:
          ++local.torn;
          for (uint64_t s = 0; s < sectors; ++s)
            if (rng() & 1) apply(out[d], e, s, 1);
          break;
      }
    }
  }
  if (counts != nullptr) {
    counts->durable += local.durable;
    counts->present += local.present;
    counts->absent += local.absent;
    counts->torn += local.torn;
    counts->after_cut += local.after_cut;
  }
  return out;
}

std::vector<uint64_t> cut_points(const std::vector<WriteEvent>& events, unsigned extra, std::mt19937_64& rng,
                                 uint64_t from) {
  std::set<uint64_t> cuts;
  for (uint64_t i = from; i < events.size(); ++i)
    if (events[i].kind == WriteEvent::Kind::flush_completed) {
      cuts.insert(i);      // the flush in flight: what it should make durable may still be lost or torn
      cuts.insert(i + 1);  // just after: all of it is there
    }
  const uint64_t span = events.size() - std::min<uint64_t>(from, events.size());
  for (unsigned k = 0; k < extra && span > 0; ++k) cuts.insert(from + 1 + rng() % span);
  cuts.erase(0);  // nothing happened yet: the initial images, opened by nobody
  return {cuts.begin(), cuts.end()};
}

CompletionThread& CompletionThread::get() {
  // A function-local static: made on first use, stopped and joined at exit, after every test has ended.
  static CompletionThread instance;
  return instance;
}

CompletionThread::CompletionThread() : thread_([this] { run(); }) {}

CompletionThread::~CompletionThread() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_one();
  thread_.join();
}

void CompletionThread::post(std::function<void()> fn) {
  {
    std::lock_guard lock(mutex_);
    queue_.push_back(std::move(fn));
  }
  wake_.notify_one();
}

void CompletionThread::run() {
  for (;;) {
    std::function<void()> fn;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and nothing left to run
      fn = std::move(queue_.front());
      queue_.pop_front();
    }
    fn();
  }
}

bool MemoryDevice::valid(Bytes offset, Bytes length) const {
  return offset.value() % kSectorSize == 0 && length.value() % kSectorSize == 0 &&
         offset.value() <= image_.size() && length.value() <= image_.size() - offset.value();
}

namespace {
void complete(IoCallback done, bool ok) {
  const std::error_code ec = ok ? std::error_code{} : std::make_error_code(std::errc::invalid_argument);
  CompletionThread::get().post([done = std::move(done), ec] { done(ec); });
}
}  // namespace

void MemoryDevice::read(Bytes offset, std::span<std::byte> buffer, IoCallback done, FixedBuffer) {
  const bool ok = valid(offset, Bytes(buffer.size()));
  if (ok) {
    std::lock_guard lock(mutex_);
    std::memcpy(buffer.data(), image_.data() + offset.value(), buffer.size());
  }
  complete(std::move(done), ok);
}

void MemoryDevice::write(Bytes offset, std::span<const std::byte> buffer, IoCallback done, FixedBuffer) {
  const bool ok = valid(offset, Bytes(buffer.size()));
  if (ok) {
    std::lock_guard lock(mutex_);
    std::memcpy(image_.data() + offset.value(), buffer.data(), buffer.size());
  }
  complete(std::move(done), ok);
}

void MemoryDevice::flush(IoCallback done) { complete(std::move(done), true); }

void MemoryDevice::write_zeroes(Bytes offset, Bytes length, bool, IoCallback done) {
  const bool ok = valid(offset, length);
  if (ok) {
    std::lock_guard lock(mutex_);
    std::memset(image_.data() + offset.value(), 0, length.value());
  }
  complete(std::move(done), ok);
}

}  // namespace kcopyfs::replay
