#include "mirror/region_bits.h"

#include <algorithm>
#include <bit>
#include <cstring>

#include "mirror/disk_log_format.h"

namespace kcopyfs {

namespace fmt = disk_log_format;

RegionBits::RegionBits(uint64_t region_count, bool all_in_sync)
    : count_(region_count),
      clean_(fmt::bitset_bytes(region_count).value()),
      sync_(clean_.size()),
      recovering_(clean_.size()) {
  assign_range(clean_, 0, count_, true);
  if (all_in_sync) {
    assign_range(sync_, 0, count_, true);
    sync_count_ = count_;
  }
}

bool RegionBits::test(const std::vector<std::byte>& bits, RegionIndex r) const {
  const uint64_t n = r.value();
  return n < count_ && (bits[fmt::bit_byte(n)] & fmt::bit_mask(n)) != std::byte{0};
}

void RegionBits::set(std::vector<std::byte>& bits, uint64_t region) {
  bits[fmt::bit_byte(region)] |= fmt::bit_mask(region);
}

void RegionBits::clear(std::vector<std::byte>& bits, uint64_t region) {
  bits[fmt::bit_byte(region)] &= ~fmt::bit_mask(region);
}

void RegionBits::assign_range(std::vector<std::byte>& bits, uint64_t from, uint64_t to, bool value) {
  // Bit by bit up to a byte boundary and after the last whole byte; whole bytes in between.
  for (; from < to && (from & 7) != 0; ++from) value ? set(bits, from) : clear(bits, from);
  const uint64_t whole_end = to & ~uint64_t{7};
  if (from < whole_end) {
    std::memset(bits.data() + fmt::bit_byte(from), value ? 0xff : 0, fmt::bit_byte(whole_end - from));
    from = whole_end;
  }
  for (; from < to; ++from) value ? set(bits, from) : clear(bits, from);
}

uint64_t RegionBits::count_clean() const {
  uint64_t n = 0;
  for (size_t at = 0; at < clean_.size(); at += fmt::kBytesPerWord)
    n += static_cast<uint64_t>(std::popcount(fmt::load_le64(clean_.data() + at)));
  return n;
}

void RegionBits::mark_region(RegionIndex r) {
  if (r.value() >= count_) return;
  clear(clean_, r.value());
  touched_.dirtied = true;
}

void RegionBits::clear_region(RegionIndex r) {
  if (r.value() >= count_ || clean_frozen_) return;
  set(clean_, r.value());
  touched_.cleaned = true;
}

std::optional<RegionIndex> RegionBits::get_resync_work() {
  // A word at a time: a candidate is a 0 in (sync | recovering). Padding bits are 0 too, hence the bound.
  while (search_ < count_) {
    const uint64_t word = search_ / fmt::kRegionsPerWord;
    const size_t at = word * fmt::kBytesPerWord;
    uint64_t candidates = ~(fmt::load_le64(sync_.data() + at) | fmt::load_le64(recovering_.data() + at));
    candidates &= ~uint64_t{0} << (search_ % fmt::kRegionsPerWord);
    if (candidates == 0) {
      search_ = (word + 1) * fmt::kRegionsPerWord;
      continue;
    }
    const uint64_t region = word * fmt::kRegionsPerWord + static_cast<uint64_t>(std::countr_zero(candidates));
    if (region >= count_) break;
    search_ = region + 1;
    set(recovering_, region);
    touched_.cleaned = true;
    return RegionIndex(region);
  }
  search_ = count_;
  return std::nullopt;
}

void RegionBits::set_region_sync(RegionIndex r, bool in_sync) {
  const uint64_t n = r.value();
  if (n >= count_) return;
  clear(recovering_, n);
  touched_.dirtied = true;
  const bool was = test(sync_, r);
  if (in_sync) {
    set(sync_, n);
    touched_.cleaned = true;
    if (!was) ++sync_count_;
  } else if (was) {
    clear(sync_, n);
    --sync_count_;
  }
}

void RegionBits::resume_from(std::span<const std::byte> stored, uint64_t stored_regions,
                             bool new_regions_clean) {
  stored_regions = std::min(stored_regions, count_);
  std::memcpy(clean_.data(), stored.data(), std::min(stored.size(), clean_.size()));
  assign_range(clean_, stored_regions, count_, new_regions_clean);
  // A shrunk mirror leaves bits of regions it no longer has in the last word.
  assign_range(clean_, count_, clean_.size() * 8, false);
  sync_ = clean_;
  sync_count_ = count_clean();
  std::fill(recovering_.begin(), recovering_.end(), std::byte{0});
  search_ = 0;
  touched_ = {};
}

void RegionBits::forget_clean() {
  std::fill(clean_.begin(), clean_.end(), std::byte{0});
  clean_frozen_ = true;
}

RegionBits::Touched RegionBits::take_touched() {
  const Touched t = touched_;
  touched_ = {};
  return t;
}

void RegionBits::retouch(Touched t) {
  touched_.cleaned |= t.cleaned;
  touched_.dirtied |= t.dirtied;
}

bool BitsetLog::is_clean(RegionIndex r) const {
  std::lock_guard lock(mutex_);
  return bits_.is_clean(r);
}

bool BitsetLog::in_sync(RegionIndex r) const {
  std::lock_guard lock(mutex_);
  return bits_.in_sync(r);
}

void BitsetLog::mark_region(RegionIndex r) {
  std::lock_guard lock(mutex_);
  bits_.mark_region(r);
}

void BitsetLog::clear_region(RegionIndex r) {
  std::lock_guard lock(mutex_);
  bits_.clear_region(r);
}

std::optional<RegionIndex> BitsetLog::get_resync_work() {
  std::lock_guard lock(mutex_);
  return bits_.get_resync_work();
}

void BitsetLog::set_region_sync(RegionIndex r, bool in_sync) {
  std::lock_guard lock(mutex_);
  bits_.set_region_sync(r, in_sync);
}

uint64_t BitsetLog::sync_count() const {
  std::lock_guard lock(mutex_);
  return bits_.sync_count();
}

void BitsetLog::reset_resync_scan() {
  std::lock_guard lock(mutex_);
  bits_.reset_resync_scan();
}

void BitsetLog::append_table_tail(std::string& out) const {
  out += std::to_string(geometry_.region_size().value());
  out += ' ';
  const std::string_view word = sync_mode_word(mode_);
  if (!word.empty()) {
    out += word;
    out += ' ';
  }
}

}  // namespace kcopyfs
