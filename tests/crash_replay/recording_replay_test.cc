// RecordingDevice and the replayer on their own: what the log holds, which writes a flush covers, what a cut
// keeps, tears and drops.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <mutex>

#include "engine/recording_device.h"
#include "tests/crash_replay/replay.h"
#include "tests/crash_replay/replay_harness.h"

namespace kcopyfs::replay {
namespace {

using Kind = WriteEvent::Kind;

// A device whose completions wait until the test releases them, so that a test decides the order of
// completions and submissions exactly. Data is applied at the call (the image is not what is tested here).
class HeldDevice final : public BlockDevice {
 public:
  explicit HeldDevice(uint64_t size) : image_(size) {}
  const std::string& path() const override { return name_; }
  Bytes size() const override { return Bytes(image_.size()); }
  uint32_t logical_block_size() const override { return kSectorSize; }
  bool read_only() const override { return false; }
  void read(Bytes, std::span<std::byte>, IoCallback done, FixedBuffer) override { hold(std::move(done)); }
  void write(Bytes, std::span<const std::byte>, IoCallback done, FixedBuffer) override {
    hold(std::move(done));
  }
  void flush(IoCallback done) override { hold(std::move(done)); }
  void write_zeroes(Bytes, Bytes, bool, IoCallback done) override { hold(std::move(done)); }
  // Completes the oldest held operation (on the calling thread: never inside the device's call).
  void release_oldest() {
    IoCallback cb;
    {
      std::lock_guard lock(mutex_);
      ASSERT_FALSE(held_.empty());
      cb = std::move(held_.front());
      held_.pop_front();
    }
    cb({});
  }

 private:
  void hold(IoCallback done) {
    std::lock_guard lock(mutex_);
    held_.push_back(std::move(done));
  }
  const std::string name_ = "held";
  Image image_;
  std::mutex mutex_;
  std::deque<IoCallback> held_;
};

std::vector<std::byte> filled(size_t n, uint8_t v) { return std::vector<std::byte>(n, std::byte{v}); }

bool all_sectors(const Image& img, uint64_t offset, uint64_t length, uint8_t v) {
  return std::all_of(img.begin() + static_cast<long>(offset),
                     img.begin() + static_cast<long>(offset + length),
                     [v](std::byte b) { return b == std::byte{v}; });
}

// W1 completes before the flush is issued, W2 is issued before the flush but completes after: the flush
// covers W1 only.
TEST(RecordingDevice, FlushCoversExactlyTheWritesCompletedBeforeIt) {
  WriteLog log;
  HeldDevice inner(64 * 1024);
  const DeviceId id = log.add_device("held", inner.size());
  RecordingDevice dev(inner, log, id);
  const auto w1 = filled(4096, 0x11), w2 = filled(4096, 0x22);
  int completions = 0;
  auto count = [&](std::error_code ec) {
    EXPECT_FALSE(ec);
    ++completions;
  };
  dev.write(Bytes(0), w1, count);
  inner.release_oldest();  // W1 completes
  dev.write(Bytes(8192), w2, count);
  dev.flush(count);
  inner.release_oldest();  // W2 completes after the flush was issued
  inner.release_oldest();  // the flush completes
  EXPECT_EQ(completions, 3);

  const auto events = log.events();
  ASSERT_EQ(events.size(), 6u);
  const Kind kinds[] = {Kind::write_submitted, Kind::write_completed, Kind::write_submitted,
                        Kind::flush_submitted, Kind::write_completed, Kind::flush_completed};
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(events[i].kind, kinds[i]) << "event " << i;
  EXPECT_EQ(events[1].op, 0u);
  EXPECT_EQ(events[4].op, 2u);
  EXPECT_EQ(events[5].op, 3u);
  ASSERT_TRUE(events[0].data);
  EXPECT_EQ(*events[0].data, w1);

  const std::vector<Image> initial{Image(64 * 1024)};
  bool w2_absent_seen = false, w2_present_seen = false;
  for (unsigned v = 1; v <= 64; ++v) {
    auto rng = case_rng(7, 6, v);
    const auto img = rebuild(events, initial, 6, v, rng)[0];
    EXPECT_TRUE(all_sectors(img, 0, 4096, 0x11)) << "the covered write is not durable in variant " << v;
    w2_absent_seen |= all_sectors(img, 8192, 4096, 0);
    w2_present_seen |= all_sectors(img, 8192, 4096, 0x22);
  }
  EXPECT_TRUE(w2_absent_seen) << "the write completed after the flush was issued was never dropped";
  EXPECT_TRUE(w2_present_seen);

  // Cut before the flush completed: W1 is not durable yet, some variant drops it.
  bool w1_absent_seen = false;
  for (unsigned v = 1; v <= 64; ++v) {
    auto rng = case_rng(7, 5, v);
    w1_absent_seen |= all_sectors(rebuild(events, initial, 5, v, rng)[0], 0, 4096, 0);
  }
  EXPECT_TRUE(w1_absent_seen);
  // The prefix keeps every completed write and drops the one in flight.
  auto rng = case_rng(7, 4, 0);
  const auto prefix = rebuild(events, initial, 4, 0, rng)[0];
  EXPECT_TRUE(all_sectors(prefix, 0, 4096, 0x11));
  EXPECT_TRUE(all_sectors(prefix, 8192, 4096, 0));
}

// The data is copied when the write is issued: a caller reusing its buffer later does not change the log.
TEST(RecordingDevice, CopiesTheDataAtSubmissionAndRecordsZeroesAndMarkers) {
  WriteLog log;
  HeldDevice inner(16 * 1024);
  const DeviceId id = log.add_device("held", inner.size());
  RecordingDevice dev(inner, log, id);
  auto buf = filled(1024, 0x33);
  dev.write(Bytes(512), buf, [](std::error_code) {});
  std::fill(buf.begin(), buf.end(), std::byte{0x44});
  const uint64_t m = log.mark("user: write returned");
  dev.write_zeroes(Bytes(4096), Bytes(2048), false, [](std::error_code) {});
  inner.release_oldest();
  inner.release_oldest();
  const auto events = log.events();
  ASSERT_EQ(events.size(), 5u);
  EXPECT_EQ(*events[0].data, filled(1024, 0x33));
  EXPECT_EQ(events[m].kind, Kind::marker);
  EXPECT_EQ(events[m].label, "user: write returned");
  EXPECT_TRUE(events[2].zeroes);
  EXPECT_EQ(events[2].offset, Bytes(4096));
  EXPECT_EQ(events[2].length, Bytes(2048));

  // The prefix applies both: zeroes over a non-zero initial image.
  const std::vector<Image> initial{Image(16 * 1024, std::byte{0x55})};
  auto rng = case_rng(1, 5, 0);
  const auto img = rebuild(events, initial, 5, 0, rng)[0];
  EXPECT_TRUE(all_sectors(img, 512, 1024, 0x33));
  EXPECT_TRUE(all_sectors(img, 4096, 2048, 0));
  EXPECT_TRUE(all_sectors(img, 0, 512, 0x55));
}

// A torn write: each 512-byte sector is old or new on its own, and some variant mixes them.
TEST(Replay, TornWriteMixesSectors) {
  WriteLog log;
  HeldDevice inner(64 * 1024);
  RecordingDevice dev(inner, log, log.add_device("held", inner.size()));
  dev.write(Bytes(0), filled(16 * kSectorSize, 0x66), [](std::error_code) {});
  inner.release_oldest();
  const auto events = log.events();
  const std::vector<Image> initial{Image(64 * 1024, std::byte{0x01})};
  bool mixed = false;
  for (unsigned v = 1; v <= 64; ++v) {
    auto rng = case_rng(3, 2, v);
    const auto img = rebuild(events, initial, 2, v, rng)[0];
    unsigned new_sectors = 0;
    for (unsigned s = 0; s < 16; ++s) {
      const bool is_new = all_sectors(img, s * kSectorSize, kSectorSize, 0x66);
      EXPECT_TRUE(is_new || all_sectors(img, s * kSectorSize, kSectorSize, 0x01)) << "sector " << s;
      new_sectors += is_new ? 1 : 0;
    }
    mixed |= new_sectors > 0 && new_sectors < 16;
  }
  EXPECT_TRUE(mixed) << "no variant tore the write";
}

// Writes issued at or after the cut are never there; a flush of another device covers nothing here.
TEST(Replay, WritesAfterTheCutAreAbsentAndFlushesArePerDevice) {
  WriteLog log;
  HeldDevice a_inner(8192), b_inner(8192);
  RecordingDevice a(a_inner, log, log.add_device("a", a_inner.size()));
  RecordingDevice b(b_inner, log, log.add_device("b", b_inner.size()));
  a.write(Bytes(0), filled(4096, 0x0a), [](std::error_code) {});
  a_inner.release_oldest();
  b.flush([](std::error_code) {});
  b_inner.release_oldest();
  const uint64_t cut = log.size();
  b.write(Bytes(0), filled(4096, 0x0b), [](std::error_code) {});
  b_inner.release_oldest();
  a.flush([](std::error_code) {});
  a_inner.release_oldest();
  const auto events = log.events();
  const std::vector<Image> initial{Image(8192), Image(8192)};
  bool a_dropped = false;
  for (unsigned v = 0; v <= 64; ++v) {
    auto rng = case_rng(5, cut, v);
    const auto imgs = rebuild(events, initial, cut, v, rng);
    EXPECT_TRUE(all_sectors(imgs[1], 0, 8192, 0)) << "a write issued after the cut is there, variant " << v;
    a_dropped |= all_sectors(imgs[0], 0, 4096, 0);
  }
  EXPECT_TRUE(a_dropped) << "b's flush made a's write durable";
  // At the end a's flush covers its write in every variant.
  for (unsigned v = 0; v <= 16; ++v) {
    auto rng = case_rng(5, events.size(), v);
    EXPECT_TRUE(all_sectors(rebuild(events, initial, events.size(), v, rng)[0], 0, 4096, 0x0a));
  }
  // Cut points: just before and just after each flush completion.
  std::mt19937_64 rng(1);
  const auto cuts = cut_points(events, 0, rng);
  ASSERT_EQ(cuts.size(), 4u);
  EXPECT_EQ(events[cuts[0]].kind, Kind::flush_completed);
  EXPECT_EQ(events[cuts[1] - 1].kind, Kind::flush_completed);
  EXPECT_EQ(events[cuts[2]].kind, Kind::flush_completed);
  EXPECT_EQ(events[cuts[3] - 1].kind, Kind::flush_completed);
}

}  // namespace
}  // namespace kcopyfs::replay
