// kcopyfs copy: one read of SOURCE feeds every DEST (interface.md, "The copy engine, as a tool").
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/program_options.hpp>
#include <algorithm>
#include <condition_variable>
#include <cstring>
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

struct Destination {
  Endpoint spec;
  std::unique_ptr<FileDevice> device;
  bool created = false;          // this run created the file
  std::optional<Bytes> old_size;  // this run extended the file from this size
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
      "throttle", po::value<unsigned>(&throttle_percent), "percent of the time the copy may keep I/O in flight (1-100)")(
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
  const auto paths = vm.count("paths") ? vm["paths"].as<std::vector<std::string>>() : std::vector<std::string>{};
  if (paths.size() < 2) return fail(kVerb, "needs a SOURCE and at least one DEST (see kcopyfs copy --help)");
  if (paths.size() > 1 + kMaxDestinations) return fail(kVerb, "at most 8 destinations");
  if (throttle_percent < 1 || throttle_percent > 100) return fail(kVerb, "--throttle takes a percent from 1 to 100");
  uint64_t rate = 0;
  if (!rate_text.empty()) {
    auto r = parse_size(rate_text);
    if (!r || *r == 0) return fail(kVerb, "--rate takes a positive number of bytes per second, not '" + rate_text + "'");
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
    if ((e->offset && *e->offset % kSectorSize) || (e->length && *e->length % kSectorSize))
      return fail(kVerb, e->path + ": offset and length must be multiples of 512");
  }

  OpenOptions src_options;
  src_options.access = Access::read_only;
  src_options.sharing = Sharing::shared;
  auto src = FileDevice::open(src_spec.path, src_options);
  if (!src) return fail(kVerb, src.error().message());
  const uint64_t src_size = src.value()->size().value();
  const uint64_t src_off = src_spec.offset.value_or(0);
  if (src_off > src_size) return fail(kVerb, src_spec.path + ": offset is beyond its size " + std::to_string(src_size));
  const uint64_t length = src_spec.length.value_or(src_size - src_off);
  if (length > src_size - src_off)
    return fail(kVerb, src_spec.path + ": offset + length is beyond its size " + std::to_string(src_size));

  struct stat src_st {};
  ::stat(src_spec.path.c_str(), &src_st);
  std::vector<std::pair<dev_t, ino_t>> seen{{src_st.st_dev, src_st.st_ino}};
  for (auto& d : dests) {
    if (d.spec.length && *d.spec.length != length)
      return fail(kVerb, d.spec.path + ": length " + std::to_string(*d.spec.length) +
                             " differs from the source's " + std::to_string(length));
    struct stat st {};
    if (::stat(d.spec.path.c_str(), &st) != 0) {
      if (errno != ENOENT) return fail(kVerb, d.spec.path + ": " + std::strerror(errno));
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
    auto dev = FileDevice::open(d.spec.path, OpenOptions{});
    if (!dev) {
      undo(dests);
      return fail(kVerb, dev.error().message());
    }
    d.device = std::move(dev).value();
    const uint64_t need = d.spec.offset.value_or(0) + length;
    if (need > d.device->size().value()) {
      if (d.device->is_block_device()) {
        undo(dests);
        return fail(kVerb, d.spec.path + " is " + std::to_string(d.device->size().value()) + " bytes; the copy needs " +
                               std::to_string(need));
      }
      if (!d.created) d.old_size = d.device->size();
      if (auto s = d.device->grow_file(Bytes(need)); !s) {
        undo(dests);
        return fail(kVerb, s.error().message());
      }
    }
  }

  KcopydOptions options;
  options.num_pages = 4096;  // 16 MiB: two segment jobs of 8 sub-jobs of 512 KiB each, with room to spare
  options.allow_offload = vm.count("no-offload") == 0;
  if (throttle_percent < 100 || rate > 0) options.throttle = std::make_shared<Throttle>(throttle_percent, rate);
  auto client_or = KcopydClient::create(options);
  if (!client_or) {
    undo(dests);
    return fail(kVerb, client_or.error().message());
  }
  auto client = std::move(client_or).value();

  // The copy runs as segment jobs, two in flight, so progress moves and a dead destination can be dropped from
  // the next segment while the others carry on. Each job keeps going past errors (IGNORE_ERROR) so that one
  // failing destination never starves the healthy ones of part of a segment.
  uint64_t segment = 64ull << 20;
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
          regions.push_back(Region{dests[i].device.get(), to_sectors(Bytes(dests[i].spec.offset.value_or(0) + next)),
                                   Sector(0)});
          which.push_back(i);
        }
        if (regions.empty()) {
          state.stop = true;
          break;
        }
        const uint64_t seg = std::min(segment, length - next);
        const Region from{src.value().get(), to_sectors(Bytes(src_off + next)), to_sectors(Bytes(seg))};
        const uint64_t begin = next;
        auto st = client->copy(from, regions, flags, [&, which, begin, seg](bool read_error, uint32_t write_errors) {
          std::lock_guard l(state.mutex);
          --state.in_flight;
          state.done_bytes += seg;
          if (read_error && state.read_failure.empty()) {
            state.read_failure = src_spec.path + ": read failed within " + range_text(src_off + begin, src_off + begin + seg);
            state.stop = true;
          }
          for (size_t k = 0; k < which.size(); ++k) {
            Destination& d = dests[which[k]];
            if ((write_errors & (1u << k)) && !d.failed) {
              d.failed = true;
              const uint64_t at = d.spec.offset.value_or(0) + begin;
              d.failure = "write failed within " + range_text(at, at + seg);
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
