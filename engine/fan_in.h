// FanIn: joins the completions of several asynchronous pieces of one request into the request's one callback,
// which receives the first error (or success). Start with one reference per piece plus one for the issuer,
// and have the issuer call arrive() once it has issued every piece, so the callback cannot run while pieces
// are still being issued. Thread-safe; use through std::shared_ptr.
#pragma once

#include <functional>
#include <mutex>
#include <system_error>

namespace kcopyfs {

class FanIn {
 public:
  FanIn(unsigned references, std::function<void(std::error_code)> done)
      : left_(references), done_(std::move(done)) {}

  // Adds references (more pieces discovered while issuing). Must happen before the count can reach zero.
  void add(unsigned n = 1) {
    std::lock_guard lock(mutex_);
    left_ += n;
  }
  // Drops one reference; the last one runs the callback (on the calling thread, without the lock).
  void arrive(std::error_code ec = {}) {
    std::unique_lock lock(mutex_);
    if (ec && !first_) first_ = ec;
    if (--left_ > 0) return;
    lock.unlock();
    done_(first_);
  }

 private:
  std::mutex mutex_;
  unsigned left_;
  std::error_code first_;
  std::function<void(std::error_code)> done_;
};

}  // namespace kcopyfs
