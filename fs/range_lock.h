// RangeLock: an asynchronous shared/exclusive lock over byte ranges, so that a read-modify-write of a partial
// block cannot interleave with another write to the same block (which would lose one of them).
//
// lock() never blocks: the grant callback runs at once on the calling thread when the range is free, or later
// on the thread whose unlock() frees it (an I/O completion thread). Waiters are granted in FIFO order among
// those that overlap, so a stream of shared holders cannot starve an exclusive one. Thread-safe.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <vector>

namespace kcopyfs::fs {

class RangeLock {
 public:
  using Ticket = uint64_t;

  // Locks [start, end). granted receives the ticket to pass to unlock(); it must not block.
  void lock(uint64_t start, uint64_t end, bool exclusive, std::function<void(Ticket)> granted);
  void unlock(Ticket ticket);

  // For tests: ranges held and waiting.
  size_t held() const;
  size_t waiting() const;

 private:
  struct Entry {
    Ticket ticket;
    uint64_t start;
    uint64_t end;
    bool exclusive;
    std::function<void(Ticket)> granted;  // empty once held
    bool conflicts(const Entry& other) const {
      return start < other.end && other.start < end && (exclusive || other.exclusive);
    }
  };

  mutable std::mutex mutex_;
  // Guarded by mutex_.
  Ticket next_ = 1;
  std::vector<Entry> held_;
  std::deque<Entry> waiting_;
};

}  // namespace kcopyfs::fs
