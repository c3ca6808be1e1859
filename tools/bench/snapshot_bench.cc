// snapshot_bench: what dm-snapshot copy-on-write costs an origin in kcopyfs, measured on the library (no
// FUSE).
//
// Parts (all in one run; tools/bench/snapshot.sh wraps it, docs/benchmarks.md explains the figures):
//  rand  4 KiB random first writes at queue depth 16 through kcopyfs::Origin with 0..8 persistent snapshots,
//        against the same writes straight to the raw FileDevice. Offsets come from a shuffled list of
//        distinct slots (one slot per chunk of the configuration, a random 4 KiB block inside it), so every
//        write lands on a chunk no snapshot holds yet; the copies per write are measured, not assumed.
//  seq   1 MiB sequential writes at queue depth 4, same configurations.
//        With --writable-snapshot, both parts write into the first snapshot (created writable) instead of
//        the origin: first writes into a writable snapshot (its COW only; the origin is read for partial
//        chunks), the figure tools/bench/views.sh measures as wsnap through the mount.
//  load  Load time of a persistent store holding N (1,000,000) exceptions, built directly in the kernel's
//        format with persistent_format.h, cold cache: PersistentStore::open alone and
//        Origin::attach_snapshot.
//  mem   Bytes per exception of ExceptionTable for random and sequential fills, and the RSS of an attach.
//
// Every write configuration gets fresh files (origin filled with data, COW files sparse), the page cache is
// dropped before each measurement when running as root, and repetitions run round-robin in a rotating order.
// Timings include a final flush of the device written.
#include <fcntl.h>
#include <malloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "engine/block_device.h"
#include "engine/fault_device.h"
#include "engine/file_device.h"
#include "engine/fill_ahead_device.h"
#include "engine/sync_io.h"
#include "snapshot/exception_table.h"
#include "snapshot/origin.h"
#include "snapshot/persistent_format.h"
#include "snapshot/persistent_store.h"
#include "tools/bench/bench_common.h"

namespace kcopyfs {
namespace {

using namespace bench;  // NOLINT: the shared benchmark helpers

namespace fmt = cow_format;

// ---------------------------------------------------------------------------------------------------------
// Options

struct Options {
  std::string workdir = "/var/tmp";
  unsigned reps = 3;
  uint64_t origin_bytes = 1024 * kMiB;
  double seconds = 3.0;  // cap of one write measurement
  std::vector<unsigned> snapshots{0, 1, 2, 4, 8};
  std::vector<uint64_t> chunks_kib{4, 64};
  std::vector<std::string> parts{"rand", "seq", "load", "mem"};
  uint64_t exceptions = 1000000;
  uint64_t cow_prefill = 0;  // bytes written at the start of each COW file before the snapshot is created
  // --model: fixed latencies (µs) added in front of every device of the write parts; empty: none.
  std::optional<std::array<unsigned, 3>> model;
  std::string csv;
  bool keep_going_without_root = true;
  bool writable_snapshot = false;  // the write parts write into snapshot s0 (writable), not the origin
  bool fill_ahead = true;          // COW files behind engine/fill_ahead_device.h, as the origin makes them
  uint64_t write_back = Origin::kDefaultWriteBackLimit.value();  // Origin::set_write_back_limit
};

Options parse(int argc, char** argv) {
  namespace po = boost::program_options;
  Options o;
  std::string origin_size = "1G", snapshots = "0,1,2,4,8", chunks = "4,64", parts = "rand,seq,load,mem";
  std::string prefill = "0", model, write_back = std::to_string(Origin::kDefaultWriteBackLimit.value());
  bool no_fill_ahead = false;
  po::options_description options("Options");
  options.add_options()("workdir", po::value(&o.workdir),
                        "scratch directory is made inside DIR and removed at exit (default /var/tmp)")(
      "reps", po::value(&o.reps), "repetitions, round-robin over configurations (default 3)")(
      "origin-size", po::value(&origin_size),
      "origin size for the write parts, K/M/G suffixes binary (default 1G)")(
      "seconds", po::value(&o.seconds), "time cap of one write measurement (default 3)")(
      "snapshots", po::value(&snapshots), "snapshot counts, comma separated (default 0,1,2,4,8)")(
      "chunks", po::value(&chunks), "chunk sizes in KiB (default 4,64)")(
      "parts", po::value(&parts), "any of rand,seq,load,mem (default all)")(
      "exceptions", po::value(&o.exceptions), "exceptions in the load and mem parts (default 1000000)")(
      "cow-prefill", po::value(&prefill),
      "write data over the first SIZE bytes of every COW file before creating the snapshot (an allocated "
      "COW, like a logical volume); default 0: sparse files")(
      "model", po::value(&model),
      "R,W,F: add fixed latencies (microseconds) to every read, write and flush of the write parts (engine "
      "FaultDevice), for comparing algorithms on a predictable device")(
      "csv", po::value(&o.csv), "also write every write measurement to FILE")(
      "no-fill-ahead", po::bool_switch(&no_fill_ahead),
      "leave COW files sparse until the store writes them (Origin::set_cow_fill_ahead(false)); default: "
      "their holes are filled ahead of the store's allocation point in the background, as in the daemon")(
      "write-back", po::value(&write_back),
      "Origin::set_write_back_limit: at most SIZE bytes of origin writes acknowledged before their "
      "copy-on-write is done (0: each acknowledged once on the device, as the kernel does); default 16M")(
      "writable-snapshot", po::bool_switch(&o.writable_snapshot),
      "the write parts write into the first snapshot, created writable, instead of the origin (first writes "
      "into a writable snapshot; configurations without snapshots are still raw and origin)");
  parse_options(argc, argv, "Usage: snapshot_bench [OPTIONS]", options);
  o.origin_bytes = size_or_die(origin_size);
  o.cow_prefill = size_or_die(prefill);
  o.fill_ahead = !no_fill_ahead;
  o.write_back = size_or_die(write_back);
  o.snapshots.clear();
  for (uint64_t n : numbers_or_die("--snapshots", snapshots)) o.snapshots.push_back(static_cast<unsigned>(n));
  o.chunks_kib = numbers_or_die("--chunks", chunks);
  o.parts = split(parts);
  if (!model.empty()) {
    const auto v = numbers_or_die("--model", model);
    if (v.size() != 3) die("--model takes READ_US,WRITE_US,FLUSH_US");
    o.model = std::array<unsigned, 3>{static_cast<unsigned>(v[0]), static_cast<unsigned>(v[1]),
                                      static_cast<unsigned>(v[2])};
  }
  if (o.reps == 0) die("--reps must be at least 1");
  if (o.origin_bytes == 0 || o.origin_bytes % kMiB != 0)
    die("--origin-size must be a positive multiple of 1 MiB");
  for (uint64_t c : o.chunks_kib) {
    if (c < 4 || c > 512 || (c & (c - 1)) != 0) die("chunk sizes are powers of two from 4 to 512 KiB");
  }
  for (unsigned s : o.snapshots) {
    if (s > 64) die("at most 64 snapshots");
  }
  return o;
}

bool has_part(const Options& o, const std::string& p) {
  return std::find(o.parts.begin(), o.parts.end(), p) != o.parts.end();
}

// ---------------------------------------------------------------------------------------------------------
// System helpers

// A field of /proc/self/status in KiB (VmRSS, VmHWM).
uint64_t status_kib(const char* field) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(field);
  while (std::getline(f, line)) {
    if (line.compare(0, n, field) == 0 && line.size() > n && line[n] == ':')
      return std::strtoull(line.c_str() + n + 1, nullptr, 10);
  }
  return 0;
}

// Resets VmHWM to the current RSS (Linux 4.0+). Result: false when the kernel refused.
bool reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5\n";
  return static_cast<bool>(f);
}

void make_file(const std::string& path, uint64_t size) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(size)) != 0)
    die("create " + path + ": " + std::strerror(errno));
  ::close(fd);
}

// ---------------------------------------------------------------------------------------------------------
// A pass-through BlockDevice that counts what goes to the device below it.

struct Counters {
  std::atomic<uint64_t> reads{0}, read_bytes{0}, writes{0}, write_bytes{0}, flushes{0};
  std::atomic<uint64_t> metadata_writes{0};  // writes to a metadata chunk of a COW store (area or zeroing)
  std::atomic<uint64_t> read_ns{0}, write_ns{0}, flush_ns{0};  // summed submit-to-callback times
  void reset() {
    for (auto* a : {&reads, &read_bytes, &writes, &write_bytes, &flushes, &metadata_writes, &read_ns,
                    &write_ns, &flush_ns})
      a->store(0);
  }
};

// Wraps done so that the time from now to its call is added to *sum.
IoCallback timed(IoCallback done, std::atomic<uint64_t>* sum) {
  return [done = std::move(done), sum, t0 = Clock::now()](std::error_code ec) {
    sum->fetch_add(static_cast<uint64_t>(
                       std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count()),
                   std::memory_order_relaxed);
    done(ec);
  };
}

class CountingDevice final : public BlockDevice {
 public:
  // cow_chunk: the chunk size when inner holds a persistent COW store (its metadata writes are counted).
  CountingDevice(std::unique_ptr<BlockDevice> inner, std::shared_ptr<Counters> counters,
                 Sector cow_chunk = {})
      : inner_(std::move(inner)), c_(std::move(counters)), cow_chunk_(cow_chunk) {}
  const std::string& path() const override { return inner_->path(); }
  Bytes size() const override { return inner_->size(); }
  uint32_t logical_block_size() const override { return inner_->logical_block_size(); }
  uint32_t memory_alignment() const override { return inner_->memory_alignment(); }
  bool read_only() const override { return inner_->read_only(); }
  void read(Bytes offset, std::span<std::byte> buffer, IoCallback done, FixedBuffer fixed) override {
    c_->reads.fetch_add(1, std::memory_order_relaxed);
    c_->read_bytes.fetch_add(buffer.size(), std::memory_order_relaxed);
    inner_->read(offset, buffer, timed(std::move(done), &c_->read_ns), fixed);
  }
  void write(Bytes offset, std::span<const std::byte> buffer, IoCallback done, FixedBuffer fixed) override {
    c_->writes.fetch_add(1, std::memory_order_relaxed);
    c_->write_bytes.fetch_add(buffer.size(), std::memory_order_relaxed);
    if (cow_chunk_.value() != 0 &&
        fmt::is_metadata_chunk(cow_chunk_, ChunkIndex(offset.value() / to_bytes(cow_chunk_).value())))
      c_->metadata_writes.fetch_add(1, std::memory_order_relaxed);
    inner_->write(offset, buffer, timed(std::move(done), &c_->write_ns), fixed);
  }
  void flush(IoCallback done) override {
    c_->flushes.fetch_add(1, std::memory_order_relaxed);
    inner_->flush(timed(std::move(done), &c_->flush_ns));
  }
  void write_zeroes(Bytes offset, Bytes length, bool may_unmap, IoCallback done) override {
    c_->writes.fetch_add(1, std::memory_order_relaxed);
    inner_->write_zeroes(offset, length, may_unmap, std::move(done));
  }
  Extent extent_at(Bytes offset) const override { return inner_->extent_at(offset); }

 private:
  std::unique_ptr<BlockDevice> inner_;
  std::shared_ptr<Counters> c_;
  const Sector cow_chunk_;
};

// A FileDevice behind an engine FaultDevice that delays every operation by a fixed time (--model).
class ModelDevice final : public BlockDevice {
 public:
  ModelDevice(std::unique_ptr<FileDevice> file, const std::array<unsigned, 3>& us)
      : file_(std::move(file)), fault_(*file_) {
    fault_.set_latency(FaultDevice::Op::read, std::chrono::microseconds(us[0]));
    fault_.set_latency(FaultDevice::Op::write, std::chrono::microseconds(us[1]));
    fault_.set_latency(FaultDevice::Op::flush, std::chrono::microseconds(us[2]));
  }
  const std::string& path() const override { return fault_.path(); }
  Bytes size() const override { return fault_.size(); }
  uint32_t logical_block_size() const override { return fault_.logical_block_size(); }
  uint32_t memory_alignment() const override { return fault_.memory_alignment(); }
  bool read_only() const override { return fault_.read_only(); }
  void read(Bytes offset, std::span<std::byte> buffer, IoCallback done, FixedBuffer fixed) override {
    fault_.read(offset, buffer, std::move(done), fixed);
  }
  void write(Bytes offset, std::span<const std::byte> buffer, IoCallback done, FixedBuffer fixed) override {
    fault_.write(offset, buffer, std::move(done), fixed);
  }
  void flush(IoCallback done) override { fault_.flush(std::move(done)); }
  void write_zeroes(Bytes offset, Bytes length, bool may_unmap, IoCallback done) override {
    fault_.write_zeroes(offset, length, may_unmap, std::move(done));
  }

 private:
  std::unique_ptr<FileDevice> file_;
  FaultDevice fault_;
};

std::unique_ptr<BlockDevice> open_target(const Options& o, const std::string& path) {
  if (o.model) return std::make_unique<ModelDevice>(open_device(path), *o.model);
  return open_device(path);
}

// ---------------------------------------------------------------------------------------------------------
// The write driver: keeps `depth` writes in flight on a BlockDevice through its callback API. Each completion
// issues the next write from the completion thread, as an fio-style engine would.

struct DriveResult {
  double seconds = 0;  // first submission to the end of the final flush
  uint64_t ops = 0;
  uint64_t bytes = 0;
  bool hit_op_limit = false;
  std::vector<uint32_t> latency_us;  // per completed op
  std::error_code error;
};

class Driver {
 public:
  Driver(BlockDevice& dev, unsigned depth, size_t io_bytes, const std::vector<uint64_t>& offsets,
         double seconds)
      : dev_(dev), depth_(depth), io_bytes_(io_bytes), offsets_(offsets), seconds_(seconds) {
    for (unsigned i = 0; i < depth; ++i) buffers_.push_back(random_buffer(io_bytes, 0x5eed + i));
    latency_.assign(offsets.size(), 0);
  }

  DriveResult run() {
    t0_ = Clock::now();
    deadline_ = t0_ + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds_));
    active_ = depth_;
    for (unsigned s = 0; s < depth_; ++s) issue(s);
    {
      std::unique_lock lock(mutex_);
      idle_.wait(lock, [this] { return active_ == 0; });
    }
    DriveResult r;
    if (auto ec = flush_sync(dev_)) r.error = ec;
    r.seconds = seconds_since(t0_);
    r.ops = completed_.load();
    r.bytes = r.ops * io_bytes_;
    r.hit_op_limit = r.ops == offsets_.size();
    if (!r.error) r.error = error_;
    // Slots claimed after the stop were never issued: they still hold 0.
    for (uint32_t l : latency_) {
      if (l != 0) r.latency_us.push_back(l - 1);
    }
    return r;
  }

 private:
  void issue(unsigned slot) {
    const uint64_t i = next_.fetch_add(1);
    if (i >= offsets_.size() || stop_.load(std::memory_order_relaxed)) {
      std::lock_guard lock(mutex_);
      if (--active_ == 0) idle_.notify_all();
      return;
    }
    const auto start = Clock::now();
    dev_.write(Bytes(offsets_[i]), std::span<const std::byte>(buffers_[slot].get(), io_bytes_),
               [this, slot, i, start](std::error_code ec) {
                 const auto now = Clock::now();
                 latency_[i] =
                     1 + static_cast<uint32_t>(
                             std::chrono::duration_cast<std::chrono::microseconds>(now - start).count());
                 if (ec) {
                   std::lock_guard lock(mutex_);
                   if (!error_) error_ = ec;
                   stop_ = true;
                 }
                 completed_.fetch_add(1, std::memory_order_relaxed);
                 if (now >= deadline_) stop_.store(true, std::memory_order_relaxed);
                 issue(slot);
               });
  }

  BlockDevice& dev_;
  const unsigned depth_;
  const size_t io_bytes_;
  const std::vector<uint64_t>& offsets_;
  const double seconds_;
  std::vector<Buffer> buffers_;
  std::vector<uint32_t> latency_;  // per op: 1 + microseconds, 0 when never issued
  Clock::time_point t0_, deadline_;
  std::atomic<uint64_t> next_{0};
  std::atomic<uint64_t> completed_{0};
  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  std::condition_variable idle_;
  unsigned active_ = 0;
  std::error_code error_;
};

// Makes a fresh image of `bytes` whose first `fill` bytes hold data (1 MiB writes, QD 8; durable); the rest
// is a hole. Origins are filled whole, so that copy-on-write reads real blocks and origin writes overwrite
// allocated ones.
void fill_file(const std::string& path, uint64_t bytes, uint64_t fill) {
  make_file(path, bytes);
  if (fill == 0) return;
  auto dev = open_device(path);
  std::vector<uint64_t> offsets;
  for (uint64_t off = 0; off + kMiB <= std::min(fill, bytes); off += kMiB) offsets.push_back(off);
  Driver d(*dev, 8, kMiB, offsets, 1e9);
  auto r = d.run();
  if (r.error) die("fill " + path + ": " + r.error.message());
}

// ---------------------------------------------------------------------------------------------------------
// Part rand and seq: one configuration measured once.

enum class Workload { rand, seq };

struct Config {
  Workload workload;
  bool raw = false;        // straight to the FileDevice
  unsigned snapshots = 0;  // through Origin with this many persistent snapshots
  uint64_t chunk_kib = 0;  // 0 for raw and for 0 snapshots
  bool writable = false;   // writes go to snapshot s0 (writable) instead of the origin
  std::string name() const {
    if (raw) return "raw";
    std::string n = writable ? "wsnap" : "origin";
    if (snapshots > 0) {
      n += " ";
      n += std::to_string(chunk_kib);
      n += "K x";
      n += std::to_string(snapshots);
    }
    return n;
  }
};

struct Measurement {
  double seconds = 0;
  uint64_t ops = 0;
  uint64_t bytes = 0;
  bool hit_op_limit = false;
  double p50_us = 0, p99_us = 0;
  uint64_t exceptions = 0;  // summed over snapshots
  uint64_t cow_writes = 0, cow_write_bytes = 0, cow_flushes = 0, cow_metadata_writes = 0;
  double cow_flush_ms = 0, cow_write_us = 0, origin_read_us = 0, origin_write_us = 0;  // means
  uint64_t origin_reads = 0, origin_read_bytes = 0;
  bool snapshots_valid = true;
  uint64_t fill_bytes = 0;  // zeros written ahead of the stores by FillAheadDevice, all snapshots
  double load_before = 0;
  double rate() const { return static_cast<double>(ops) / seconds; }  // ops/s
};

double percentile(std::vector<uint32_t> v, double p) {
  if (v.empty()) return 0;
  const size_t k = static_cast<size_t>(p * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + static_cast<ptrdiff_t>(k), v.end());
  return v[k];
}

std::vector<uint64_t> make_offsets(const Config& c, uint64_t origin_bytes, uint64_t seed) {
  std::vector<uint64_t> offsets;
  if (c.workload == Workload::seq) {
    for (uint64_t off = 0; off < origin_bytes; off += kMiB) offsets.push_back(off);
    return offsets;
  }
  // One slot per chunk of the configuration (4 KiB without snapshots), visited once in a random order, at a
  // random 4 KiB block inside the slot: every write is a first write to its chunk.
  const uint64_t slot = std::max<uint64_t>(c.chunk_kib, 4) * kKiB;
  const uint64_t slots = origin_bytes / slot;
  std::vector<uint64_t> order(slots);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  offsets.reserve(slots);
  const uint64_t blocks = slot / (4 * kKiB);
  for (uint64_t s : order) offsets.push_back(s * slot + (rng() % blocks) * 4 * kKiB);
  return offsets;
}

Measurement measure(const Options& o, const std::string& dir, const Config& c, unsigned rep) {
  const std::string origin_path = dir + "/origin.img";
  fill_file(origin_path, o.origin_bytes, o.origin_bytes);
  auto origin_counters = std::make_shared<Counters>();
  auto cow_counters = std::make_shared<Counters>();
  std::unique_ptr<BlockDevice> raw_dev;
  std::unique_ptr<Origin> origin;
  std::vector<std::string> cow_paths;
  std::vector<FillAheadDevice*> fillers;  // owned by the origin's snapshots
  std::unique_ptr<BlockDevice> counted =
      std::make_unique<CountingDevice>(open_target(o, origin_path), origin_counters);
  if (c.raw) {
    raw_dev = std::move(counted);
  } else {
    auto made = Origin::create(std::move(counted));
    if (!made) die(made.error().message());
    origin = std::move(made).value();
    origin->set_write_back_limit(Bytes(o.write_back));
    const uint64_t chunk = std::max<uint64_t>(c.chunk_kib, 4) * kKiB;
    // Room for every chunk of the origin, its metadata areas, the header and some slack; sparse.
    const uint64_t epa = chunk / fmt::kRecordBytes;
    const uint64_t chunks = o.origin_bytes / chunk;
    const uint64_t cow_bytes = (chunks + chunks / epa + 4) * chunk;
    for (unsigned k = 0; k < c.snapshots; ++k) {
      std::string path = dir;
      path += "/cow";
      path += std::to_string(k);
      path += ".img";
      fill_file(path, cow_bytes, o.cow_prefill);
      cow_paths.push_back(path);
      std::string name = "s";
      name += std::to_string(k);
      SnapshotOptions so;
      so.chunk_size = to_sectors(Bytes(chunk));
      so.persistent = true;
      so.writable = c.writable && k == 0;
      // The counters sit above the filler, so they count the store's own I/O only; the fills are added up
      // from the fillers below.
      std::unique_ptr<BlockDevice> cow = open_target(o, path);
      if (o.fill_ahead && !o.model) {
        auto filler = std::make_unique<FillAheadDevice>(std::move(cow), FillAheadDevice::Options{});
        fillers.push_back(filler.get());
        cow = std::move(filler);
      }
      auto snap = origin->create_snapshot(
          name, std::make_unique<CountingDevice>(std::move(cow), cow_counters, so.chunk_size), so);
      if (!snap) die(snap.error().message());
    }
  }
  BlockDevice& target = c.raw        ? *raw_dev
                        : c.writable ? static_cast<BlockDevice&>(*origin->find_snapshot("s0"))
                                     : static_cast<BlockDevice&>(*origin);
  const auto offsets = make_offsets(c, o.origin_bytes, 1000 + rep);
  const size_t io_bytes = c.workload == Workload::rand ? 4 * kKiB : kMiB;
  const unsigned depth = c.workload == Workload::rand ? 16 : 4;
  Driver driver(target, depth, io_bytes, offsets, o.seconds);
  // Setup I/O (fill, snapshot headers) must not count.
  origin_counters->reset();
  cow_counters->reset();
  drop_caches();
  Measurement m;
  m.load_before = load_average();
  auto r = driver.run();
  if (r.error) die(c.name() + ": write failed: " + r.error.message());
  m.seconds = r.seconds;
  m.ops = r.ops;
  m.bytes = r.bytes;
  m.hit_op_limit = r.hit_op_limit;
  m.p50_us = percentile(r.latency_us, 0.50);
  m.p99_us = percentile(r.latency_us, 0.99);
  m.origin_reads = origin_counters->reads.load();
  m.origin_read_bytes = origin_counters->read_bytes.load();
  m.cow_writes = cow_counters->writes.load();
  m.cow_write_bytes = cow_counters->write_bytes.load();
  m.cow_flushes = cow_counters->flushes.load();
  m.cow_metadata_writes = cow_counters->metadata_writes.load();
  const auto mean = [](const std::atomic<uint64_t>& ns, const std::atomic<uint64_t>& n, double unit) {
    return n.load() ? static_cast<double>(ns.load()) / static_cast<double>(n.load()) / unit : 0.0;
  };
  m.cow_flush_ms = mean(cow_counters->flush_ns, cow_counters->flushes, 1e6);
  m.cow_write_us = mean(cow_counters->write_ns, cow_counters->writes, 1e3);
  m.origin_read_us = mean(origin_counters->read_ns, origin_counters->reads, 1e3);
  m.origin_write_us = mean(origin_counters->write_ns, origin_counters->writes, 1e3);
  for (FillAheadDevice* f : fillers) m.fill_bytes += f->stats().bytes_zeroed;
  if (origin) {
    for (Snapshot* s : origin->snapshots()) {
      const auto st = s->status();
      m.exceptions += st.exceptions;
      m.snapshots_valid = m.snapshots_valid && st.valid;
    }
  }
  origin.reset();
  raw_dev.reset();
  for (auto& p : cow_paths) ::unlink(p.c_str());
  ::unlink(origin_path.c_str());
  return m;
}

void run_writes(const Options& o, const std::string& dir, std::FILE* csv) {
  std::vector<Config> configs;
  for (Workload w : {Workload::rand, Workload::seq}) {
    if (!has_part(o, w == Workload::rand ? "rand" : "seq")) continue;
    configs.push_back(Config{w, true, 0, 0});
    for (unsigned s : o.snapshots) {
      if (s == 0) {
        configs.push_back(Config{w, false, 0, 0});
        continue;
      }
      for (uint64_t ck : o.chunks_kib) configs.push_back(Config{w, false, s, ck, o.writable_snapshot});
    }
  }
  if (configs.empty()) return;
  std::vector<std::vector<Measurement>> results(configs.size());
  const auto t0 = Clock::now();
  for (unsigned rep = 0; rep < o.reps; ++rep) {
    std::printf("rep %u/%u (load %.1f, %.0f s elapsed)\n", rep + 1, o.reps, load_average(),
                seconds_since(t0));
    std::fflush(stdout);
    for (size_t k = 0; k < configs.size(); ++k) {
      // Rotate the order each repetition: no configuration always runs first or after the same neighbour.
      const size_t step = std::max<size_t>(1, configs.size() / o.reps);
      const size_t i = (k + rep * step) % configs.size();
      const Config& c = configs[i];
      Measurement m = measure(o, dir, c, rep);
      results[i].push_back(m);
      const bool rand = c.workload == Workload::rand;
      std::printf(
          "  %-4s %-16s %8.0f %s %5.2f s %7lu ops%s; means: origin write %.0f us, copy read %.0f us, COW "
          "write %.0f "
          "us, COW flush %.2f ms (%lu), filled ahead %.0f MiB\n",
          rand ? "rand" : "seq", c.name().c_str(),
          rand ? m.rate() : static_cast<double>(m.bytes) / kMiB / m.seconds, rand ? "IOPS " : "MiB/s",
          m.seconds, static_cast<unsigned long>(m.ops), m.hit_op_limit ? " (all)" : "", m.origin_write_us,
          m.origin_read_us, m.cow_write_us, m.cow_flush_ms, static_cast<unsigned long>(m.cow_flushes),
          static_cast<double>(m.fill_bytes) / kMiB);
      if (!m.snapshots_valid)
        std::printf("  WARNING: a snapshot was invalidated during %s\n", c.name().c_str());
      std::fflush(stdout);
      if (csv != nullptr) {
        std::fprintf(
            csv, "%u,%s,%s,%.6f,%lu,%lu,%lu,%lu,%lu,%lu,%lu,%.0f,%.0f,%.2f,%lu,%.0f,%.0f,%.0f,%.3f\n",
            rep + 1, rand ? "rand" : "seq", c.name().c_str(), m.seconds, static_cast<unsigned long>(m.ops),
            static_cast<unsigned long>(m.bytes), static_cast<unsigned long>(m.exceptions),
            static_cast<unsigned long>(m.origin_read_bytes), static_cast<unsigned long>(m.cow_writes),
            static_cast<unsigned long>(m.cow_write_bytes), static_cast<unsigned long>(m.cow_flushes),
            m.p50_us, m.p99_us, m.load_before, static_cast<unsigned long>(m.cow_metadata_writes),
            m.origin_write_us, m.origin_read_us, m.cow_write_us, m.cow_flush_ms);
        std::fflush(csv);
      }
    }
  }
  std::printf("write parts took %.0f s\n", seconds_since(t0));
  std::printf(
      "\ncolumns: copies/write = exceptions made per write and snapshot (1.00: every write was a first "
      "write);\n"
      "  exc per meta wr = exceptions per COW metadata write (area writes and next-area zeroing: group "
      "commit);\n"
      "  COW sync/exc = COW flushes per exception; COW MiB/MiB wr = bytes written to COW stores per byte "
      "written;\n"
      "  p50/p99 = write latency; device MiB/s = origin writes + copy reads + COW writes per second\n");

  for (Workload w : {Workload::rand, Workload::seq}) {
    const bool rand = w == Workload::rand;
    size_t raw_index = configs.size();
    for (size_t i = 0; i < configs.size(); ++i) {
      if (configs[i].workload == w && configs[i].raw) raw_index = i;
    }
    if (raw_index == configs.size()) continue;
    std::printf(
        "\n%s, medians of %u repetitions; x raw = ratio of medians [median of per-repetition ratios]\n",
        rand ? "(a) 4 KiB random first writes, QD 16" : "(b) 1 MiB sequential writes, QD 4", o.reps);
    std::printf("%-16s %9s %7s %7s %15s %7s %8s %9s %9s %8s %8s %8s\n", "config", rand ? "IOPS" : "MiB/s",
                "min", "max", "x raw", "copies", "exc per", "COW sync", "COW MiB", "p50", "p99", "device");
    std::printf("%-16s %9s %7s %7s %15s %7s %8s %9s %9s %8s %8s %8s\n", "", "", "", "", "", "/write",
                "meta wr", "/exc", "/MiB wr", "us", "us", "MiB/s");
    const auto rate = [&](const Measurement& m) {
      return rand ? m.rate() : static_cast<double>(m.bytes) / kMiB / m.seconds;
    };
    std::vector<double> raw_rates;
    for (auto& m : results[raw_index]) raw_rates.push_back(rate(m));
    const double raw_median = median(raw_rates);
    for (size_t i = 0; i < configs.size(); ++i) {
      const Config& c = configs[i];
      if (c.workload != w) continue;
      std::vector<double> rates, paired, copies, group, syncs, amp, p50, p99, device;
      for (size_t r = 0; r < results[i].size(); ++r) {
        const Measurement& m = results[i][r];
        rates.push_back(rate(m));
        paired.push_back(rate(m) / raw_rates[r]);
        if (c.snapshots > 0) {
          const double ex = static_cast<double>(m.exceptions);
          copies.push_back(ex / (static_cast<double>(m.ops) * c.snapshots));
          // Metadata writes: area writes and the zeroing of the area after a full one.
          group.push_back(m.cow_metadata_writes ? ex / static_cast<double>(m.cow_metadata_writes) : 0);
          syncs.push_back(ex > 0 ? static_cast<double>(m.cow_flushes) / ex : 0);
          amp.push_back(static_cast<double>(m.cow_write_bytes) / static_cast<double>(m.bytes));
        }
        p50.push_back(m.p50_us);
        p99.push_back(m.p99_us);
        // Everything the workload moved through the disk: origin writes, copy reads, COW writes.
        device.push_back(static_cast<double>(m.bytes + m.origin_read_bytes + m.cow_write_bytes) / kMiB /
                         m.seconds);
      }
      const double med = median(rates);
      char ratio[32];
      std::snprintf(ratio, sizeof ratio, "%.2f [%.2f]", med / raw_median, median(paired));
      if (c.snapshots > 0) {
        std::printf("%-16s %9.0f %7.0f %7.0f %15s %7.2f %8.1f %9.2f %9.2f %8.0f %8.0f %8.0f\n",
                    c.name().c_str(), med, *std::min_element(rates.begin(), rates.end()),
                    *std::max_element(rates.begin(), rates.end()), ratio, median(copies), median(group),
                    median(syncs), median(amp), median(p50), median(p99), median(device));
      } else {
        std::printf("%-16s %9.0f %7.0f %7.0f %15s %7s %8s %9s %9s %8.0f %8.0f %8.0f\n", c.name().c_str(), med,
                    *std::min_element(rates.begin(), rates.end()),
                    *std::max_element(rates.begin(), rates.end()), ratio, "-", "-", "-", "-", median(p50),
                    median(p99), median(device));
      }
    }
  }
  std::fflush(stdout);
}

// ---------------------------------------------------------------------------------------------------------
// Part load: a store of N exceptions written directly in the kernel's format.

// The COW chunks a fresh store hands out, in order (persistent_store.cc's prepare_exception).
std::vector<uint64_t> allocation_order(uint64_t n, Sector chunk_size) {
  std::vector<uint64_t> out;
  out.reserve(n);
  uint64_t next = fmt::kFirstDataChunk.value();
  for (uint64_t i = 0; i < n; ++i) {
    out.push_back(next);
    ++next;
    if (fmt::is_metadata_chunk(chunk_size, ChunkIndex(next))) ++next;
  }
  return out;
}

// Old chunks in commit order: random (a permutation of [0, n)) or sequential (0, 1, 2...).
std::vector<uint64_t> old_order(uint64_t n, bool random, uint64_t seed) {
  std::vector<uint64_t> old(n);
  std::iota(old.begin(), old.end(), 0);
  if (random) {
    std::mt19937_64 rng(seed);
    std::shuffle(old.begin(), old.end(), rng);
  }
  return old;
}

// Writes the store (header, every metadata area; data chunks stay holes) to a sparse file at path.
void build_store(const std::string& path, uint64_t chunk_bytes, const std::vector<uint64_t>& olds) {
  const Sector chunk_size = to_sectors(Bytes(chunk_bytes));
  const uint64_t epa = fmt::exceptions_per_area(chunk_size);
  const auto news = allocation_order(olds.size(), chunk_size);
  const uint64_t n = olds.size();
  const uint64_t areas = n / epa + 1;  // the last one holds the terminator (it may be empty)
  const uint64_t last_area_chunk = fmt::area_location(chunk_size, areas - 1).value();
  const uint64_t cow_chunks = std::max(n ? news.back() + 1 : 0, last_area_chunk + 1) + 1;
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) die("create " + path + ": " + std::strerror(errno));
  if (::ftruncate(fd, static_cast<off_t>(cow_chunks * chunk_bytes)) != 0) die("truncate " + path);
  std::vector<std::byte> chunk(chunk_bytes);
  fmt::store_le32(chunk.data() + fmt::kMagicOffset, fmt::kMagic);
  fmt::store_le32(chunk.data() + fmt::kValidOffset, 1);
  fmt::store_le32(chunk.data() + fmt::kVersionOffset, fmt::kVersion);
  fmt::store_le32(chunk.data() + fmt::kChunkSizeOffset, static_cast<uint32_t>(chunk_size.value()));
  if (::pwrite(fd, chunk.data(), chunk_bytes, 0) != static_cast<ssize_t>(chunk_bytes)) die("write header");
  for (uint64_t a = 0; a < areas; ++a) {
    std::fill(chunk.begin(), chunk.end(), std::byte{0});
    for (uint64_t r = 0; r < epa && a * epa + r < n; ++r) {
      std::byte* p = chunk.data() + r * fmt::kRecordBytes;
      fmt::store_le64(p + fmt::kRecordOldOffset, olds[a * epa + r]);
      fmt::store_le64(p + fmt::kRecordNewOffset, news[a * epa + r]);
    }
    const off_t at = static_cast<off_t>(fmt::area_location(chunk_size, a).value() * chunk_bytes);
    if (::pwrite(fd, chunk.data(), chunk_bytes, at) != static_cast<ssize_t>(chunk_bytes)) die("write area");
  }
  if (::fsync(fd) != 0) die("fsync " + path);
  ::close(fd);
}

struct LoadCase {
  std::string label;
  uint64_t chunk_kib;
  bool random;
};

void run_load(const Options& o, const std::string& dir) {
  const std::vector<LoadCase> cases{
      {"4K random", 4, true}, {"4K sequential", 4, false}, {"64K random", 64, true}};
  std::printf(
      "\n(c) load of a persistent store with %lu exceptions, cold cache (O_DIRECT reads), medians of %u\n",
      static_cast<unsigned long>(o.exceptions), o.reps);
  std::printf("%-14s %9s %7s %10s %10s %10s %10s %10s\n", "store", "metadata", "areas", "open s", "attach s",
              "attach max", "RSS peak", "RSS kept");
  std::printf("%-14s %9s %7s %10s %10s %10s %10s %10s\n", "", "MiB", "", "(median)", "(median)", "s", "B/exc",
              "B/exc");
  for (const LoadCase& lc : cases) {
    const uint64_t chunk = lc.chunk_kib * kKiB;
    const std::string cow_path = dir + "/load-cow.img";
    const std::string origin_path = dir + "/load-origin.img";
    const auto t_build = Clock::now();
    build_store(cow_path, chunk, old_order(o.exceptions, lc.random, 77));
    make_file(origin_path, o.exceptions * chunk);  // sparse: attach reads nothing of it
    const double build_s = seconds_since(t_build);
    const uint64_t epa = chunk / fmt::kRecordBytes;
    const uint64_t areas = o.exceptions / epa + 1;
    std::vector<double> open_s, attach_s, peak, kept;
    for (unsigned rep = 0; rep < o.reps; ++rep) {
      {
        auto cow = open_device(cow_path);
        drop_caches();
        uint64_t seen = 0;
        const auto t0 = Clock::now();
        auto store = PersistentStore::open(*cow, to_sectors(Bytes(o.exceptions * chunk)),
                                           [&](const Exception&) { ++seen; });
        open_s.push_back(seconds_since(t0));
        if (!store) die(store.error().message());
        if (seen != o.exceptions) die("the store loaded a wrong number of exceptions");
      }
      {
        auto made = Origin::create(open_device(origin_path));
        if (!made) die(made.error().message());
        auto origin = std::move(made).value();
        auto cow = open_device(cow_path);
        drop_caches();
        ::malloc_trim(0);
        const uint64_t rss0 = status_kib("VmRSS");
        const bool peak_ok = reset_peak_rss();
        const auto t0 = Clock::now();
        auto snap = origin->attach_snapshot("big", std::move(cow), false);
        attach_s.push_back(seconds_since(t0));
        if (!snap) die(snap.error().message());
        if (snap.value()->status().exceptions != o.exceptions)
          die("attach loaded a wrong number of exceptions");
        const uint64_t hwm = status_kib("VmHWM");
        ::malloc_trim(0);
        const uint64_t rss1 = status_kib("VmRSS");
        const double n = static_cast<double>(o.exceptions);
        peak.push_back(peak_ok ? static_cast<double>(hwm - std::min(hwm, rss0)) * 1024 / n : 0);
        kept.push_back(static_cast<double>(rss1 - std::min(rss1, rss0)) * 1024 / n);
      }
    }
    std::printf("%-14s %9.1f %7lu %10.3f %10.3f %10.3f %10.1f %10.1f   (built in %.1f s)\n", lc.label.c_str(),
                static_cast<double>(areas * chunk) / kMiB, static_cast<unsigned long>(areas), median(open_s),
                median(attach_s), *std::max_element(attach_s.begin(), attach_s.end()), median(peak),
                median(kept), build_s);
    std::fflush(stdout);
    ::unlink(cow_path.c_str());
    ::unlink(origin_path.c_str());
  }
}

// ---------------------------------------------------------------------------------------------------------
// Part mem: ExceptionTable bytes per exception.

void run_mem(const Options& o) {
  const uint64_t n = o.exceptions;
  std::printf("\n(d) ExceptionTable with %lu exceptions (4 KiB chunks; COW chunks in allocation order)\n",
              static_cast<unsigned long>(n));
  std::printf("%-28s %10s %10s %12s %10s %10s %10s\n", "fill", "runs", "B/exc", "RSS B/exc", "fill s",
              "lookup ns", "");
  struct Fill {
    const char* label;
    bool random;
    bool bulk;
  };
  const Sector chunk = Sector(8);
  const auto news = allocation_order(n, chunk);
  for (const Fill f :
       {Fill{"random, insert()", true, false}, Fill{"sequential, insert()", false, false},
        Fill{"random, insert_bulk()", true, true}, Fill{"sequential, insert_bulk()", false, true}}) {
    const auto olds = old_order(n, f.random, 99);
    std::vector<Exception> batch;
    if (f.bulk) {
      batch.reserve(n);
      for (uint64_t i = 0; i < n; ++i) batch.push_back(Exception{ChunkIndex(olds[i]), ChunkIndex(news[i])});
    }
    ::malloc_trim(0);
    const uint64_t rss0 = status_kib("VmRSS");
    auto table = std::make_unique<ExceptionTable>();
    const auto t0 = Clock::now();
    if (f.bulk) {
      table->insert_bulk(batch);
    } else {
      for (uint64_t i = 0; i < n; ++i) table->insert(ChunkIndex(olds[i]), ChunkIndex(news[i]));
    }
    const double fill_s = seconds_since(t0);
    batch = {};
    ::malloc_trim(0);
    const uint64_t rss1 = status_kib("VmRSS");
    // Lookups of every exception in a random order.
    std::vector<uint64_t> probe = old_order(n, true, 5);
    const auto t1 = Clock::now();
    uint64_t found = 0;
    for (uint64_t v : probe) found += table->lookup(ChunkIndex(v)).has_value();
    const double lookup_ns = seconds_since(t1) * 1e9 / static_cast<double>(n);
    if (found != n || table->size() != n) die("ExceptionTable lost exceptions");
    std::printf(
        "%-28s %10lu %10.2f %12.2f %10.3f %10.0f\n", f.label, static_cast<unsigned long>(table->runs()),
        static_cast<double>(table->memory_bytes()) / static_cast<double>(table->size()),
        static_cast<double>(rss1 - std::min(rss1, rss0)) * 1024 / static_cast<double>(n), fill_s, lookup_ns);
    std::fflush(stdout);
  }
}

}  // namespace
}  // namespace kcopyfs

int main(int argc, char** argv) {
  using namespace kcopyfs;
  bench::set_program_name("snapshot_bench");
  const Options o = parse(argc, argv);
  std::string pattern = o.workdir + "/kcopyfs-snapbench.XXXXXX";
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) die("mkdtemp in " + o.workdir + ": " + std::strerror(errno));
  const std::string dir(buf.data());
  std::FILE* csv = nullptr;
  if (!o.csv.empty()) {
    csv = std::fopen(o.csv.c_str(), "w");
    if (csv == nullptr) die("open " + o.csv + ": " + std::strerror(errno));
    std::fprintf(
        csv,
        "rep,workload,config,seconds,ops,bytes,exceptions,origin_read_bytes,cow_writes,cow_write_bytes,"
        "cow_flushes,p50_us,p99_us,load,cow_metadata_writes,origin_write_us,copy_read_us,cow_write_us,cow_"
        "flush_ms\n");
  }
  std::printf("snapshot_bench: %u repetitions, origin %lu MiB, cap %.1f s per write measurement, in %s\n",
              o.reps, static_cast<unsigned long>(o.origin_bytes / kMiB), o.seconds, dir.c_str());
  std::printf("  %ld CPUs, load average %.2f at start%s\n", ::sysconf(_SC_NPROCESSORS_ONLN), load_average(),
              is_root() ? "" : "; not root: page cache NOT dropped between measurements");
  std::printf("  origin write-back limit %lu KiB%s, COW fill-ahead %s\n",
              static_cast<unsigned long>(o.write_back / 1024),
              o.write_back == 0 ? " (off: acknowledged after the origin write)" : "",
              o.fill_ahead ? "on" : "off");
  std::fflush(stdout);
  const auto t0 = Clock::now();
  if (has_part(o, "rand") || has_part(o, "seq")) run_writes(o, dir, csv);
  if (has_part(o, "load")) run_load(o, dir);
  if (has_part(o, "mem")) run_mem(o);
  if (csv != nullptr) std::fclose(csv);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  std::printf("\ntotal %.0f s, load average %.2f at end\n", seconds_since(t0), load_average());
  return 0;
}
