#include "engine/fault_device.h"

namespace kcopyfs {

FaultDevice::FaultDevice(BlockDevice& inner) : inner_(inner) {
  timer_thread_ = std::thread([this] { timer_loop(); });
}

FaultDevice::~FaultDevice() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  timer_wake_.notify_all();
  timer_thread_.join();
}

void FaultDevice::add_rule(const Rule& rule) {
  std::lock_guard lock(mutex_);
  rules_.push_back(rule);
}

void FaultDevice::clear_rules() {
  std::lock_guard lock(mutex_);
  rules_.clear();
}

std::vector<FaultDevice::Record> FaultDevice::records() const {
  std::lock_guard lock(mutex_);
  return records_;
}

void FaultDevice::clear_records() {
  std::lock_guard lock(mutex_);
  records_.clear();
}

unsigned FaultDevice::peak_in_flight(Op op) const {
  std::lock_guard lock(mutex_);
  return peak_[static_cast<int>(op)];
}

void FaultDevice::seed(uint64_t seed) {
  std::lock_guard lock(mutex_);
  rng_.seed(seed);
}

FaultDevice::Injected FaultDevice::injected(Op op) const {
  std::lock_guard lock(mutex_);
  return injected_[static_cast<int>(op)];
}

uint64_t FaultDevice::injected_errors(int error) const {
  std::lock_guard lock(mutex_);
  auto it = injected_errors_.find(error);
  return it == injected_errors_.end() ? 0 : it->second;
}

void FaultDevice::clear_injected() {
  std::lock_guard lock(mutex_);
  for (auto& i : injected_) i = Injected{};
  injected_errors_.clear();
}

void FaultDevice::decide(Op op, Sector start, Sector count, int& error, std::chrono::microseconds& delay,
                         std::function<void()>& hook) {
  error = 0;
  delay = std::chrono::microseconds(0);
  for (Rule& r : rules_) {
    if (r.op != op || r.remaining == 0) continue;
    const bool overlaps = op == Op::flush || (start < r.start + r.count && r.start < start + count);
    if (!overlaps) continue;
    // A draw only for rules that need one, so adding a probability to one rule does not change the draws
    // another rule sees on a device that had none.
    if (r.probability < 1.0) {
      // 53 random bits as a double in [0, 1): the same on every platform, unlike the standard distributions.
      const double u = static_cast<double>(rng_() >> 11) * 0x1.0p-53;
      if (u >= r.probability) continue;
    }
    if (r.remaining > 0) --r.remaining;
    error = r.error;
    delay = r.delay;
    if (r.delay_max > r.delay) {
      const uint64_t span = static_cast<uint64_t>((r.delay_max - r.delay).count()) + 1;
      delay += std::chrono::microseconds(static_cast<int64_t>(rng_() % span));
    }
    hook = r.on_match;
    Injected& counts = injected_[static_cast<int>(op)];
    if (error != 0) {
      ++counts.failed;
      ++injected_errors_[error];
    }
    if (delay.count() > 0) ++counts.delayed;
    return;
  }
}

void FaultDevice::dispatch(Op op, Sector start, Sector count, IoCallback done,
                           std::function<void(IoCallback)> pass_on) {
  int error = 0;
  std::chrono::microseconds delay{0};
  std::function<void()> hook;
  {
    std::lock_guard lock(mutex_);
    decide(op, start, count, error, delay, hook);
    const int k = static_cast<int>(op);
    if (++in_flight_[k] > peak_[k]) peak_[k] = in_flight_[k];
  }
  if (hook) hook();
  auto finish = [this, op, start, count, done = std::move(done)](std::error_code ec) {
    {
      std::lock_guard lock(mutex_);
      --in_flight_[static_cast<int>(op)];
      records_.push_back(Record{op, start, count, ec.value()});
    }
    done(ec);
  };
  if (error != 0) {
    schedule(delay, [finish, error] { finish(std::error_code(error, std::generic_category())); });
  } else if (delay.count() > 0) {
    schedule(delay, [finish, pass_on = std::move(pass_on)] { pass_on(finish); });
  } else {
    pass_on(std::move(finish));
  }
}

void FaultDevice::schedule(std::chrono::microseconds delay, std::function<void()> fire) {
  {
    std::lock_guard lock(mutex_);
    timers_.push(Timed{std::chrono::steady_clock::now() + delay, timer_seq_++, std::move(fire)});
  }
  timer_wake_.notify_all();
}

void FaultDevice::timer_loop() {
  std::unique_lock lock(mutex_);
  for (;;) {
    if (timers_.empty()) {
      if (stopping_) return;
      timer_wake_.wait(lock);
      continue;
    }
    const auto due = timers_.top().due;
    if (std::chrono::steady_clock::now() < due) {
      timer_wake_.wait_until(lock, due);
      continue;
    }
    auto fire = std::move(const_cast<Timed&>(timers_.top()).fire);
    timers_.pop();
    lock.unlock();
    fire();
    lock.lock();
  }
}

void FaultDevice::read(Bytes offset, std::span<std::byte> buffer, IoCallback done, FixedBuffer fixed) {
  dispatch(
      Op::read, to_sectors(offset), to_sectors(Bytes(buffer.size())), std::move(done),
      [this, offset, buffer, fixed](IoCallback cb) { inner_.read(offset, buffer, std::move(cb), fixed); });
}

void FaultDevice::write(Bytes offset, std::span<const std::byte> buffer, IoCallback done, FixedBuffer fixed) {
  dispatch(
      Op::write, to_sectors(offset), to_sectors(Bytes(buffer.size())), std::move(done),
      [this, offset, buffer, fixed](IoCallback cb) { inner_.write(offset, buffer, std::move(cb), fixed); });
}

void FaultDevice::flush(IoCallback done) {
  dispatch(Op::flush, Sector(0), Sector(0), std::move(done),
           [this](IoCallback cb) { inner_.flush(std::move(cb)); });
}

void FaultDevice::write_zeroes(Bytes offset, Bytes length, bool may_unmap, IoCallback done) {
  dispatch(Op::write_zeroes, to_sectors(offset), to_sectors(length), std::move(done),
           [this, offset, length, may_unmap](IoCallback cb) {
             inner_.write_zeroes(offset, length, may_unmap, std::move(cb));
           });
}

}  // namespace kcopyfs
