#include "snapshot/exception_table.h"

#include <algorithm>
#include <cmath>

namespace kcopyfs {

std::vector<ExceptionTable::Run>::const_iterator ExceptionTable::find_in(const std::vector<Run>& v,
                                                                         uint64_t old) {
  auto it =
      std::upper_bound(v.begin(), v.end(), old, [](uint64_t o, const Run& r) { return o < r.old_start; });
  if (it == v.begin()) return v.end();
  --it;
  return it->contains(old) ? it : v.end();
}

std::vector<ExceptionTable::Run>::iterator ExceptionTable::find_in(std::vector<Run>& v, uint64_t old) {
  auto it =
      std::upper_bound(v.begin(), v.end(), old, [](uint64_t o, const Run& r) { return o < r.old_start; });
  if (it == v.begin()) return v.end();
  --it;
  return it->contains(old) ? it : v.end();
}

std::optional<ChunkIndex> ExceptionTable::lookup(ChunkIndex old) const {
  const uint64_t o = old.value();
  auto it = find_in(main_, o);
  if (it == main_.end()) {
    it = find_in(delta_, o);
    if (it == delta_.end()) return std::nullopt;
  }
  return ChunkIndex(it->new_start() + (o - it->old_start));
}

bool ExceptionTable::try_extend(std::vector<Run>& v, uint64_t old, uint64_t new_chunk) {
  auto next =
      std::upper_bound(v.begin(), v.end(), old, [](uint64_t o, const Run& r) { return o < r.old_start; });
  if (next != v.begin()) {
    Run& prev = *std::prev(next);
    const uint64_t n = prev.count();
    if (prev.old_start + n == old && prev.new_start() + n == new_chunk && n < kMaxRun) {
      prev = Run::make(prev.old_start, prev.new_start(), n + 1);
      return true;
    }
  }
  if (next != v.end()) {
    const uint64_t n = next->count();
    if (old + 1 == next->old_start && new_chunk + 1 == next->new_start() && n < kMaxRun) {
      *next = Run::make(old, new_chunk, n + 1);
      return true;
    }
  }
  return false;
}

size_t ExceptionTable::delta_limit() const {
  return std::max<size_t>(512, static_cast<size_t>(4 * std::sqrt(static_cast<double>(main_.size()))));
}

void ExceptionTable::insert(ChunkIndex old, ChunkIndex new_chunk) {
  const uint64_t o = old.value(), n = new_chunk.value();
  ++size_;
  if (try_extend(main_, o, n) || try_extend(delta_, o, n)) return;
  auto pos = std::upper_bound(delta_.begin(), delta_.end(), o,
                              [](uint64_t x, const Run& r) { return x < r.old_start; });
  delta_.insert(pos, Run::make(o, n, 1));
  if (delta_.size() > delta_limit()) merge_delta();
}

void ExceptionTable::merge_delta() {
  std::vector<Run> merged;
  merged.reserve(main_.size() + delta_.size());
  auto by_old = [](const Run& a, const Run& b) { return a.old_start < b.old_start; };
  std::merge(main_.begin(), main_.end(), delta_.begin(), delta_.end(), std::back_inserter(merged), by_old);
  // Neighbours from the two vectors may now line up: join them.
  std::vector<Run> packed;
  packed.reserve(merged.size());
  for (const Run& r : merged) {
    if (!packed.empty()) {
      Run& last = packed.back();
      const uint64_t n = last.count();
      if (last.old_start + n == r.old_start && last.new_start() + n == r.new_start() &&
          n + r.count() <= kMaxRun) {
        last = Run::make(last.old_start, last.new_start(), n + r.count());
        continue;
      }
    }
    packed.push_back(r);
  }
  packed.shrink_to_fit();
  main_ = std::move(packed);
  delta_.clear();
  delta_.shrink_to_fit();
}

void ExceptionTable::insert_bulk(std::span<const Exception> exceptions) {
  std::vector<Exception> sorted(exceptions.begin(), exceptions.end());
  std::sort(sorted.begin(), sorted.end(),
            [](const Exception& a, const Exception& b) { return a.old_chunk < b.old_chunk; });
  merge_delta();
  std::vector<Run> runs;
  runs.reserve(sorted.size() / 4 + 1);
  for (const Exception& e : sorted) {
    const uint64_t o = e.old_chunk.value(), n = e.new_chunk.value();
    if (!runs.empty()) {
      Run& last = runs.back();
      const uint64_t c = last.count();
      if (last.old_start + c == o && last.new_start() + c == n && c < kMaxRun) {
        last = Run::make(last.old_start, last.new_start(), c + 1);
        continue;
      }
    }
    runs.push_back(Run::make(o, n, 1));
  }
  size_ += sorted.size();
  delta_ = std::move(runs);
  merge_delta();
}

bool ExceptionTable::remove(ChunkIndex old) {
  const uint64_t o = old.value();
  std::vector<Run>* v = &main_;
  auto it = find_in(main_, o);
  if (it == main_.end()) {
    v = &delta_;
    it = find_in(delta_, o);
    if (it == delta_.end()) return false;
  }
  --size_;
  const Run r = *it;
  const uint64_t count = r.count();
  if (count == 1) {
    v->erase(it);
  } else if (o == r.old_start) {
    *it = Run::make(o + 1, r.new_start() + 1, count - 1);
  } else if (o == r.old_start + count - 1) {
    *it = Run::make(r.old_start, r.new_start(), count - 1);
  } else {
    // A chunk from the middle: split the run in two (the kernel refuses this; a merge never asks for it, but
    // the table stays correct if someone does).
    const uint64_t head = o - r.old_start;
    *it = Run::make(r.old_start, r.new_start(), head);
    const Run tail = Run::make(o + 1, r.new_start() + head + 1, count - head - 1);
    auto pos = std::upper_bound(delta_.begin(), delta_.end(), tail.old_start,
                                [](uint64_t x, const Run& q) { return x < q.old_start; });
    delta_.insert(pos, tail);
  }
  return true;
}

size_t ExceptionTable::memory_bytes() const { return (main_.capacity() + delta_.capacity()) * sizeof(Run); }

}  // namespace kcopyfs
