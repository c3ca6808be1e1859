// Kcopyd: the kernel's asynchronous copy engine in userspace (kernel-dm-notes.md §1 for the kernel's rules).
//
// A job copies one source Region to 1..8 destination Regions, or zeroes 1..8 Regions. It runs as sub-jobs of
// at most sub_job_size (512 KiB by default), at most max_sub_jobs_in_flight (8) of one job at once; each
// sub-job reads the source once into a buffer from the client's pool and writes every destination from that
// buffer in parallel. The pool is the client's whole data-buffer budget (num_pages × 4 KiB), never exceeded:
// sub-jobs wait for buffers in arrival order, and since a single sub-job always fits, every job makes
// progress.
//
// Beyond the kernel, on request or where it is safe:
//  - gather: copy_gather() reads several source Regions and writes them, one after the other, to one run of
//    each destination: the copy-on-write of scattered chunks into a store that allocates them in sequence
//    costs one write per destination instead of one per chunk.
//  - sparse: holes of the source (SEEK_DATA/SEEK_HOLE) are not read; the destination range is zeroed with
//    may_unmap, so a file destination gets a hole.
//  - offload: with one destination on the same filesystem as the source (both regular files), pieces are
//  copied
//    by the kernel (FICLONERANGE where blocks line up and the filesystem shares extents, else
//    copy_file_range). A piece whose offload fails for any reason is redone by read and write, so errors are
//    still attributed to the source or the destination as without offload.
//
// Threading: each client has one worker thread. It runs every job's state machine and every callback, so the
// callbacks of one client never overlap, as in the kernel. Callbacks may submit new jobs. I/O completions
// arrive on the IoRing's thread and are handed to the worker.
//
// Contract of copy() and zero(): on success the callback is always called, exactly once, on the worker thread
// and never inside the submitting call; on failure (a Status error) it is not called.
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include "engine/block_device.h"
#include "engine/buffer_pool.h"
#include "engine/result.h"
#include "engine/throttle.h"
#include "engine/units.h"

namespace kcopyfs {

inline constexpr unsigned kMaxDestinations = 8;

struct Region {
  BlockDevice* device = nullptr;
  Sector start;
  Sector count;
};

struct CopyFlags {
  // Keep going after read or write errors (the kernel's DM_KCOPYD_IGNORE_ERROR). A failed read then writes
  // zeros for that piece.
  bool ignore_error = false;
  // Issue the writes of a job in ascending offset order, each after the previous one completed
  // (DM_KCOPYD_WRITE_SEQ). Clears ignore_error, as in the kernel.
  bool write_seq = false;
  // Do not read the source's holes; zero (unmap) them at the destinations instead.
  bool sparse = false;
};

// read_error: some part of the source could not be read. write_errors: bit i is set when dests[i] failed.
using CopyCallback = std::function<void(bool read_error, uint32_t write_errors)>;

struct KcopydOptions {
  // The data-buffer budget in 4 KiB pages. When smaller than one sub-job, sub-jobs shrink to fit it.
  uint32_t num_pages = 1024;
  Sector sub_job_size = Sector(1024);   // 512 KiB, the kernel's default
  unsigned max_sub_jobs_in_flight = 8;  // per job, the kernel's SPLIT_COUNT
  std::shared_ptr<Throttle> throttle;   // shared by a group of clients; nullptr: unthrottled
  bool allow_offload = true;
  IoRing* ring = nullptr;  // where to register the buffer pool; nullptr: IoRing::shared()
};

struct KcopydStats {
  uint32_t pool_pages = 0;
  uint32_t peak_pages_in_use = 0;
  unsigned peak_sub_jobs_of_one_job = 0;  // the most sub-jobs one job ever had in flight at once
  uint64_t jobs_completed = 0;
  uint64_t bytes_read = 0;       // by read+write sub-jobs
  uint64_t bytes_offloaded = 0;  // copied by copy_file_range or FICLONERANGE
  uint64_t bytes_zeroed = 0;     // per destination, by zero jobs and sparse holes
};

class KcopydClient {
 public:
  // Result: a client with its worker running, or EINVAL for options out of range.
  static Result<std::unique_ptr<KcopydClient>> create(const KcopydOptions& options);
  // Waits until every job submitted has completed and its callback has returned.
  ~KcopydClient();
  KcopydClient(const KcopydClient&) = delete;
  KcopydClient& operator=(const KcopydClient&) = delete;

  // Copies from.count sectors from `from` to each of dests (each destination's count is ignored, as in the
  // kernel). Errors (callback not called): EINVAL for 0 or more than 8 destinations, a null device, a range
  // beyond a device's end, or a read-only destination; ESHUTDOWN once destruction has begun and all jobs
  // ended. A zero-length job completes with (false, 0).
  Status copy(const Region& from, std::span<const Region> dests, CopyFlags flags, CopyCallback callback);
  // Copies the concatenation of sources (in order, each sources[i].count sectors) to each of dests, whose
  // counts are ignored. A failed read of any source sets read_error (with ignore_error that source's part is
  // written as zeros). Not with sparse or write_seq. Errors (callback not called): as copy(), and EINVAL for
  // no sources or for sparse or write_seq.
  Status copy_gather(std::span<const Region> sources, std::span<const Region> dests, CopyFlags flags,
                     CopyCallback callback);
  // Zeroes dests[0].count sectors at each destination. Errors as copy().
  Status zero(std::span<const Region> dests, CopyFlags flags, CopyCallback callback);

  KcopydStats stats() const;
  Sector sub_job_size() const { return sub_job_size_; }

 private:
  struct Job;
  struct SubJob;
  struct Event;
  explicit KcopydClient(const KcopydOptions& options);

  // from: nullptr for zero(), one Region for copy(), several for copy_gather().
  Status submit(std::span<const Region> from, std::span<const Region> dests, CopyFlags flags,
                CopyCallback callback);
  void post(Event event);
  void worker_loop();

  // Worker-thread only (no lock): the job state machine.
  void start_job(std::unique_ptr<Job> job);
  bool claim_piece(Job& job);
  void enqueue(SubJob* sub);
  void grant_buffers();
  void issue_ready(Throttle::Clock::time_point now);
  void issue(SubJob* sub);
  void issue_writes(SubJob* sub);
  // The I/O callback that posts sub's read_done (of piece index) or write_done (of destination index).
  IoCallback completion(bool read, SubJob* sub, unsigned index);
  void on_read_done(SubJob* sub, unsigned piece, int err);
  // The reads of a sub-job: how many, and piece's range [from, to) in sectors of the job.
  static size_t first_source(const SubJob& sub);
  static unsigned read_pieces(const SubJob& sub);
  static std::pair<Sector, Sector> read_piece(const SubJob& sub, unsigned piece);
  void on_write_done(SubJob* sub, unsigned dest, int err);
  void on_offload_done(SubJob* sub, int err);
  void finish_sub(SubJob* sub);
  void release_write_seq_waiters(Job& job);
  void offload_loop();

  // Constant after construction.
  Sector sub_job_size_;
  unsigned max_in_flight_;
  std::shared_ptr<Throttle> throttle_;
  bool allow_offload_;

  // Owned by the worker thread.
  BufferPool pool_;
  std::list<std::unique_ptr<Job>> jobs_;
  std::deque<SubJob*> waiting_buffers_;  // FIFO: the head is served first
  std::deque<SubJob*> ready_;            // have what they need; waiting for the throttle or to be issued
  std::vector<std::pair<Job*, std::pair<bool, uint32_t>>> finished_;  // callbacks to run

  // Guarded by mutex_.
  std::mutex mutex_;
  std::condition_variable wake_;
  std::vector<Event> inbox_;
  uint64_t outstanding_ = 0;  // jobs submitted and not yet called back
  bool destroying_ = false;

  // Offload workers; guarded by offload_mutex_.
  std::mutex offload_mutex_;
  std::condition_variable offload_wake_;
  std::deque<SubJob*> offload_queue_;
  std::vector<std::thread> offload_threads_;
  bool offload_stop_ = false;

  std::atomic<bool> clone_refused_{false};  // FICLONERANGE failed as unsupported: use copy_file_range only
  std::atomic<unsigned> peak_sub_jobs_{0};
  std::atomic<uint64_t> jobs_completed_{0};
  std::atomic<uint64_t> bytes_read_{0};
  std::atomic<uint64_t> bytes_offloaded_{0};
  std::atomic<uint64_t> bytes_zeroed_{0};
  std::atomic<uint32_t> peak_pages_{0};

  std::thread worker_;
};

}  // namespace kcopyfs
