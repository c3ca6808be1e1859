// kcopyfs copy: one read of SOURCE feeds every DEST (interface.md, "The copy engine, as a tool").
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/program_options.hpp>
#include <cctype>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <optional>

#include "engine/file_device.h"
#include "engine/kcopyd.h"
#include "engine/sync_io.h"
#include "tools/cli/command.h"
#include "tools/cli/progress.h"
#include "tools/cli/sizes.h"

namespace po = boost::program_options;

namespace kcopyfs::cli {

namespace {

constexpr const char* kVerb = "copy";

struct Endpoint {
  std::string path;
  std::optional<uint64_t> offset;
  std::optional<uint64_t> length;
};

// PATH[:OFFSET[:LENGTH]]: a suffix counts as OFFSET or LENGTH only when it parses as a SIZE, so paths with
// colons still work ("./a:b").
Endpoint parse_endpoint(const std::string& text) {
  Endpoint e{text, std::nullopt, std::nullopt};
  auto last = text.rfind(':');
  if (last == std::string::npos) return e;
  auto tail = parse_size(text.substr(last + 1));
  if (!tail) return e;
  const std::string head = text.substr(0, last);
  auto prev = head.rfind(':');
  if (prev != std::string::npos) {
    if (auto mid = parse_size(head.substr(prev + 1))) {
      e.path = head.substr(0, prev);
      e.offset = mid;
      e.length = tail;
      return e;
    }
  }
  e.path = head;
  e.offset = tail;
  return e;
}

// A colon suffix that starts like a number but is not a SIZE ("img:10Q") is a mistyped SIZE, not part of the
// name, unless a file of that whole name exists. Result: the bad suffix, if any.
std::optional<std::string> bad_size_suffix(const Endpoint& e) {
  const auto colon = e.path.rfind(':');
  if (colon == std::string::npos) return std::nullopt;
  const std::string tail = e.path.substr(colon + 1);
  if (tail.empty() || !std::isdigit(static_cast<unsigned char>(tail[0])) || parse_size(tail))
    return std::nullopt;
  struct stat st {};
  if (::lstat(e.path.c_str(), &st) == 0) return std::nullopt;
  return tail;
}

// Passes I/O through to a destination and remembers the first error, so the report can say why it failed
// (kcopyd's callback says only which destination failed).
class ErrorMemo final : public BlockDevice {
 public:
  explicit ErrorMemo(FileDevice& inner) : inner_(inner) {}
  int first_error() const { return first_error_.load(); }

  const std::string& path() const override { return inner_.path(); }
  Bytes size() const override { return inner_.size(); }
  uint32_t logical_block_size() const override { return inner_.logical_block_size(); }
  uint32_t memory_alignment() const override { return inner_.memory_alignment(); }
  bool read_only() const override { return inner_.read_only(); }
  FileDevice* as_file() override {
    return &inner_;
  }  // offload goes direct; a failed piece is redone through here
  void read(Bytes offset, std::span<std::byte> buffer, IoCallback done, FixedBuffer fixed) override {
    inner_.read(offset, buffer, remember(std::move(done)), fixed);
  }
  void write(Bytes offset, std::span<const std::byte> buffer, IoCallback done, FixedBuffer fixed) override {
    inner_.write(offset, buffer, remember(std::move(done)), fixed);
  }
  void flush(IoCallback done) override { inner_.flush(remember(std::move(done))); }
  void write_zeroes(Bytes offset, Bytes length, bool may_unmap, IoCallback done) override {
    inner_.write_zeroes(offset, length, may_unmap, remember(std::move(done)));
  }

 private:
  IoCallback remember(IoCallback done) {
    return [this, done = std::move(done)](std::error_code ec) {
      int expected = 0;
      if (ec) first_error_.compare_exchange_strong(expected, ec.value());
      done(ec);
    };
  }
  FileDevice& inner_;
  std::atomic<int> first_error_{0};
};

struct Destination {
  Endpoint spec;
  std::unique_ptr<FileDevice> device;
  std::unique_ptr<ErrorMemo> memo;  // what kcopyd writes through
  bool created = false;             // this run created the file
  std::optional<Bytes> old_size;    // this run extended the file from this size
  bool failed = false;
  std::string failure;
};

struct RunState {
  std::mutex mutex;
  std::condition_variable changed;
  // Guarded by mutex.
  uint64_t done_bytes = 0;
  unsigned in_flight = 0;
  bool stop = false;
  std::string read_failure;
  std::vector<std::pair<uint64_t, uint64_t>> finished;  // page-cache offload: segments (offset, length) done
};

void undo(std::vector<Destination>& dests) {
  for (auto& d : dests) {
    if (d.created) {
      d.device.reset();
      ::unlink(d.spec.path.c_str());
    } else if (d.old_size && d.device) {
      if (::ftruncate(d.device->fd(), static_cast<off_t>(d.old_size->value())) != 0) {
        // Best effort: the error that made us undo is what the user needs to see.
      }
    }
  }
}

// Whether the engine will offload a copy from src to dst (kcopyd.h: both regular files on one filesystem). A
// destination that does not exist yet will be created as a regular file in its directory.
bool offload_applies(const std::string& src, const std::string& dst) {
  struct stat s {
  }, d{};
  if (::stat(src.c_str(), &s) != 0 || !S_ISREG(s.st_mode)) return false;
  if (::stat(dst.c_str(), &d) == 0) return S_ISREG(d.st_mode) && d.st_dev == s.st_dev;
  if (errno != ENOENT) return false;
  const auto slash = dst.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : dst.substr(0, slash);
  return ::stat(dir.c_str(), &d) == 0 && d.st_dev == s.st_dev;
}

std::string range_text(uint64_t begin, uint64_t end) {
  return "bytes " + std::to_string(begin) + "-" + std::to_string(end);
}

}  // namespace

int run_copy(const std::vector<std::string>& args) {
  po::options_description visible(
      "Usage: kcopyfs copy [OPTIONS] SOURCE DEST...\n"
      "Copies SOURCE to up to 8 DESTs, reading the source once. SOURCE and DEST are PATH[:OFFSET[:LENGTH]]\n"
      "(bytes, or K/M/G/T; multiples of 512). A missing DEST file is created and a short one extended.\n"
      "Exits 0 only when every destination got every byte and made it durable.\n\nOptions");
  unsigned throttle_percent = 100;
  std::string rate_text;
  visible.add_options()("help,h", "show this help")("progress", "show progress (a bar on a terminal)")(
      "throttle", po::value<unsigned>(&throttle_percent),
      "percent of the time the copy may keep I/O in flight (1-100)")(
      "rate", po::value<std::string>(&rate_text), "cap the copy at BYTES_PER_S (K/M/G suffixes allowed)")(
      "sparse", "do not read the source's holes; leave holes (or zeros) at the destinations")(
      "no-offload", "always read and write, never copy_file_range or reflink");
  po::options_description hidden;
  hidden.add_options()("paths", po::value<std::vector<std::string>>(), "");
  po::options_description all;
  all.add(visible).add(hidden);
  po::positional_options_description positional;
  positional.add("paths", -1);
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(args).options(all).positional(positional).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    return fail(kVerb, e.what());
  }
  if (vm.count("help")) {
    std::cout << visible;
    return 0;
  }
  const auto paths =
      vm.count("paths") ? vm["paths"].as<std::vector<std::string>>() : std::vector<std::string>{};
  if (paths.size() < 2) return fail(kVerb, "needs a SOURCE and at least one DEST (see kcopyfs copy --help)");
  if (paths.size() > 1 + kMaxDestinations) return fail(kVerb, "at most 8 destinations");
  if (throttle_percent < 1 || throttle_percent > 100)
    return fail(kVerb, "--throttle takes a percent from 1 to 100");
  uint64_t rate = 0;
  if (vm.count("rate")) {
    auto r = parse_size(rate_text);
    if (!r || *r == 0)
      return fail(kVerb, "--rate takes a positive number of bytes per second, not '" + rate_text + "'");
    rate = *r;
  }

  // Validate everything before touching any destination.
  const Endpoint src_spec = parse_endpoint(paths[0]);
  std::vector<Destination> dests;
  for (size_t i = 1; i < paths.size(); ++i) {
    Destination d;
    d.spec = parse_endpoint(paths[i]);
    dests.push_back(std::move(d));
  }
  for (const Endpoint* e : [&] {
         std::vector<const Endpoint*> v{&src_spec};
         for (auto& d : dests) v.push_back(&d.spec);
         return v;
       }()) {
    if (auto bad = bad_size_suffix(*e))
      return fail(kVerb, e->path + ": '" + *bad + "' is not a SIZE (bytes, or a number with K, M, G or T)");
    if ((e->offset && *e->offset % kSectorSize) || (e->length && *e->length % kSectorSize))
      return fail(kVerb, e->path + ": offset and length must be multiples of 512");
  }

  // An offloaded copy (one destination, both regular files on one filesystem) runs through copy_file_range.
  // On O_DIRECT descriptors the kernel splices it in small synchronous direct I/Os, at half the speed of the
  // read+write path; through the page cache it reads ahead and writes back in large requests. So such a copy
  // opens both files buffered, starts write-back of each finished segment at once (writing then overlaps
  // reading instead of all waiting for the final fdatasync), and drops the pages it brought in
  // (docs/benchmarks.md).
  const bool allow_offload = vm.count("no-offload") == 0;
  const bool page_cache_offload =
      allow_offload && dests.size() == 1 && offload_applies(src_spec.path, dests[0].spec.path);
  OpenOptions src_options;
  src_options.access = Access::read_only;
  src_options.sharing = Sharing::shared;
  if (page_cache_offload) src_options.cache = CacheMode::buffered;
  auto src = FileDevice::open(src_spec.path, src_options);
  if (!src) return fail(kVerb, src.error().message());
  const uint64_t src_size = src.value()->size().value();
  const uint64_t src_off = src_spec.offset.value_or(0);
  if (src_off > src_size)
    return fail(kVerb, src_spec.path + ": offset is beyond its size " + std::to_string(src_size));
  const uint64_t length = src_spec.length.value_or(src_size - src_off);
  if (length > src_size - src_off)
    return fail(kVerb, src_spec.path + ": offset + length is beyond its size " + std::to_string(src_size));

  struct stat src_st {};
  ::stat(src_spec.path.c_str(), &src_st);
  std::vector<std::pair<dev_t, ino_t>> seen{{src_st.st_dev, src_st.st_ino}};
  std::vector<std::filesystem::path> missing;  // destinations to create, by their resolved names
  for (auto& d : dests) {
    if (d.spec.length && *d.spec.length != length)
      return fail(kVerb, d.spec.path + ": length " + std::to_string(*d.spec.length) +
                             " differs from the source's " + std::to_string(length));
    struct stat st {};
    if (::stat(d.spec.path.c_str(), &st) != 0) {
      if (errno != ENOENT) return fail(kVerb, d.spec.path + ": " + std::strerror(errno));
      std::error_code ec;
      auto name = std::filesystem::absolute(d.spec.path, ec).lexically_normal();
      auto resolved = std::filesystem::weakly_canonical(name, ec);
      if (!ec) name = std::move(resolved);
      if (std::find(missing.begin(), missing.end(), name) != missing.end())
        return fail(kVerb, d.spec.path + ": is another destination (named twice)");
      missing.push_back(name);
      continue;  // created below
    }
    if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
      return fail(kVerb, d.spec.path + ": not a regular file or a block device");
    for (auto& [dev, ino] : seen) {
      if (st.st_dev == dev && st.st_ino == ino)
        return fail(kVerb, d.spec.path + ": is the source or another destination (named twice)");
    }
    seen.emplace_back(st.st_dev, st.st_ino);
  }

  // Open (and where needed create or extend) the destinations; undo it all if any fails.
  for (auto& d : dests) {
    if (::access(d.spec.path.c_str(), F_OK) != 0) {
      int fd = ::open(d.spec.path.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0666);
      if (fd < 0) {
        const int err = errno;
        undo(dests);
        return fail(kVerb, "create " + d.spec.path + ": " + std::strerror(err));
      }
      ::close(fd);
      d.created = true;
    }
    OpenOptions dest_options;
    if (page_cache_offload) dest_options.cache = CacheMode::buffered;
    auto dev = FileDevice::open(d.spec.path, dest_options);
    if (!dev) {
      undo(dests);
      return fail(kVerb, dev.error().message());
    }
    d.device = std::move(dev).value();
    d.memo = std::make_unique<ErrorMemo>(*d.device);
    const uint64_t need = d.spec.offset.value_or(0) + length;
    if (need > d.device->size().value()) {
      if (d.device->is_block_device()) {
        undo(dests);
        return fail(kVerb, d.spec.path + " is " + std::to_string(d.device->size().value()) +
                               " bytes; the copy needs " + std::to_string(need));
      }
      if (!d.created) d.old_size = d.device->size();
      if (auto s = d.device->grow_file(Bytes(need)); !s) {
        undo(dests);
        return fail(kVerb, s.error().message());
      }
    }
  }

  KcopydOptions options;
  bool any_block_device = src.value()->is_block_device();
  for (const auto& d : dests) any_block_device = any_block_device || d.device->is_block_device();
  if (any_block_device) {
    // The kernel's 8 sub-jobs of 512 KiB per job; 16 MiB: two segment jobs, with room to spare. (io_uring
    // sends 1 MiB O_DIRECT reads of a block device through its worker threads, so larger sub-jobs are not
    // used here.)
    options.num_pages = 4096;
  } else {
    // Files: 32 MiB, two segment jobs of 16 sub-jobs of 1 MiB. Against 8 x 512 KiB this gained ~15% for one
    // destination and ~25% for three on 1 GiB copies (medians of paired runs; docs/benchmarks.md).
    options.num_pages = 8192;
    options.sub_job_size = Sector((1u << 20) / kSectorSize);
    options.max_sub_jobs_in_flight = 16;
  }
  options.allow_offload = allow_offload;
  // Offloaded pieces use no buffer: 2 MiB per copy_file_range call beat 512 KiB by ~15% (docs/benchmarks.md).
  if (page_cache_offload) options.sub_job_size = Sector((2u << 20) / kSectorSize);
  if (throttle_percent < 100 || rate > 0)
    options.throttle = std::make_shared<Throttle>(throttle_percent, rate);
  auto client_or = KcopydClient::create(options);
  if (!client_or) {
    undo(dests);
    return fail(kVerb, client_or.error().message());
  }
  auto client = std::move(client_or).value();

  // The copy runs as segment jobs, two in flight, so progress moves and a dead destination can be dropped
  // from the next segment while the others carry on. Each job keeps going past errors (IGNORE_ERROR) so that
  // one failing destination never starves the healthy ones of part of a segment. A page-cache offload starts
  // write-back per finished segment, so its segments are smaller: 16 MiB beat 64 MiB by 15-35% on 1 GiB
  // copies (docs/benchmarks.md).
  uint64_t segment = page_cache_offload ? 16ull << 20 : 64ull << 20;
  if (rate > 0) segment = std::clamp<uint64_t>(rate / 2 / kSectorSize * kSectorSize, 1ull << 20, segment);
  CopyFlags flags;
  flags.ignore_error = true;
  flags.sparse = vm.count("sparse") > 0;
  RunState state;
  std::optional<Progress> progress;
  if (vm.count("progress")) progress.emplace("copy", length);

  uint64_t next = 0;
  {
    std::unique_lock lock(state.mutex);
    while (true) {
      while (!state.stop && state.in_flight < 2 && next < length) {
        std::vector<Region> regions;
        std::vector<size_t> which;
        for (size_t i = 0; i < dests.size(); ++i) {
          if (dests[i].failed) continue;
          regions.push_back(Region{dests[i].memo.get(),
                                   to_sectors(Bytes(dests[i].spec.offset.value_or(0) + next)), Sector(0)});
          which.push_back(i);
        }
        if (regions.empty()) {
          state.stop = true;
          break;
        }
        const uint64_t seg = std::min(segment, length - next);
        const Region from{src.value().get(), to_sectors(Bytes(src_off + next)), to_sectors(Bytes(seg))};
        const uint64_t begin = next;
        auto st = client->copy(
            from, regions, flags, [&, which, begin, seg](bool read_error, uint32_t write_errors) {
              std::lock_guard l(state.mutex);
              --state.in_flight;
              state.done_bytes += seg;
              if (page_cache_offload) state.finished.emplace_back(begin, seg);
              if (read_error && state.read_failure.empty()) {
                state.read_failure = src_spec.path + ": read failed within " +
                                     range_text(src_off + begin, src_off + begin + seg);
                state.stop = true;
              }
              for (size_t k = 0; k < which.size(); ++k) {
                Destination& d = dests[which[k]];
                if ((write_errors & (1u << k)) && !d.failed) {
                  d.failed = true;
                  const uint64_t at = d.spec.offset.value_or(0) + begin;
                  const int err = d.memo->first_error();
                  d.failure = "write failed within " + range_text(at, at + seg) +
                              (err != 0 ? std::string(": ") + std::strerror(err) : std::string());
                }
              }
              state.changed.notify_all();
            });
        if (!st) {
          state.stop = true;
          state.read_failure = st.error().message();
          break;
        }
        ++state.in_flight;
        next += seg;
      }
      if (state.in_flight == 0 && (state.stop || next >= length)) break;
      state.changed.wait_for(lock, std::chrono::milliseconds(100));
      if (progress) progress->update(state.done_bytes);
      if (!state.finished.empty()) {
        // Outside the lock, which the worker's callbacks need.
        auto finished = std::move(state.finished);
        state.finished.clear();
        lock.unlock();
        for (auto [begin, n] : finished) {
          const auto at = static_cast<off_t>(dests[0].spec.offset.value_or(0) + begin);
          ::sync_file_range(dests[0].device->fd(), at, static_cast<off_t>(n), SYNC_FILE_RANGE_WRITE);
          ::posix_fadvise(src.value()->fd(), static_cast<off_t>(src_off + begin), static_cast<off_t>(n),
                          POSIX_FADV_DONTNEED);
        }
        lock.lock();
      }
    }
  }
  client.reset();  // every callback has run

  // Durability: each destination that got everything is flushed before we report success.
  for (auto& d : dests) {
    if (d.failed) continue;
    if (auto ec = flush_sync(*d.device)) {
      d.failed = true;
      d.failure = "flush failed: " + ec.message();
    }
  }
  if (page_cache_offload) {
    // Leave the page cache as an O_DIRECT copy would, without this copy's pages (all clean after the flush).
    ::posix_fadvise(dests[0].device->fd(), static_cast<off_t>(dests[0].spec.offset.value_or(0)),
                    static_cast<off_t>(length), POSIX_FADV_DONTNEED);
    ::posix_fadvise(src.value()->fd(), static_cast<off_t>(src_off), static_cast<off_t>(length),
                    POSIX_FADV_DONTNEED);
  }
  if (progress) progress->finish(state.done_bytes);

  bool ok = state.read_failure.empty();
  for (auto& d : dests) ok = ok && !d.failed;
  if (ok) return 0;
  if (!state.read_failure.empty()) std::cerr << "kcopyfs: copy: " << state.read_failure << "\n";
  for (auto& d : dests) {
    if (d.failed)
      std::cerr << "kcopyfs: copy: " << d.spec.path << ": " << d.failure << "\n";
    else if (state.read_failure.empty())
      std::cerr << "kcopyfs: copy: " << d.spec.path << ": ok\n";
    else
      std::cerr << "kcopyfs: copy: " << d.spec.path << ": incomplete (source read failed)\n";
  }
  return 1;
}

}  // namespace kcopyfs::cli
