#include "engine/recording_device.h"

#include <utility>

namespace kcopyfs {

DeviceId WriteLog::add_device(std::string name, Bytes size) {
  std::lock_guard lock(mutex_);
  devices_.push_back(Device{std::move(name), size});
  return static_cast<DeviceId>(devices_.size() - 1);
}

uint64_t WriteLog::mark(std::string label) {
  WriteEvent e;
  e.kind = WriteEvent::Kind::marker;
  e.label = std::move(label);
  return append(std::move(e));
}

uint64_t WriteLog::append(WriteEvent event) {
  std::lock_guard lock(mutex_);
  const uint64_t index = events_.size();
  if (event.kind != WriteEvent::Kind::write_completed && event.kind != WriteEvent::Kind::flush_completed)
    event.op = index;
  events_.push_back(std::move(event));
  return index;
}

uint64_t WriteLog::size() const {
  std::lock_guard lock(mutex_);
  return events_.size();
}

std::vector<WriteEvent> WriteLog::events() const {
  std::lock_guard lock(mutex_);
  return events_;
}

std::vector<WriteLog::Device> WriteLog::devices() const {
  std::lock_guard lock(mutex_);
  return devices_;
}

RecordingDevice::RecordingDevice(BlockDevice& inner, WriteLog& log, DeviceId id)
    : inner_(inner), log_(log), id_(id) {}

void RecordingDevice::read(Bytes offset, std::span<std::byte> buffer, IoCallback done, FixedBuffer fixed) {
  inner_.read(offset, buffer, std::move(done), fixed);
}

namespace {

// The completion half of a recorded write or flush: recorded before the caller hears of it, so that anything
// the caller does in response (a flush after a write) comes later in the log.
IoCallback record_completion(WriteLog& log, DeviceId id, WriteEvent::Kind kind, uint64_t op,
                             IoCallback done) {
  return [&log, id, kind, op, done = std::move(done)](std::error_code ec) {
    WriteEvent e;
    e.kind = kind;
    e.device = id;
    e.op = op;
    e.error = ec.value();
    log.append(std::move(e));
    done(ec);
  };
}

}  // namespace

void RecordingDevice::write(Bytes offset, std::span<const std::byte> buffer, IoCallback done,
                            FixedBuffer fixed) {
  WriteEvent e;
  e.kind = WriteEvent::Kind::write_submitted;
  e.device = id_;
  e.offset = offset;
  e.length = Bytes(buffer.size());
  // The copy is taken now: the caller may reuse the buffer as soon as done runs.
  e.data = std::make_shared<const std::vector<std::byte>>(buffer.begin(), buffer.end());
  const uint64_t op = log_.append(std::move(e));
  inner_.write(offset, buffer,
               record_completion(log_, id_, WriteEvent::Kind::write_completed, op, std::move(done)), fixed);
}

void RecordingDevice::write_zeroes(Bytes offset, Bytes length, bool may_unmap, IoCallback done) {
  WriteEvent e;
  e.kind = WriteEvent::Kind::write_submitted;
  e.device = id_;
  e.offset = offset;
  e.length = length;
  e.zeroes = true;
  const uint64_t op = log_.append(std::move(e));
  inner_.write_zeroes(offset, length, may_unmap,
                      record_completion(log_, id_, WriteEvent::Kind::write_completed, op, std::move(done)));
}

void RecordingDevice::flush(IoCallback done) {
  WriteEvent e;
  e.kind = WriteEvent::Kind::flush_submitted;
  e.device = id_;
  const uint64_t op = log_.append(std::move(e));
  inner_.flush(record_completion(log_, id_, WriteEvent::Kind::flush_completed, op, std::move(done)));
}

}  // namespace kcopyfs
