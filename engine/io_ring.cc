#include "engine/io_ring.h"

#include <sys/uio.h>

#include <cstring>

namespace kcopyfs {

struct IoRing::Pending {
  IoOp op;
  uint64_t done_bytes = 0;  // reads and writes: how much has completed so far
};

IoRing::IoRing(unsigned entries) : cq_capacity_(entries * 2) { (void)entries; }

Result<std::unique_ptr<IoRing>> IoRing::create(const Options& options) {
  std::unique_ptr<IoRing> r(new IoRing(options.entries));
  io_uring_params params{};
  params.flags = IORING_SETUP_CQSIZE;
  params.cq_entries = options.entries * 2;
  int rc = -EINVAL;
  if (options.sq_poll_idle.count() > 0) {
    io_uring_params polled = params;
    polled.flags |= IORING_SETUP_SQPOLL;
    polled.sq_thread_idle = static_cast<unsigned>(options.sq_poll_idle.count());
    rc = io_uring_queue_init_params(options.entries, &r->ring_, &polled);
    if (rc == 0 && (polled.features & IORING_FEAT_SQPOLL_NONFIXED) == 0) {
      // Before Linux 5.11 a polled ring only takes registered files: every plain fd would fail with EBADF.
      io_uring_queue_exit(&r->ring_);
      rc = -EINVAL;
    }
    if (rc == 0) params = polled;
  }
  if (rc < 0) rc = io_uring_queue_init_params(options.entries, &r->ring_, &params);
  if (rc < 0) return Error::from_errno(-rc, "io_uring_queue_init");
  r->cq_capacity_ = params.cq_entries;
  if (options.fixed_buffer_slots > 0 &&
      io_uring_register_buffers_sparse(&r->ring_, options.fixed_buffer_slots) == 0) {
    r->fixed_slots_ = options.fixed_buffer_slots;
    r->slot_used_.assign(options.fixed_buffer_slots, false);
  }
  IoRing* raw = r.get();
  r->completion_thread_ = std::thread([raw] { raw->completion_loop(); });
  return r;
}

namespace {
std::mutex shared_mutex;
bool shared_made = false;        // guarded by shared_mutex
IoRing::Options shared_options;  // guarded by shared_mutex
}  // namespace

Status IoRing::configure_shared(const Options& options) {
  std::lock_guard lock(shared_mutex);
  if (shared_made)
    return Error(std::error_code(EBUSY, std::generic_category()), "the shared io_uring exists already");
  shared_options = options;
  return {};
}

Result<IoRing*> IoRing::shared() {
  // Deliberately never destroyed: devices and clients with static lifetime may still use it during exit.
  static Result<IoRing*> ring = []() -> Result<IoRing*> {
    Options options;
    {
      std::lock_guard lock(shared_mutex);
      shared_made = true;
      options = shared_options;
    }
    auto r = create(options);
    if (!r) return r.error();
    return std::move(r).value().release();
  }();
  return ring;
}

IoRing::~IoRing() {
  {
    std::lock_guard lock(sq_mutex_);
    io_uring_sqe* sqe = get_sqe_locked();
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data(sqe, nullptr);  // the stop marker
    ++in_kernel_;
    io_uring_submit(&ring_);
  }
  completion_thread_.join();
  io_uring_queue_exit(&ring_);
}

io_uring_sqe* IoRing::get_sqe_locked() {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  while (sqe == nullptr) {
    // Full: hand the queue to the kernel. Without polling, io_uring_enter consumes it at once; with it, the
    // polling thread does, soon (wait for it).
    io_uring_submit(&ring_);
    if (polling()) io_uring_sqring_wait(&ring_);
    sqe = io_uring_get_sqe(&ring_);
  }
  return sqe;
}

void IoRing::prepare_locked(Pending* p) {
  io_uring_sqe* sqe = get_sqe_locked();
  const IoOp& op = p->op;
  std::byte* buf = op.buffer + p->done_bytes;
  const uint64_t off = op.offset + p->done_bytes;
  const auto len = static_cast<unsigned>(op.length - p->done_bytes);
  switch (op.kind) {
    case IoOpKind::read:
      if (op.fixed_index >= 0)
        io_uring_prep_read_fixed(sqe, op.fd, buf, len, off, op.fixed_index);
      else
        io_uring_prep_read(sqe, op.fd, buf, len, off);
      break;
    case IoOpKind::write:
      if (op.fixed_index >= 0)
        io_uring_prep_write_fixed(sqe, op.fd, buf, len, off, op.fixed_index);
      else
        io_uring_prep_write(sqe, op.fd, buf, len, off);
      break;
    case IoOpKind::fdatasync:
      io_uring_prep_fsync(sqe, op.fd, IORING_FSYNC_DATASYNC);
      break;
    case IoOpKind::fsync:
      io_uring_prep_fsync(sqe, op.fd, 0);
      break;
    case IoOpKind::nop:
      io_uring_prep_nop(sqe);
      break;
    case IoOpKind::fallocate:
      io_uring_prep_fallocate(sqe, op.fd, op.fallocate_mode, static_cast<off_t>(op.offset),
                              static_cast<off_t>(op.length));
      break;
  }
  io_uring_sqe_set_data(sqe, p);
  ++in_kernel_;
}

void IoRing::submit(std::span<IoOp> ops) {
  std::lock_guard lock(sq_mutex_);
  for (IoOp& op : ops) {
    auto p = std::make_unique<Pending>();
    p->op = std::move(op);
    if (in_kernel_ >= cq_capacity_ || !backlog_.empty()) {
      backlog_.push_back(std::move(p));
      continue;
    }
    prepare_locked(p.release());
  }
  io_uring_submit(&ring_);
}

void IoRing::issue(std::unique_ptr<Pending> p) {
  std::lock_guard lock(sq_mutex_);
  if (in_kernel_ >= cq_capacity_ || !backlog_.empty()) {
    backlog_.push_back(std::move(p));
    return;
  }
  prepare_locked(p.release());
  io_uring_submit(&ring_);
}

void IoRing::complete(Pending* raw, int res) {
  std::unique_ptr<Pending> p(raw);
  if (res == -EAGAIN || res == -EINTR) {
    issue(std::move(p));
    return;
  }
  if (p->op.kind == IoOpKind::nop) res = -static_cast<int>(p->op.length);
  const bool is_rw = p->op.kind == IoOpKind::read || p->op.kind == IoOpKind::write;
  if (res >= 0 && is_rw) {
    if (res == 0) {
      if (p->op.kind == IoOpKind::write) {
        res = -EIO;  // a write that makes no progress would loop forever
      } else {
        std::memset(p->op.buffer + p->done_bytes, 0, p->op.length - p->done_bytes);
        p->done_bytes = p->op.length;
      }
    } else {
      p->done_bytes += static_cast<uint64_t>(res);
    }
    if (res >= 0 && p->done_bytes < p->op.length) {
      issue(std::move(p));
      return;
    }
    if (res >= 0) res = static_cast<int>(p->op.length);
  } else if (res > 0) {
    res = 0;
  }
  IoCompletion done = std::move(p->op.done);
  p.reset();
  done(res);
}

void IoRing::completion_loop() {
  bool stopping = false;
  while (!stopping) {
    io_uring_cqe* cqe = nullptr;
    int rc = io_uring_wait_cqe(&ring_, &cqe);
    if (rc == -EINTR) continue;
    if (rc < 0) continue;  // transient (e.g. -EAGAIN); the next wait returns the queued completions
    // Drain everything available in one pass; completions run after the ring's indices advance.
    std::vector<std::pair<Pending*, int>> batch;
    unsigned head;
    unsigned seen = 0;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      auto* p = static_cast<Pending*>(io_uring_cqe_get_data(cqe));
      if (p == nullptr)
        stopping = true;
      else
        batch.emplace_back(p, cqe->res);
      ++seen;
    }
    io_uring_cq_advance(&ring_, seen);
    {
      std::lock_guard lock(sq_mutex_);
      in_kernel_ -= seen;
      bool any = false;
      while (!backlog_.empty() && in_kernel_ < cq_capacity_) {
        prepare_locked(backlog_.front().release());
        backlog_.pop_front();
        any = true;
      }
      if (any) io_uring_submit(&ring_);
    }
    for (auto& [p, res] : batch) complete(p, res);
  }
}

void IoRing::defer(std::function<void()> fn) {
  IoOp op;
  op.kind = IoOpKind::nop;
  op.done = [fn = std::move(fn)](int) { fn(); };
  submit(std::move(op));
}

std::optional<int> IoRing::register_buffer(std::byte* base, uint64_t length) {
  std::lock_guard lock(slots_mutex_);
  for (unsigned i = 0; i < fixed_slots_; ++i) {
    if (slot_used_[i]) continue;
    iovec iov{base, length};
    __u64 tag = 0;
    if (io_uring_register_buffers_update_tag(&ring_, i, &iov, &tag, 1) != 1) return std::nullopt;
    slot_used_[i] = true;
    return static_cast<int>(i);
  }
  return std::nullopt;
}

void IoRing::unregister_buffer(int index) {
  std::lock_guard lock(slots_mutex_);
  iovec iov{nullptr, 0};
  __u64 tag = 0;
  io_uring_register_buffers_update_tag(&ring_, static_cast<unsigned>(index), &iov, &tag, 1);
  slot_used_[static_cast<unsigned>(index)] = false;
}

}  // namespace kcopyfs
