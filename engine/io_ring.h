// IoRing: asynchronous file I/O on one io_uring, shared by every device and kcopyd client of a process.
//
// Design. Any thread may submit; submissions are batched under one mutex and handed to the kernel with a
// single io_uring_enter per batch. One completion thread per ring blocks in io_uring_wait_cqe (completions
// are not polled) and runs each operation's completion. Short reads and writes are continued from where they
// stopped, -EAGAIN and -EINTR are resubmitted, and a read that meets end-of-file fills the rest with zeros (a
// file shorter than its device). When more operations are submitted than the completion queue can hold, the
// excess waits in a backlog inside the ring and is issued as completions drain, so the kernel never drops a
// completion.
//
// Submission polling (Options::sq_poll_idle, off by default). A kernel thread of the ring takes new
// submissions from the queue while they keep coming, and sleeps once none came for sq_poll_idle; submitting
// then costs no system call, and operations that arrive together reach the block layer together (one device
// notification for several). The price is CPU: while I/O flows, the thread spins on one core. Where the
// kernel refuses it (old kernels, restricted io_uring), the ring is made without it.
//
// Fixed buffers. A caller that owns long-lived memory (kcopyd's buffer pool) registers it once and passes the
// returned index with each operation; the kernel then skips pinning pages per I/O. Registration is best
// effort: without it (old kernel, RLIMIT_MEMLOCK) register_buffer() returns nullopt and plain I/O is used.
//
// Contract of every submission: on success (the call returns) `done` is called exactly once, on the
// completion thread, never inside the submitting call, with the full length for reads and writes or 0 for
// other operations, or with -errno. `done` must not block: it may submit more I/O or hand work to another
// thread.
#pragma once

#include <liburing.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <thread>
#include <vector>

#include "engine/result.h"

namespace kcopyfs {

// result: >= 0 on success (bytes for reads and writes, 0 otherwise), -errno on failure.
using IoCompletion = std::function<void(int result)>;

// nop completes with `length` negated as its result: a way to report an error asynchronously.
enum class IoOpKind : uint8_t { read, write, fdatasync, fsync, fallocate, nop };

struct IoOp {
  IoOpKind kind = IoOpKind::read;
  int fd = -1;
  uint64_t offset = 0;          // bytes
  std::byte* buffer = nullptr;  // read and write only
  uint64_t length = 0;          // bytes; for fallocate the range length
  int fixed_index = -1;         // a registered buffer that contains [buffer, buffer+length), or -1
  int fallocate_mode = 0;       // FALLOC_FL_* for fallocate
  IoCompletion done;
};

class IoRing {
 public:
  struct Options {
    unsigned entries = 256;                     // submission queue size; the completion queue is twice that
    unsigned fixed_buffer_slots = 64;           // registered-buffer table size (0: no fixed buffers)
    std::chrono::milliseconds sq_poll_idle{0};  // submission polling (above); 0: off
  };

  // Result: a running ring, or the error of io_uring_queue_init (ENOSYS/EPERM where io_uring is unavailable).
  static Result<std::unique_ptr<IoRing>> create(const Options& options);
  // The process-wide ring, created on first use and kept until exit. Thread-safe.
  static Result<IoRing*> shared();
  // The options shared() makes its ring with. Errors: EBUSY once shared() has made it. Thread-safe.
  static Status configure_shared(const Options& options);
  // Whether the ring's submissions are polled (Options::sq_poll_idle, when the kernel allowed it).
  bool polling() const { return (ring_.flags & IORING_SETUP_SQPOLL) != 0; }

  // Precondition: every operation submitted has completed (owners wait for their own I/O first).
  ~IoRing();
  IoRing(const IoRing&) = delete;
  IoRing& operator=(const IoRing&) = delete;

  // Submits ops as one batch. Thread-safe. Each op's done runs exactly once (see the contract above).
  void submit(std::span<IoOp> ops);
  void submit(IoOp op) { submit(std::span<IoOp>(&op, 1)); }

  // Runs fn on the completion thread soon (after a no-op round trip through the ring), never inside this
  // call: the way to complete something asynchronously without I/O. Thread-safe.
  void defer(std::function<void()> fn);

  // Registers [base, base+length) as a fixed buffer. Result: its index, or nullopt when registration is not
  // possible here (the caller then submits with fixed_index = -1). Thread-safe.
  std::optional<int> register_buffer(std::byte* base, uint64_t length);
  // Precondition: no operation using index is in flight. Thread-safe.
  void unregister_buffer(int index);

 private:
  struct Pending;
  explicit IoRing(unsigned entries);
  void prepare_locked(Pending* p);  // requires sq_mutex_
  io_uring_sqe* get_sqe_locked();   // requires sq_mutex_; waits for a free slot
  void issue(std::unique_ptr<Pending> p);
  void completion_loop();
  void complete(Pending* p, int res);

  // Constant after construction.
  io_uring ring_{};
  unsigned cq_capacity_ = 0;
  unsigned fixed_slots_ = 0;

  std::mutex sq_mutex_;
  // Guarded by sq_mutex_.
  unsigned in_kernel_ = 0;                        // submitted and not yet reaped
  std::deque<std::unique_ptr<Pending>> backlog_;  // waiting for room in the completion queue

  std::mutex slots_mutex_;
  std::vector<bool> slot_used_;  // guarded by slots_mutex_

  std::thread completion_thread_;
};

}  // namespace kcopyfs
