#include "fs/range_lock.h"

#include <algorithm>
#include <utility>

namespace kcopyfs::fs {

void RangeLock::lock(uint64_t start, uint64_t end, bool exclusive, std::function<void(Ticket)> granted) {
  std::unique_lock lock(mutex_);
  Entry entry{next_++, start, end, exclusive, {}};
  const auto blocks = [&](const Entry& other) { return entry.conflicts(other); };
  // A waiter that overlaps blocks us too: FIFO among overlapping requests.
  if (std::any_of(held_.begin(), held_.end(), blocks) ||
      std::any_of(waiting_.begin(), waiting_.end(), blocks)) {
    entry.granted = std::move(granted);
    waiting_.push_back(std::move(entry));
    return;
  }
  const Ticket ticket = entry.ticket;
  held_.push_back(std::move(entry));
  lock.unlock();
  granted(ticket);
}

void RangeLock::unlock(Ticket ticket) {
  std::vector<std::pair<Ticket, std::function<void(Ticket)>>> grants;
  {
    std::lock_guard lock(mutex_);
    auto it = std::find_if(held_.begin(), held_.end(), [&](const Entry& e) { return e.ticket == ticket; });
    if (it == held_.end()) return;
    held_.erase(it);
    // Grant, in order, every waiter that conflicts with nothing held and with no earlier waiter still
    // waiting.
    for (size_t i = 0; i < waiting_.size();) {
      Entry& w = waiting_[i];
      const auto blocks = [&](const Entry& other) { return w.conflicts(other); };
      const bool free = std::none_of(held_.begin(), held_.end(), blocks) &&
                        std::none_of(waiting_.begin(), waiting_.begin() + static_cast<long>(i), blocks);
      if (!free) {
        ++i;
        continue;
      }
      grants.emplace_back(w.ticket, std::move(w.granted));
      w.granted = nullptr;
      held_.push_back(std::move(w));
      waiting_.erase(waiting_.begin() + static_cast<long>(i));
    }
  }
  for (auto& [t, fn] : grants) fn(t);
}

size_t RangeLock::held() const {
  std::lock_guard lock(mutex_);
  return held_.size();
}

size_t RangeLock::waiting() const {
  std::lock_guard lock(mutex_);
  return waiting_.size();
}

}  // namespace kcopyfs::fs
