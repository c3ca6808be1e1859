// kcopyfs_fsx: an fsx-style integrity checker. It runs random reads, writes, fsyncs and reopens against a
// file (a kcopyfs view, an image, a block device) and checks every read against an in-memory model of the
// content, with block-device end-of-file rules: a read at or past the end returns 0, one crossing it is
// short, a write at or past the end fails with ENOSPC, one crossing it is short.
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <boost/program_options.hpp>

namespace {

constexpr uint64_t kAlign = 4096;
constexpr long kFuseSuperMagic = 0x65735546;

struct Options {
  std::string file;
  uint64_t ops = 10000;
  uint64_t seed = 0;
  bool direct = false;
  std::string initial_model;
  bool read_only = false;
  uint64_t max_io = 1 << 20;
  unsigned threads = 1;
  std::optional<bool> eof_writes;  // nullopt: decided by the target's kind
  bool verbose = false;
  bool corrupt = false;
};

[[noreturn]] void die(const std::string& message) {
  std::cerr << "kcopyfs_fsx: " << message << std::endl;
  std::exit(2);
}

std::string errno_text(int err) {
  return std::string(std::strerror(err)) + " (errno " + std::to_string(err) + ")";
}

// SIZE as the kcopyfs CLI takes it: bytes, or K, M, G, T (powers of 1024).
std::optional<uint64_t> parse_size(const std::string& text) {
  if (text.empty() || !std::isdigit(static_cast<unsigned char>(text[0]))) return std::nullopt;
  size_t used = 0;
  uint64_t value = 0;
  try {
    value = std::stoull(text, &used);
  } catch (const std::exception&) {
    return std::nullopt;
  }
  const std::string suffix = text.substr(used);
  unsigned shift = 0;
  if (suffix == "K" || suffix == "k")
    shift = 10;
  else if (suffix == "M" || suffix == "m")
    shift = 20;
  else if (suffix == "G" || suffix == "g")
    shift = 30;
  else if (suffix == "T" || suffix == "t")
    shift = 40;
  else if (!suffix.empty())
    return std::nullopt;
  if (shift != 0 && value > (UINT64_MAX >> shift)) return std::nullopt;
  return value << shift;
}

struct AlignedFree {
  void operator()(unsigned char* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<unsigned char[], AlignedFree>;

Buffer aligned_buffer(size_t bytes) {
  void* p = nullptr;
  if (::posix_memalign(&p, kAlign, std::max<size_t>(bytes, kAlign)) != 0) die("out of memory");
  return Buffer(static_cast<unsigned char*>(p));
}

int try_open_target(const Options& o) {
  return ::open(o.file.c_str(), (o.read_only ? O_RDONLY : O_RDWR) | (o.direct ? O_DIRECT : 0) | O_CLOEXEC);
}

int open_target(const Options& o) {
  const int fd = try_open_target(o);
  if (fd < 0) die("cannot open " + o.file + ": " + errno_text(errno));
  return fd;
}

// The target's size, and whether writes past its end follow block-device rules (block devices and FUSE files,
// which is what kcopyfs views are) rather than growing the file.
struct TargetInfo {
  uint64_t size = 0;
  const char* kind = "";
  bool block_rules = false;
};

TargetInfo probe_target(int fd, const std::string& path) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) die("cannot stat " + path + ": " + errno_text(errno));
  TargetInfo info;
  if (S_ISBLK(st.st_mode)) {
    if (::ioctl(fd, BLKGETSIZE64, &info.size) != 0) die("BLKGETSIZE64 on " + path + ": " + errno_text(errno));
    info.kind = "block device";
    info.block_rules = true;
  } else if (S_ISREG(st.st_mode)) {
    info.size = static_cast<uint64_t>(st.st_size);
    struct statfs sfs {};
    info.block_rules = ::fstatfs(fd, &sfs) == 0 && sfs.f_type == kFuseSuperMagic;
    info.kind = info.block_rules ? "FUSE file" : "regular file";
  } else {
    die(path + " is neither a regular file nor a block device");
  }
  if (info.size == 0) die(path + " is empty");
  return info;
}

// Reads [offset, offset + length) completely (the length is aligned for O_DIRECT by the caller); false on a
// short read or an error, with errno or 0.
bool read_fully(int fd, unsigned char* buf, uint64_t offset, size_t length, ssize_t* got) {
  size_t done = 0;
  while (done < length) {
    const ssize_t n = ::pread(fd, buf + done, length - done, static_cast<off_t>(offset + done));
    if (n <= 0) {
      *got = n < 0 ? n : static_cast<ssize_t>(done);
      return false;
    }
    done += static_cast<size_t>(n);
  }
  *got = static_cast<ssize_t>(done);
  return true;
}

// The shared state: the model, the option set, and the first failure (later ones are not reported).
struct Run {
  Options o;
  TargetInfo target;
  std::vector<unsigned char> model;
  std::atomic<bool> failed{false};
  std::atomic<bool> corrupted{false};
  std::mutex failure_mutex;
  std::string failure;

  void fail(const std::string& line) {
    std::lock_guard lock(failure_mutex);
    if (!failed.exchange(true)) failure = line;
  }
};

struct Counts {
  uint64_t reads = 0, writes = 0, fsyncs = 0, reopens = 0;
};

class Worker {
 public:
  Worker(Run& run, unsigned index, uint64_t lo, uint64_t hi, uint64_t ops)
      : run_(run), o_(run.o), index_(index), lo_(lo), hi_(hi), owns_end_(hi == run.target.size), ops_(ops) {
    // Each thread's stream depends only on (seed, thread), so a failing run replays with the same options.
    std::seed_seq seq{static_cast<uint32_t>(o_.seed), static_cast<uint32_t>(o_.seed >> 32), index};
    rng_.seed(seq);
    buffer_ = aligned_buffer(o_.max_io);
  }

  void run() {
    fd_ = open_target(o_);
    if (o_.corrupt && o_.read_only && index_ == 0) {
      corrupt(lo_);
      run_.model[lo_] ^= 0xff;
    }
    for (op_ = 1; op_ <= ops_ && !run_.failed.load(std::memory_order_relaxed);) {
      const uint64_t r = below(1000);
      if (r < 4) {
        reopen();
        continue;  // a reopen is not one of the N operations
      }
      if (r < 24) {
        do_fsync();
      } else if (o_.read_only || r < 524) {
        do_read();
      } else {
        do_write();
      }
      ++op_;
    }
    if (fd_ >= 0) ::close(fd_);
  }

  const Counts& counts() const { return counts_; }

 private:
  uint64_t below(uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng_); }
  uint64_t between(uint64_t a, uint64_t b) { return std::uniform_int_distribution<uint64_t>(a, b)(rng_); }

  std::string where() const {
    std::ostringstream s;
    s << "seed " << o_.seed << " op " << op_;
    if (o_.threads > 1) s << " thread " << index_;
    return s.str();
  }

  void reopen() {
    ++counts_.reopens;
    if (o_.verbose) std::printf("%s reopen\n", where().c_str());
    if (::close(fd_) != 0) run_.fail("fsx: " + where() + ": close failed: " + errno_text(errno));
    // A view that cannot be reopened mid-run is a finding (exit 1), not a set-up error.
    fd_ = try_open_target(o_);
    if (fd_ < 0) run_.fail("fsx: " + where() + ": reopen failed: " + errno_text(errno));
  }

  void do_fsync() {
    ++counts_.fsyncs;
    if (o_.verbose) std::printf("%s fsync\n", where().c_str());
    if (::fsync(fd_) != 0) run_.fail("fsx: " + where() + ": fsync failed: " + errno_text(errno));
  }

  // A random (offset, length) in this worker's slice; the worker that owns the end of the file also aims at
  // and past the end. Direct I/O keeps everything 4 KiB aligned; otherwise a third each is byte, 512 and
  // 4096 aligned.
  std::pair<uint64_t, uint64_t> pick_range() {
    uint64_t align = o_.direct ? kAlign : std::array<uint64_t, 3>{1, 512, kAlign}[below(3)];
    while (align > o_.max_io) align = align == kAlign ? 512 : 1;  // a small --max-io caps the alignment
    const uint64_t cap = o_.max_io / align * align;
    uint64_t len =
        below(2) != 0 ? between(1, std::min<uint64_t>(2 * kAlign, o_.max_io)) : between(1, o_.max_io);
    len = std::clamp((len + align - 1) / align * align, align, cap);
    const uint64_t kind = below(100);
    uint64_t off;
    if (owns_end_ && kind < 8) {
      // Crossing the end (or just short of it, after aligning down).
      off = hi_ - std::min(hi_ - lo_, between(1, len));
      off = std::max(lo_, off / align * align);
    } else if (owns_end_ && kind < 12) {
      // At or past the end.
      const uint64_t step = std::max<uint64_t>(align, 512);
      off = (hi_ + align - 1) / align * align + step * below(4);
    } else {
      off = std::max(lo_, between(lo_, hi_ - 1) / align * align);
    }
    if (!owns_end_) len = std::min(len, hi_ - off);
    return {off, len};
  }

  void do_read() {
    const auto [off, len] = pick_range();
    ++counts_.reads;
    if (o_.verbose) std::printf("%s read %llu+%llu\n", where().c_str(), ull(off), ull(len));
    const uint64_t size = run_.target.size;
    const uint64_t expect = off >= size ? 0 : std::min(len, size - off);
    const ssize_t n = ::pread(fd_, buffer_.get(), len, static_cast<off_t>(off));
    if (n < 0) {
      run_.fail(describe("read", off, len) + ": failed: " + errno_text(errno));
      return;
    }
    if (static_cast<uint64_t>(n) != expect) {
      run_.fail(describe("read", off, len) + ": returned " + std::to_string(n) + ", expected " +
                std::to_string(expect));
      return;
    }
    compare(off, len, static_cast<uint64_t>(n));
  }

  void compare(uint64_t off, uint64_t len, uint64_t n) {
    const unsigned char* want = run_.model.data() + off;
    if (std::memcmp(buffer_.get(), want, n) == 0) return;
    uint64_t i = 0;
    while (buffer_[i] == want[i]) ++i;
    char values[64];
    std::snprintf(values, sizeof values, "expected 0x%02x got 0x%02x", want[i], buffer_[i]);
    run_.fail(describe("read", off, len) + ": first difference at byte offset " + std::to_string(off + i) +
              ": " + values);
  }

  void do_write() {
    auto [off, len] = pick_range();
    const uint64_t size = run_.target.size;
    if (!*o_.eof_writes) {
      // A plain file would grow: keep writes inside it, and read instead where none fits.
      if (off < size) len = std::min(len, size - off);
      if (o_.direct) len = len / kAlign * kAlign;
      if (off >= size || len == 0) {
        do_read();
        return;
      }
    }
    ++counts_.writes;
    if (o_.verbose) std::printf("%s write %llu+%llu\n", where().c_str(), ull(off), ull(len));
    for (uint64_t i = 0; i < len; i += 8) {
      const uint64_t word = rng_();
      std::memcpy(buffer_.get() + i, &word, std::min<uint64_t>(8, len - i));
    }
    const ssize_t n = ::pwrite(fd_, buffer_.get(), len, static_cast<off_t>(off));
    const int err = errno;
    if (off >= size) {
      if (n >= 0 || err != ENOSPC)
        run_.fail(describe("write", off, len) + ": at or past the end (size " + std::to_string(size) +
                  ") returned " + (n >= 0 ? std::to_string(n) : errno_text(err)) + ", expected ENOSPC");
      return;
    }
    const uint64_t expect = std::min(len, size - off);
    if (n < 0) {
      run_.fail(describe("write", off, len) + ": failed: " + errno_text(err));
      return;
    }
    if (static_cast<uint64_t>(n) != expect) {
      run_.fail(describe("write", off, len) + ": returned " + std::to_string(n) + ", expected " +
                std::to_string(expect));
      // Bytes a short write did store are unknown to the model from here on.
      return;
    }
    std::memcpy(run_.model.data() + off, buffer_.get(), expect);
    if (o_.corrupt && !run_.corrupted.exchange(true)) corrupt(off);
    // A later write over the flipped byte must not heal it, or the self-check could pass by luck.
    if (corrupt_at_ && *corrupt_at_ >= off && *corrupt_at_ < off + expect) run_.model[*corrupt_at_] ^= 0xff;
  }

  // --self-check-corrupt: proves a wrong read is caught (the model no longer matches what was stored).
  void corrupt(uint64_t off) {
    run_.corrupted = true;
    corrupt_at_ = off;
  }

  std::string describe(const char* what, uint64_t off, uint64_t len) const {
    return "fsx: MISMATCH " + where() + ": " + what + " offset " + std::to_string(off) + " length " +
           std::to_string(len);
  }

  static unsigned long long ull(uint64_t v) { return static_cast<unsigned long long>(v); }

  Run& run_;
  const Options& o_;
  unsigned index_;
  uint64_t lo_, hi_;
  bool owns_end_;
  uint64_t ops_;
  uint64_t op_ = 0;
  std::mt19937_64 rng_;
  Buffer buffer_;
  int fd_ = -1;
  Counts counts_;
  std::optional<uint64_t> corrupt_at_;
};

// Fills the model from --initial-model, or from the target itself.
void load_model(Run& run) {
  const Options& o = run.o;
  run.model.resize(run.target.size);
  if (!o.initial_model.empty()) {
    const int fd = ::open(o.initial_model.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) die("cannot open --initial-model " + o.initial_model + ": " + errno_text(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) die("cannot stat " + o.initial_model + ": " + errno_text(errno));
    if (static_cast<uint64_t>(st.st_size) != run.target.size)
      die("--initial-model " + o.initial_model + " is " + std::to_string(st.st_size) + " bytes, the target " +
          std::to_string(run.target.size));
    ssize_t got = 0;
    if (!read_fully(fd, run.model.data(), 0, run.model.size(), &got))
      die("cannot read " + o.initial_model + ": " + (got < 0 ? errno_text(errno) : "short read"));
    ::close(fd);
    return;
  }
  const int fd = open_target(o);
  Buffer buf = aligned_buffer(o.max_io);
  for (uint64_t off = 0; off < run.target.size; off += o.max_io) {
    const uint64_t len = std::min<uint64_t>(o.max_io, run.target.size - off);
    ssize_t got = 0;
    // Under O_DIRECT the last piece is read with an aligned length and comes back short at the end.
    const uint64_t ask = o.direct ? (len + kAlign - 1) / kAlign * kAlign : len;
    if (!read_fully(fd, buf.get(), off, ask, &got) && static_cast<uint64_t>(std::max<ssize_t>(got, 0)) < len)
      die("initial read of " + o.file + " at " + std::to_string(off) + ": " +
          (got < 0 ? errno_text(errno) : "short read"));
    std::memcpy(run.model.data() + off, buf.get(), len);
  }
  ::close(fd);
}

// The last word: the whole file, read through a fresh descriptor, against the model.
void final_compare(Run& run) {
  const Options& o = run.o;
  const int fd = open_target(o);
  Buffer buf = aligned_buffer(o.max_io);
  const uint64_t size = run.target.size;
  for (uint64_t off = 0; off < size && !run.failed; off += o.max_io) {
    const uint64_t len = std::min<uint64_t>(o.max_io, size - off);
    const uint64_t ask = o.direct ? (len + kAlign - 1) / kAlign * kAlign : len;
    const ssize_t n = ::pread(fd, buf.get(), ask, static_cast<off_t>(off));
    const std::string what = "fsx: MISMATCH seed " + std::to_string(o.seed) + " op final: read offset " +
                             std::to_string(off) + " length " + std::to_string(ask);
    if (n < 0) {
      run.fail(what + ": failed: " + errno_text(errno));
    } else if (static_cast<uint64_t>(n) != len) {
      run.fail(what + ": returned " + std::to_string(n) + ", expected " + std::to_string(len));
    } else if (std::memcmp(buf.get(), run.model.data() + off, len) != 0) {
      uint64_t i = 0;
      while (buf[i] == run.model[off + i]) ++i;
      char values[64];
      std::snprintf(values, sizeof values, "expected 0x%02x got 0x%02x", run.model[off + i], buf[i]);
      run.fail(what + ": first difference at byte offset " + std::to_string(off + i) + ": " + values);
    }
  }
  ::close(fd);
}

Options parse_options(int argc, char** argv) {
  namespace po = boost::program_options;
  Options o;
  std::string seed_text, max_io_text = "1M", eof_writes = "auto";
  po::options_description visible("Options");
  visible.add_options()("help,h", "show this help")("ops", po::value(&o.ops),
                                                    "operations: reads + writes + fsyncs (default 10000)")(
      "seed", po::value(&seed_text), "random seed (default: from the clock; printed at start)")(
      "direct", po::bool_switch(&o.direct), "O_DIRECT; offsets, lengths and buffers 4 KiB aligned")(
      "initial-model", po::value(&o.initial_model),
      "FILE holding the expected initial content (default: read the target once at start)")(
      "read-only", po::bool_switch(&o.read_only), "reads only (for read-only snapshot views)")(
      "max-io", po::value(&max_io_text), "largest read or write, bytes or K/M suffix (default 1M)")(
      "threads", po::value(&o.threads), "threads, each owning a disjoint slice of the file (default 1)")(
      "eof-writes", po::value(&eof_writes),
      "auto|on|off: also write at and across the end, expecting ENOSPC and short writes (auto: on for block "
      "devices and FUSE files, off for other regular files, which would grow)")(
      "verbose", po::bool_switch(&o.verbose), "print every operation");
  po::options_description hidden;
  hidden.add_options()("file", po::value(&o.file))("self-check-corrupt", po::bool_switch(&o.corrupt));
  po::options_description all;
  all.add(visible).add(hidden);
  po::positional_options_description positional;
  positional.add("file", 1);
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(all).positional(positional).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    die(std::string(e.what()) + " (see --help)");
  }
  if (vm.count("help") != 0) {
    std::cout
        << "Usage: kcopyfs_fsx [OPTIONS] FILE\n\n"
           "Random reads, writes (unaligned, and across the end), fsyncs and reopens on FILE, every read\n"
           "checked against an in-memory model, then the whole file compared. Exit 0 when all matched,\n"
           "1 on the first mismatch (one line: seed, op, offset, length, first differing byte), 2 on a\n"
           "usage or set-up error.\n\n"
        << visible;
    std::exit(0);
  }
  if (o.file.empty()) die("no FILE given (see --help)");
  if (o.ops == 0) die("--ops must be positive");
  if (o.threads == 0 || o.threads > 256) die("--threads must be 1 to 256");
  const auto max_io = parse_size(max_io_text);
  if (!max_io || *max_io == 0 || *max_io > (1ull << 30))
    die("--max-io: not a size from 1 to 1G: " + max_io_text);
  o.max_io = *max_io;
  if (o.direct && o.max_io % kAlign != 0) die("--max-io must be a multiple of 4096 with --direct");
  if (!seed_text.empty()) {
    try {
      size_t used = 0;
      o.seed = std::stoull(seed_text, &used, 0);
      if (used != seed_text.size()) throw std::invalid_argument(seed_text);
    } catch (const std::exception&) {
      die("--seed: not a number: " + seed_text);
    }
  } else {
    o.seed = static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count()) % 1000000000;
  }
  if (eof_writes != "auto" && eof_writes != "on" && eof_writes != "off")
    die("--eof-writes takes auto, on or off, not " + eof_writes);
  if (eof_writes != "auto") o.eof_writes = eof_writes == "on";
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  Run run;
  run.o = parse_options(argc, argv);
  Options& o = run.o;
  {
    const int fd = open_target(o);
    run.target = probe_target(fd, o.file);
    ::close(fd);
  }
  if (!o.eof_writes) o.eof_writes = run.target.block_rules;
  const uint64_t size = run.target.size;
  const uint64_t units = size / kAlign;
  if (o.threads > 1 && units < o.threads)
    die(o.file + " is too small for " + std::to_string(o.threads) + " threads (one 4 KiB slice each)");
  std::printf("fsx: %s: %llu bytes (%s), seed %llu, %llu ops, %u thread%s, %s, max-io %llu, %s%s\n",
              o.file.c_str(), static_cast<unsigned long long>(size), run.target.kind,
              static_cast<unsigned long long>(o.seed), static_cast<unsigned long long>(o.ops), o.threads,
              o.threads == 1 ? "" : "s", o.direct ? "O_DIRECT" : "buffered",
              static_cast<unsigned long long>(o.max_io), o.read_only ? "read-only" : "read-write",
              o.read_only ? "" : (*o.eof_writes ? ", writes at/across the end" : ", writes inside the file"));
  std::fflush(stdout);
  load_model(run);

  // Slices start on 4 KiB boundaries so that O_DIRECT ranges never straddle two threads' slices.
  std::vector<std::unique_ptr<Worker>> workers;
  for (unsigned t = 0; t < o.threads; ++t) {
    const uint64_t lo = o.threads == 1 ? 0 : units * t / o.threads * kAlign;
    const uint64_t hi = t + 1 == o.threads ? size : units * (t + 1) / o.threads * kAlign;
    const uint64_t ops = o.ops / o.threads + (t < o.ops % o.threads ? 1 : 0);
    workers.push_back(std::make_unique<Worker>(run, t, lo, hi, ops));
  }
  if (o.threads == 1) {
    workers[0]->run();
  } else {
    std::vector<std::thread> threads;
    for (auto& w : workers) threads.emplace_back([&w] { w->run(); });
    for (auto& t : threads) t.join();
  }
  if (!run.failed) final_compare(run);
  if (run.failed) {
    std::fflush(stdout);
    std::fprintf(stderr, "%s\n", run.failure.c_str());
    return 1;
  }
  Counts total;
  for (const auto& w : workers) {
    total.reads += w->counts().reads;
    total.writes += w->counts().writes;
    total.fsyncs += w->counts().fsyncs;
  }
  std::printf("fsx: %llu ops (%llu reads, %llu writes, %llu fsyncs) ok, seed %llu\n",
              static_cast<unsigned long long>(total.reads + total.writes + total.fsyncs),
              static_cast<unsigned long long>(total.reads), static_cast<unsigned long long>(total.writes),
              static_cast<unsigned long long>(total.fsyncs), static_cast<unsigned long long>(o.seed));
  return 0;
}
