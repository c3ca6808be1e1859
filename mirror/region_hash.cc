#include "mirror/region_hash.h"

namespace kcopyfs {

RegionState RegionHash::state(RegionIndex r) const {
  auto it = regions_.find(r.value());
  if (it != regions_.end()) return it->second.state;
  return log_.in_sync(r) ? RegionState::clean : RegionState::nosync;
}

RegionHash::Entry& RegionHash::lookup(RegionIndex r) {
  auto [it, fresh] = regions_.try_emplace(r.value());
  if (fresh) it->second.state = log_.in_sync(r) ? RegionState::clean : RegionState::nosync;
  return it->second;
}

void RegionHash::maybe_drop(RegionIndex r, Entry& e) {
  if (e.state == RegionState::clean && e.pending == 0 && !e.on_clean_list && e.parked.empty())
    regions_.erase(r.value());
}

void RegionHash::begin_write(RegionIndex r) {
  Entry& e = lookup(r);
  ++e.pending;
  if (e.state == RegionState::clean) {
    e.state = RegionState::dirty;
    // Leaving the clean list: the log must not clear a region that is being written.
    e.on_clean_list = false;
    log_.mark_region(r);
  }
}

bool RegionHash::end_write(RegionIndex r) {
  auto it = regions_.find(r.value());
  if (it == regions_.end()) return false;
  Entry& e = it->second;
  if (e.pending > 0) --e.pending;
  if (e.pending > 0) return false;
  switch (e.state) {
    case RegionState::recovering:
      return true;
    case RegionState::dirty:
      e.state = RegionState::clean;
      if (!e.on_clean_list) {
        e.on_clean_list = true;
        clean_list_.push_back(r);
      }
      return false;
    default:
      return false;
  }
}

void RegionHash::park(RegionIndex r, Parked retry) { lookup(r).parked.push_back(std::move(retry)); }

void RegionHash::mark_nosync(RegionIndex r) {
  Entry& e = lookup(r);
  if (e.state == RegionState::recovering) return;
  e.state = RegionState::nosync;
  e.on_clean_list = false;
  log_.set_region_sync(r, false);
}

bool RegionHash::begin_recovery(RegionIndex r) {
  Entry& e = lookup(r);
  e.state = RegionState::recovering;
  e.on_clean_list = false;
  return e.pending == 0;
}

void RegionHash::end_recovery(RegionIndex r, bool ok, std::vector<Parked>& released) {
  Entry& e = lookup(r);
  for (auto& p : e.parked) released.push_back(std::move(p));
  e.parked.clear();
  if (ok) {
    // Clean bit first, then the sync bit, as the kernel's update pass: both become durable at the next log
    // flush, which flushes the legs (and so the copied data) before it writes them.
    log_.clear_region(r);
    log_.set_region_sync(r, true);
    e.state = RegionState::clean;
    maybe_drop(r, e);
  } else {
    log_.set_region_sync(r, false);
    e.state = RegionState::nosync;
  }
}

size_t RegionHash::clear_clean_regions() {
  size_t cleared = 0;
  std::vector<RegionIndex> list;
  list.swap(clean_list_);
  for (RegionIndex r : list) {
    auto it = regions_.find(r.value());
    if (it == regions_.end()) continue;
    Entry& e = it->second;
    // A region written again since it was listed left the list (begin_write); only idle CLEAN ones remain.
    if (!e.on_clean_list || e.state != RegionState::clean || e.pending != 0) continue;
    e.on_clean_list = false;
    log_.clear_region(r);
    ++cleared;
    maybe_drop(r, e);
  }
  return cleared;
}

void RegionHash::reset() {
  regions_.clear();
  clean_list_.clear();
}

}  // namespace kcopyfs
