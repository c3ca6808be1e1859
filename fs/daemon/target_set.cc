#include "fs/daemon/target_set.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <iostream>
#include <thread>
#include <utility>

#include "engine/file_device.h"
#include "engine/sync_io.h"
#include "engine/unique_fd.h"
#include "fs/daemon/device_checks.h"
#include "mirror/core_log.h"
#include "mirror/disk_log.h"
#include "snapshot/persistent_store.h"

namespace kcopyfs::daemon {

struct TargetSet::OriginTarget {
  OriginEntry entry;
  std::shared_ptr<Origin> origin;  // null when failed
  std::string failure;
};

struct TargetSet::SnapshotTarget {
  SnapshotEntry entry;
  Snapshot* snapshot = nullptr;  // owned by its origin; null when failed
  std::string failure;
  std::string merge_error;  // the error that stopped the last merge attempt
  bool shown = false;       // has a view
};

struct TargetSet::MirrorTarget {
  MirrorEntry entry;
  // Declared before the mirror so that it outlives the mirror's disk log.
  std::unique_ptr<BlockDevice> log_device;
  std::shared_ptr<Mirror> mirror;  // null when failed
  std::string failure;
};

namespace {

// How long a removal waits for the kernel's RELEASE of a view that was just closed.
constexpr std::chrono::milliseconds kCloseGrace(1000);
// How long load() retries devices still locked by a daemon that died just before (see open_device).
constexpr std::chrono::milliseconds kLoadLockWait(3000);

// Runs an undo action at scope exit unless dismissed: each step of a request registers how to take itself
// back, so a failure at any later step leaves nothing behind.
class Undo {
 public:
  Undo() = default;
  Undo(const Undo&) = delete;
  Undo& operator=(const Undo&) = delete;
  ~Undo() {
    for (auto it = actions_.rbegin(); it != actions_.rend(); ++it) (*it)();
  }
  void add(std::function<void()> action) { actions_.push_back(std::move(action)); }
  void dismiss() { actions_.clear(); }

 private:
  std::vector<std::function<void()>> actions_;
};

// Opens a target's device. A lock conflict (EBUSY) is retried until wait_until: a daemon that was just
// SIGKILLed holds its files' locks for a while (measured up to 85 ms; its io_uring is torn down after it
// dies).
Result<std::unique_ptr<BlockDevice>> open_device(const std::string& path,
                                                 std::chrono::steady_clock::time_point wait_until = {}) {
  if (Status s = check_device_path(path); !s) return s.error();
  auto dev = FileDevice::open(path, OpenOptions{});
  for (auto pause = std::chrono::milliseconds(5);
       !dev && dev.error().code() == std::errc::device_or_resource_busy &&
       std::chrono::steady_clock::now() + pause < wait_until;
       pause = std::min(pause * 2, std::chrono::milliseconds(200))) {
    std::this_thread::sleep_for(pause);  // a bounded back-off, not a synchronisation: the holder is gone
    dev = FileDevice::open(path, OpenOptions{});
  }
  if (!dev) return dev.error();
  // As the kernel refuses a zero-length target: an empty volume is a mistake, not a volume.
  if (dev.value()->size().value() == 0) return Error::invalid("device " + path + " is empty (0 bytes)");
  return std::unique_ptr<BlockDevice>(std::move(dev).value());
}

// Makes a new sparse file of size bytes, mode 0600; refuses one that exists (it may be a user's data).
Status make_sparse_file(const std::string& path, Bytes size) {
  UniqueFd fd(::open(path.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600));
  if (!fd.valid()) {
    if (errno == EEXIST) return Error(std::make_error_code(std::errc::file_exists), path + " already exists");
    return Error::from_errno(errno, "create " + path);
  }
  if (::ftruncate(fd.get(), static_cast<off_t>(size.value())) != 0) {
    const int err = errno;
    ::unlink(path.c_str());
    return Error::from_errno(err, "size " + path);
  }
  return {};
}

std::string human_size(uint64_t bytes) {
  static const char* const kUnits[] = {"bytes", "KiB", "MiB", "GiB", "TiB"};
  unsigned u = 0;
  uint64_t v = bytes;
  while (u < 4 && v >= 1024 && v % 1024 == 0) {
    v /= 1024;
    ++u;
  }
  return std::to_string(v) + " " + kUnits[u];
}

Error busy_view(const char* kind, const std::string& name, const std::string& what) {
  return Error(std::make_error_code(std::errc::device_or_resource_busy),
               std::string(kind) + " " + name + " is open: close it before " + what);
}

Error not_found(const std::string& name) {
  return Error(std::make_error_code(std::errc::no_such_file_or_directory), "no target named " + name);
}

void log_line(const std::string& line) { std::cerr << "kcopyfs: " << line << std::endl; }

// Whether a and b name the same file or block device (a leg may be named by another path than the one the
// mirror was built with).
bool same_device(const std::string& a, const std::string& b) {
  if (a == b) return true;
  struct stat sa, sb;
  if (::stat(a.c_str(), &sa) != 0 || ::stat(b.c_str(), &sb) != 0) return false;
  if (S_ISBLK(sa.st_mode) && S_ISBLK(sb.st_mode)) return sa.st_rdev == sb.st_rdev;
  return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

}  // namespace

TargetSet::TargetSet(std::string state_dir, fs::ViewServer& views,
                     std::function<Status(const VolumeTable&)> save,
                     std::function<bool(std::function<void()>)> post)
    : state_dir_(std::move(state_dir)), views_(views), save_(std::move(save)), post_(std::move(post)) {
  recorder_thread_ = std::thread([this] { recorder_loop(); });
}

TargetSet::~TargetSet() {
  (void)close();
  {
    std::lock_guard lock(recorder_mutex_);
    recorder_stop_ = true;
  }
  recorder_wake_.notify_all();
  recorder_thread_.join();
}

std::string TargetSet::invalid_mark(const std::string& name) const { return default_path(name, ".invalid"); }

namespace {

// Writes the invalidation mark durably (the file, then its directory entry).
void write_invalid_mark(const std::string& path, const std::string& dir) {
  // Result: the step that failed (errno says why), or nullptr.
  auto write_durably = [&]() -> const char* {
    const std::string text = "invalidated; its COW header could not be written\n";
    UniqueFd fd(::open(path.c_str(), O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0600));
    if (!fd.valid()) return "create";
    if (::write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size())) return "write";
    if (::fsync(fd.get()) != 0) return "fsync";
    UniqueFd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!d.valid() || ::fsync(d.get()) != 0) return "fsync the directory of";
    return nullptr;
  };
  if (const char* step = write_durably())
    log_line(std::string("could not record the invalidation: ") + step + " " + path + ": " +
             std::strerror(errno));
}

}  // namespace

void TargetSet::configure_origin(Origin& origin, const OriginEntry& entry) {
  origin.set_invalidation_recorder(invalidation_recorder());
  origin.set_write_back_limit(write_back_limit_);
  // A dying device can fail a burst of acknowledged writes; like the kernel's own message for a lost write,
  // the log gets at most one line a second per origin, counting the ones it left out.
  struct Throttled {
    std::mutex mutex;
    std::chrono::steady_clock::time_point last{};
    bool logged = false;
    uint64_t left_out = 0;
  };
  origin.set_landing_failure_reporter(
      [name = entry.name, device = entry.device, state = std::make_shared<Throttled>()](
          Bytes offset, Bytes length, std::error_code error) {
        uint64_t left_out = 0;
        {
          std::lock_guard lock(state->mutex);
          const auto now = std::chrono::steady_clock::now();
          if (state->logged && now - state->last < std::chrono::seconds(1)) {
            ++state->left_out;
            return;
          }
          state->logged = true;
          state->last = now;
          left_out = std::exchange(state->left_out, 0);
        }
        std::string line = "origin ";
        line += name;
        line += ": a write of ";
        line += std::to_string(length.value());
        line += " bytes at byte ";
        line += std::to_string(offset.value());
        line += ", already acknowledged, failed to reach ";
        line += device;
        line += ": ";
        line += error.message();
        line += " (the next fsync of the origin reports it)";
        if (left_out > 0) {
          line += "; ";
          line += std::to_string(left_out);
          line += " more since the last such line";
        }
        log_line(line);
      });
}

Origin::InvalidationRecorder TargetSet::invalidation_recorder() {
  return [this](const std::string& name, std::function<void()> done) {
    std::unique_lock lock(recorder_mutex_);
    if (recorder_stop_) {
      lock.unlock();
      write_invalid_mark(invalid_mark(name), state_dir_);
      return done();
    }
    recorder_queue_.emplace_back(name, std::move(done));
    recorder_wake_.notify_all();
  };
}

void TargetSet::recorder_loop() {
  std::unique_lock lock(recorder_mutex_);
  for (;;) {
    recorder_wake_.wait(lock, [this] { return recorder_stop_ || !recorder_queue_.empty(); });
    if (recorder_queue_.empty()) return;  // stopping, and nothing left
    auto [name, done] = std::move(recorder_queue_.front());
    recorder_queue_.pop_front();
    lock.unlock();
    write_invalid_mark(invalid_mark(name), state_dir_);
    log_line("snapshot " + name +
             ": invalidated, and its COW header could not say so: " + invalid_mark(name) + " does");
    done();
    lock.lock();
  }
}

std::string TargetSet::default_path(const std::string& name, const char* suffix) const {
  return state_dir_ + "/" + name + suffix;
}

Status TargetSet::check_open() const {
  if (closed_)
    return Error(std::make_error_code(std::errc::operation_canceled), "the daemon is shutting down");
  return {};
}

Status TargetSet::check_new_name(const std::string& name) const {
  if (!valid_target_name(name))
    return Error::invalid("bad name '" + name + "': use 1-64 of A-Z a-z 0-9 . _ -, not starting with '.'");
  auto taken = [&](const auto& list) {
    return std::any_of(list.begin(), list.end(), [&](const auto& t) { return t->entry.name == name; });
  };
  if (taken(origins_) || taken(snapshots_) || taken(mirrors_))
    return Error(std::make_error_code(std::errc::file_exists), "a target named " + name + " exists already");
  return {};
}

TargetSet::OriginTarget* TargetSet::find_origin(const std::string& name) {
  for (auto& o : origins_)
    if (o->entry.name == name) return o.get();
  return nullptr;
}

TargetSet::SnapshotTarget* TargetSet::find_snapshot(const std::string& name) {
  for (auto& s : snapshots_)
    if (s->entry.name == name) return s.get();
  return nullptr;
}

TargetSet::MirrorTarget* TargetSet::find_mirror(const std::string& name) {
  for (auto& m : mirrors_)
    if (m->entry.name == name) return m.get();
  return nullptr;
}

Result<TargetSet::OriginTarget*> TargetSet::loaded_origin(const std::string& name) {
  OriginTarget* o = find_origin(name);
  if (o == nullptr) return Error::invalid("no origin named " + name);
  if (!o->origin) return Error::invalid("origin " + name + " failed to load: " + o->failure);
  return o;
}

Result<TargetSet::MirrorTarget*> TargetSet::loaded_mirror(const std::string& name) {
  MirrorTarget* m = find_mirror(name);
  if (m == nullptr)
    return find_origin(name) || find_snapshot(name) ? Error::invalid(name + " is not a mirror")
                                                    : not_found(name);
  if (!m->mirror) return Error::invalid("mirror " + name + " failed to load: " + m->failure);
  return m;
}

Status TargetSet::publish_snapshot(OriginTarget& o, std::unique_ptr<SnapshotTarget> t) {
  const std::string name = t->entry.name;
  if (Status s = show_snapshot(o, *t); !s) return s;
  snapshots_.push_back(std::move(t));
  if (Status s = save_locked(); !s) {
    snapshots_.pop_back();
    (void)views_.remove_volume(fs::VolumeKind::snapshot, name, kCloseGrace);
    return s;
  }
  return {};
}

VolumeTable TargetSet::table() const {
  std::lock_guard lock(mutex_);
  return table_locked();
}

VolumeTable TargetSet::table_locked() const {
  VolumeTable t;
  for (const auto& o : origins_) t.origins.push_back(o->entry);
  for (const auto& s : snapshots_) t.snapshots.push_back(s->entry);
  for (const auto& m : mirrors_) t.mirrors.push_back(m->entry);
  return t;
}

Status TargetSet::save_locked() { return save_(table_locked()); }

// ---- Loading ----

Status TargetSet::load(const VolumeTable& table) {
  std::lock_guard lock(mutex_);
  // Every device of the table gets the same few seconds to be released by a previous daemon that died.
  lock_wait_until_ = std::chrono::steady_clock::now() + kLoadLockWait;
  struct Reset {
    std::chrono::steady_clock::time_point& until;
    ~Reset() { until = {}; }
  } reset{lock_wait_until_};
  bool dropped = false;
  for (const OriginEntry& e : table.origins) load_origin(e);
  for (const SnapshotEntry& e : table.snapshots) {
    if (!e.persistent) {
      // A transient snapshot does not outlive its daemon (dm's N store); this one's daemon ended without
      // cleaning up (SIGKILL, power cut).
      if (e.cow_is_default) ::unlink(e.cow.c_str());
      log_line("dropped transient snapshot " + e.name + " of an earlier run");
      dropped = true;
      continue;
    }
    load_snapshot(e);
  }
  // Merges resume only once every snapshot is attached: an origin takes no new snapshot while it merges, and
  // a snapshot left out would miss the copies the merge makes for the others (and read wrong data later).
  for (const auto& s : snapshots_) {
    if (!s->entry.merging || s->snapshot == nullptr) continue;
    OriginTarget* o = find_origin(s->entry.origin);
    if (Status st = start_merge_locked(*o, *s); !st)
      log_line("the merge of snapshot " + s->entry.name + " did not resume: " + st.error().message());
    else
      log_line("resuming the merge of snapshot " + s->entry.name + " into " + s->entry.origin);
  }
  for (const MirrorEntry& e : table.mirrors) load_mirror(e);
  return dropped ? save_locked() : Status{};
}

void TargetSet::load_origin(const OriginEntry& entry) {
  auto t = std::make_unique<OriginTarget>();
  t->entry = entry;
  auto fail = [&](const std::string& why) {
    t->failure = why;
    log_line("origin " + entry.name + " failed to load: " + why);
  };
  if (auto dev = open_device(entry.device, lock_wait_until_); !dev) {
    fail(dev.error().message());
  } else if (auto origin = Origin::create(std::move(dev).value()); !origin) {
    fail(origin.error().message());
  } else {
    t->origin = std::shared_ptr<Origin>(std::move(origin).value());
    configure_origin(*t->origin, entry);
    if (Status s = views_.add_volume(fs::VolumeKind::origin, entry.name, t->origin); !s) {
      t->origin.reset();
      fail(s.error().message());
    }
  }
  origins_.push_back(std::move(t));
}

void TargetSet::load_snapshot(const SnapshotEntry& entry) {
  auto t = std::make_unique<SnapshotTarget>();
  t->entry = entry;
  SnapshotTarget& s = *t;
  snapshots_.push_back(std::move(t));
  auto fail = [&](const std::string& why) {
    s.failure = why;
    log_line("snapshot " + entry.name + " failed to load: " + why);
  };
  OriginTarget* o = find_origin(entry.origin);
  if (o == nullptr || !o->origin) return fail("its origin " + entry.origin + " is not loaded");
  auto cow = open_device(entry.cow, lock_wait_until_);
  if (!cow) return fail(cow.error().message());
  auto snap = o->origin->attach_snapshot(entry.name, std::move(cow).value(), entry.writable);
  if (!snap) return fail(snap.error().message());
  s.snapshot = snap.value();
  const Bytes chunk = to_bytes(s.snapshot->status().chunk_size);
  if (chunk != entry.chunk_size) {
    s.snapshot = nullptr;
    (void)o->origin->remove_snapshot(entry.name);
    return fail("its COW " + entry.cow + " has chunk size " + human_size(chunk.value()) +
                ", the table says " + human_size(entry.chunk_size.value()));
  }
  if (::access(invalid_mark(entry.name).c_str(), F_OK) == 0 && s.snapshot->status().valid) {
    // Its header still says valid because the write that would have said otherwise failed.
    (void)o->origin->invalidate_snapshot(
        entry.name, "invalidated before the last unmount; its COW header could not record it");
    log_line("snapshot " + entry.name + " is invalid (" + invalid_mark(entry.name) + ")");
  }
  if (entry.merging) return;  // resumed by load() once every snapshot is attached; its view stays hidden
  if (Status st = show_snapshot(*o, s); !st) fail(st.error().message());
}

Result<std::shared_ptr<Mirror>> TargetSet::build_mirror(const MirrorEntry& entry, SyncMode mode,
                                                        std::unique_ptr<BlockDevice>& log_device) {
  std::vector<std::unique_ptr<BlockDevice>> legs;
  for (const std::string& path : entry.legs) {
    auto dev = open_device(path, lock_wait_until_);
    if (!dev) return dev.error();
    legs.push_back(std::move(dev).value());
  }
  MirrorOptions options;
  options.region_size = to_sectors(entry.region_size);
  options.throttle_percent = entry.throttle_percent;
  options.throttle_bytes_per_second = entry.throttle_bytes_per_second;
  Result<std::unique_ptr<Mirror>> mirror = Error::invalid("");
  if (entry.log == "core") {
    auto log = CoreLog::create(options.region_size, Mirror::size_of(legs), mode);
    if (!log) return log.error();
    mirror = Mirror::create(std::move(legs), std::unique_ptr<DirtyLog>(std::move(log).value()), options);
  } else {
    auto dev = open_device(entry.log_device, lock_wait_until_);
    if (!dev) return dev.error();
    log_device = std::move(dev).value();
    BlockDevice& logdev = *log_device;
    const Sector region = options.region_size;
    mirror = Mirror::create(
        std::move(legs),
        [&logdev, region, mode](Sector size, FlushLegs flush_legs) -> Result<std::unique_ptr<DirtyLog>> {
          auto log = DiskLog::open(logdev, region, size, mode, std::move(flush_legs));
          if (!log) return log.error();
          return std::unique_ptr<DirtyLog>(std::move(log).value());
        },
        options);
  }
  if (!mirror) {
    log_device.reset();
    return mirror.error();
  }
  return std::shared_ptr<Mirror>(std::move(mirror).value());
}

void TargetSet::load_mirror(const MirrorEntry& entry) {
  auto t = std::make_unique<MirrorTarget>();
  t->entry = entry;
  auto mirror = build_mirror(entry, SyncMode::by_log, t->log_device);
  if (!mirror) {
    t->failure = mirror.error().message();
  } else {
    t->mirror = std::move(mirror).value();
    if (Status s = views_.add_volume(fs::VolumeKind::mirror, entry.name, t->mirror); !s) {
      t->mirror.reset();
      t->log_device.reset();
      t->failure = s.error().message();
    }
  }
  if (!t->failure.empty()) log_line("mirror " + entry.name + " failed to load: " + t->failure);
  mirrors_.push_back(std::move(t));
}

Status TargetSet::show_snapshot(OriginTarget& o, SnapshotTarget& s) {
  fs::ViewOptions view;
  view.read_only = !s.entry.writable;
  // A read-only snapshot never changes under the kernel's page cache; a writable one may be written by
  // another opener, so it bypasses the cache as origins do.
  view.cache = s.entry.writable ? fs::CacheMode::direct_io : fs::CacheMode::keep_cache;
  std::shared_ptr<BlockDevice> device(o.origin, s.snapshot);  // keeps the origin (the owner) alive
  if (Status st = views_.add_volume(fs::VolumeKind::snapshot, s.entry.name, std::move(device), view); !st)
    return st;
  s.shown = true;
  return {};
}

// ---- Requests ----

Status TargetSet::add_origin(const std::string& name, const std::string& device) {
  std::lock_guard lock(mutex_);
  if (Status s = check_open(); !s) return s;
  if (Status s = check_new_name(name); !s) return s;
  auto dev = open_device(device);
  if (!dev) return dev.error();
  auto origin = Origin::create(std::move(dev).value());
  if (!origin) return origin.error();
  auto t = std::make_unique<OriginTarget>();
  t->entry = OriginEntry{name, device};
  t->origin = std::shared_ptr<Origin>(std::move(origin).value());
  configure_origin(*t->origin, t->entry);
  if (Status s = views_.add_volume(fs::VolumeKind::origin, name, t->origin); !s) return s;
  origins_.push_back(std::move(t));
  if (Status s = save_locked(); !s) {
    (void)views_.remove_volume(fs::VolumeKind::origin, name, kCloseGrace);
    origins_.pop_back();
    return s;
  }
  return {};
}

bool TargetSet::path_in_use_locked(const std::string& path) const {
  auto used = [&](const std::string& p) { return same_device(p, path); };
  for (const auto& o : origins_)
    if (used(o->entry.device)) return true;
  for (const auto& s : snapshots_)
    if (used(s->entry.cow)) return true;
  for (const auto& m : mirrors_)
    if ((m->entry.log == "disk" && used(m->entry.log_device)) ||
        std::any_of(m->entry.legs.begin(), m->entry.legs.end(), used))
      return true;
  return false;
}

Status TargetSet::create_snapshot(const SnapshotRequest& r) {
  std::lock_guard lock(mutex_);
  if (Status s = check_open(); !s) return s;
  if (Status s = check_new_name(r.name); !s) return s;
  auto found = loaded_origin(r.origin);
  if (!found) return found.error();
  OriginTarget* o = found.value();
  ::unlink(invalid_mark(r.name).c_str());  // left by an earlier snapshot of this name, removed by hand
  if (r.chunk_size.value() % kSectorSize != 0)
    return Error::invalid("chunk size " + std::to_string(r.chunk_size.value()) +
                          " is not a multiple of 512 bytes");
  const Sector chunk = to_sectors(r.chunk_size);
  if (std::string why = check_chunk_size(chunk, o->origin->logical_block_size(), 512); !why.empty())
    return Error::invalid(why);
  if (r.cow && r.cow_size) return Error::invalid("--cow-size sizes the default COW file; not with --cow");

  Undo undo;
  std::string cow_path;
  if (r.cow) {
    cow_path = *r.cow;
  } else {
    cow_path = default_path(r.name, ".cow");
    Bytes size = r.cow_size ? *r.cow_size : PersistentStore::device_size_for(o->origin->size(), chunk);
    if (size.value() % kSectorSize != 0)
      return Error::invalid("COW size " + std::to_string(size.value()) + " is not a multiple of 512 bytes");
    // A default COW file that no target uses is what a create cut short (a crash between making the file and
    // saving the table) leaves in the state directory: the daemon made it, nobody was told of it.
    if (!path_in_use_locked(cow_path)) ::unlink(cow_path.c_str());
    if (Status s = make_sparse_file(cow_path, size); !s) return s;
    undo.add([cow_path] { ::unlink(cow_path.c_str()); });
  }
  auto cow = open_device(cow_path);
  if (!cow) return cow.error();

  SnapshotOptions options;
  options.chunk_size = chunk;
  options.persistent = !r.transient;
  options.writable = r.writable;
  auto snap = o->origin->create_snapshot(r.name, std::move(cow).value(), options);
  if (!snap) return snap.error();
  Origin& origin = *o->origin;
  const std::string name = r.name;
  undo.add([&origin, name] { (void)origin.remove_snapshot(name); });

  auto t = std::make_unique<SnapshotTarget>();
  t->entry.name = r.name;
  t->entry.origin = r.origin;
  t->entry.cow = cow_path;
  t->entry.cow_is_default = !r.cow;
  t->entry.persistent = !r.transient;
  t->entry.writable = r.writable;
  t->entry.chunk_size = r.chunk_size;
  t->snapshot = snap.value();
  if (Status s = publish_snapshot(*o, std::move(t)); !s) return s;
  undo.dismiss();
  return {};
}

Status TargetSet::attach_snapshot(const std::string& origin_name, const std::string& name,
                                  const std::string& cow_path, bool writable) {
  std::lock_guard lock(mutex_);
  if (Status s = check_open(); !s) return s;
  if (Status s = check_new_name(name); !s) return s;
  auto found = loaded_origin(origin_name);
  if (!found) return found.error();
  OriginTarget* o = found.value();
  ::unlink(invalid_mark(name).c_str());  // left by an earlier snapshot of this name, removed by hand
  auto cow = open_device(cow_path);
  if (!cow) return cow.error();
  auto snap = o->origin->attach_snapshot(name, std::move(cow).value(), writable);
  if (!snap) return snap.error();
  Undo undo;
  Origin& origin = *o->origin;
  undo.add([&origin, name] { (void)origin.remove_snapshot(name); });

  auto t = std::make_unique<SnapshotTarget>();
  t->entry.name = name;
  t->entry.origin = origin_name;
  t->entry.cow = cow_path;
  t->entry.writable = writable;
  t->entry.chunk_size = to_bytes(snap.value()->status().chunk_size);
  t->snapshot = snap.value();
  if (Status s = publish_snapshot(*o, std::move(t)); !s) return s;
  undo.dismiss();
  return {};
}

Status TargetSet::start_merge_locked(OriginTarget& o, SnapshotTarget& s) {
  const std::string name = s.entry.name;
  Status st = o.origin->start_merge(name, [this, name](Status result) {
    // On the merge thread: the bookkeeping (table, files, views) belongs to the daemon's loop.
    post_([this, name, result] { merge_finished(name, result); });
  });
  s.merge_error = st ? std::string() : st.error().message();
  return st;
}

Status TargetSet::merge_snapshot(const std::string& name) {
  std::lock_guard lock(mutex_);
  if (Status s = check_open(); !s) return s;
  SnapshotTarget* s = find_snapshot(name);
  if (s == nullptr)
    return find_origin(name) || find_mirror(name) ? Error::invalid(name + " is not a snapshot")
                                                  : not_found(name);
  if (!s->snapshot) return Error::invalid("snapshot " + name + " failed to load: " + s->failure);
  if (s->entry.merging) return Error::invalid("snapshot " + name + " is merging already");
  if (!s->entry.persistent)
    return Error::invalid("snapshot " + name + " is transient: only persistent ones merge");
  OriginTarget* o = find_origin(s->entry.origin);
  Undo undo;
  if (s->shown) {
    // The snapshot's own view goes away: from now on the origin shows its content.
    Status st = views_.remove_volume(fs::VolumeKind::snapshot, name, kCloseGrace);
    if (!st)
      return st.error().code() == std::errc::device_or_resource_busy ? busy_view("snapshot", name, "merging")
                                                                     : st.error();
    s->shown = false;
    undo.add([this, o, s] { (void)show_snapshot(*o, *s); });
  }
  s->entry.merging = true;
  undo.add([s] { s->entry.merging = false; });
  if (Status st = save_locked(); !st) return st;
  const std::string origin_name = s->entry.origin;
  if (Status st = start_merge_locked(*o, *s); !st) {
    s->merge_error.clear();
    s->entry.merging = false;
    (void)save_locked();
    return st;
  }
  undo.dismiss();
  log_line("merging snapshot " + name + " into " + origin_name);
  return {};
}

void TargetSet::merge_finished(const std::string& name, Status result) {
  std::lock_guard lock(mutex_);
  if (closed_) return;
  SnapshotTarget* s = find_snapshot(name);
  if (s == nullptr) return;
  if (!result) {
    s->merge_error = result.error().message();
    log_line("merge of snapshot " + name + " failed: " + s->merge_error);
    return;
  }
  // The origin has dropped the snapshot already.
  const SnapshotEntry entry = s->entry;
  snapshots_.erase(std::find_if(snapshots_.begin(), snapshots_.end(),
                                [&](const auto& t) { return t->entry.name == name; }));
  // The table first: a crash between the two leaves an unused file, never an entry without its COW.
  if (Status st = save_locked(); !st) log_line("merge of " + name + " done, but " + st.error().message());
  if (entry.cow_is_default) ::unlink(entry.cow.c_str());
  log_line("merge of snapshot " + name + " into " + entry.origin + " is done");
}

Status TargetSet::create_mirror(const MirrorRequest& r) {
  std::lock_guard lock(mutex_);
  if (Status s = check_open(); !s) return s;
  if (Status s = check_new_name(r.name); !s) return s;
  if (r.legs.size() < kMinLegs || r.legs.size() > kMaxLegs)
    return Error::invalid("a mirror has 2 to 9 legs, not " + std::to_string(r.legs.size()));
  if (r.log != "disk" && r.log != "core") return Error::invalid("log must be disk or core, not " + r.log);
  if (r.region_size.value() == 0 || r.region_size.value() % kSectorSize != 0)
    return Error::invalid("region size " + std::to_string(r.region_size.value()) +
                          " is not a multiple of 512 bytes");

  MirrorEntry entry;
  entry.name = r.name;
  entry.legs = r.legs;
  entry.region_size = r.region_size;
  entry.log = r.log;
  Undo undo;
  if (r.log == "disk") {
    // The log's size depends on the mirror's, which is the smallest leg's: size the legs first.
    uint64_t smallest = UINT64_MAX;
    for (const std::string& path : r.legs) {
      if (Status s = check_device_path(path); !s) return s;
      auto dev = FileDevice::open(path, OpenOptions{.access = Access::read_only, .sharing = Sharing::none});
      if (!dev) return dev.error();
      smallest = std::min(smallest, dev.value()->size().value());
    }
    if (std::string why = check_region_size(to_sectors(r.region_size), to_sectors(Bytes(smallest)));
        !why.empty())
      return Error::invalid(why);
    entry.log_device = default_path(r.name, ".log");
    entry.log_is_default = true;
    const Bytes log_size = DiskLog::device_size_for(to_sectors(Bytes(smallest)), to_sectors(r.region_size));
    if (Status s = make_sparse_file(entry.log_device, log_size); !s) return s;
    const std::string log_path = entry.log_device;
    undo.add([log_path] { ::unlink(log_path.c_str()); });
  }
  auto t = std::make_unique<MirrorTarget>();
  t->entry = entry;
  auto mirror = build_mirror(entry, r.nosync ? SyncMode::nosync : SyncMode::by_log, t->log_device);
  if (!mirror) return mirror.error();
  t->mirror = std::move(mirror).value();
  if (Status s = views_.add_volume(fs::VolumeKind::mirror, r.name, t->mirror); !s) return s;
  const std::string name = r.name;
  undo.add([this, name] { (void)views_.remove_volume(fs::VolumeKind::mirror, name, kCloseGrace); });
  mirrors_.push_back(std::move(t));
  undo.add([this] { mirrors_.pop_back(); });
  if (Status s = save_locked(); !s) return s;
  undo.dismiss();
  return {};
}

Status TargetSet::resync_mirror(const std::string& name) {
  std::lock_guard lock(mutex_);
  if (Status s = check_open(); !s) return s;
  auto found = loaded_mirror(name);
  if (!found) return found.error();
  MirrorTarget* m = found.value();
  return m->mirror->resync_all();
}

Status TargetSet::replace_leg(const std::string& name, const std::string& old_device,
                              const std::string& new_device) {
  std::lock_guard lock(mutex_);
  if (Status s = check_open(); !s) return s;
  auto found = loaded_mirror(name);
  if (!found) return found.error();
  MirrorTarget* m = found.value();
  auto& legs = m->entry.legs;
  auto it = std::find_if(legs.begin(), legs.end(), [&](const std::string& l) { return l == old_device; });
  if (it == legs.end())
    it = std::find_if(legs.begin(), legs.end(),
                      [&](const std::string& l) { return same_device(l, old_device); });
  if (it == legs.end()) return Error::invalid(old_device + " is not a leg of mirror " + name);
  auto dev = open_device(new_device);
  if (!dev) return dev.error();
  const unsigned index = static_cast<unsigned>(it - legs.begin());
  // The table names the new leg before any I/O reaches it: a crash then finds either the old legs with every
  // region out of sync (all resynced again) or the new ones.
  Status saved;
  auto old = m->mirror->replace_leg(index, std::move(dev).value(), [&] {
    *it = new_device;
    saved = save_locked();
  });
  if (!old) return old.error();
  if (!saved)
    return Error(saved.error().code(),
                 "the leg was replaced, but the table was not saved: " + saved.error().message());
  log_line("mirror " + name + ": leg " + old_device + " replaced by " + new_device);
  return {};
}

Status TargetSet::throttle_mirror(const std::string& name, unsigned percent, uint64_t bytes_per_second) {
  std::lock_guard lock(mutex_);
  if (Status s = check_open(); !s) return s;
  auto found = loaded_mirror(name);
  if (!found) return found.error();
  MirrorTarget* m = found.value();
  if (percent < 1 || percent > 100) return Error::invalid("throttle percent must be 1 to 100");
  // Saved first, so that a failure leaves the mirror and its table entry as they were.
  const MirrorEntry before = m->entry;
  m->entry.throttle_percent = percent;
  m->entry.throttle_bytes_per_second = bytes_per_second;
  if (Status saved = save_locked(); !saved) {
    m->entry = before;
    return saved.error();
  }
  m->mirror->set_throttle(percent, bytes_per_second);
  return {};
}

Status TargetSet::remove(const std::string& name) {
  std::lock_guard lock(mutex_);
  if (Status s = check_open(); !s) return s;
  if (OriginTarget* o = find_origin(name)) {
    std::string children;
    for (const auto& s : snapshots_)
      if (s->entry.origin == name) children += (children.empty() ? "" : ", ") + s->entry.name;
    if (!children.empty()) return Error::invalid("origin " + name + " still has snapshots: " + children);
    if (o->origin) {
      Status st = views_.remove_volume(fs::VolumeKind::origin, name, kCloseGrace);
      if (!st)
        return st.error().code() == std::errc::device_or_resource_busy ? busy_view("origin", name, "removing")
                                                                       : st.error();
      if (std::error_code ec = flush_sync(*o->origin))
        log_line("origin " + name + ": final flush failed: " + ec.message());
    }
    const OriginEntry entry = o->entry;
    auto it = std::find_if(origins_.begin(), origins_.end(), [&](const auto& t) { return t.get() == o; });
    std::unique_ptr<OriginTarget> gone = std::move(*it);
    origins_.erase(it);
    if (Status st = save_locked(); !st) {
      log_line("origin " + name + " removed from the mount, but " + st.error().message());
      return st;
    }
    return {};
  }
  if (SnapshotTarget* s = find_snapshot(name)) {
    if (s->entry.merging && s->snapshot)
      return Error::invalid("snapshot " + name +
                            " is merging; it goes away by itself when the merge is done");
    if (s->shown) {
      Status st = views_.remove_volume(fs::VolumeKind::snapshot, name, kCloseGrace);
      if (!st)
        return st.error().code() == std::errc::device_or_resource_busy
                   ? busy_view("snapshot", name, "removing")
                   : st.error();
      s->shown = false;
    }
    if (s->snapshot) {
      OriginTarget* o = find_origin(s->entry.origin);
      if (Status st = o->origin->remove_snapshot(name); !st) return st;
      s->snapshot = nullptr;
    }
    const SnapshotEntry entry = s->entry;
    snapshots_.erase(
        std::find_if(snapshots_.begin(), snapshots_.end(), [&](const auto& t) { return t.get() == s; }));
    // The table first: a crash between the two leaves an unused file, never an entry without its COW.
    Status saved = save_locked();
    if (entry.cow_is_default) ::unlink(entry.cow.c_str());
    ::unlink(invalid_mark(entry.name).c_str());
    return saved;
  }
  if (MirrorTarget* m = find_mirror(name)) {
    if (m->mirror) {
      Status st = views_.remove_volume(fs::VolumeKind::mirror, name, kCloseGrace);
      if (!st)
        return st.error().code() == std::errc::device_or_resource_busy ? busy_view("mirror", name, "removing")
                                                                       : st.error();
    }
    const MirrorEntry entry = m->entry;
    mirrors_.erase(
        std::find_if(mirrors_.begin(), mirrors_.end(), [&](const auto& t) { return t.get() == m; }));
    Status saved = save_locked();
    if (entry.log_is_default) ::unlink(entry.log_device.c_str());
    return saved;
  }
  return not_found(name);
}

// ---- Status ----

nlohmann::json TargetSet::status() const {
  std::lock_guard lock(mutex_);
  using nlohmann::json;
  json targets = json::array();
  for (const auto& o : origins_) {
    json t = {{"name", o->entry.name}, {"type", "origin"}, {"device", o->entry.device}};
    json children = json::array();
    for (const auto& s : snapshots_)
      if (s->entry.origin == o->entry.name) children.push_back(s->entry.name);
    if (o->origin) {
      t["size"] = o->origin->size().value();
      t["state"] = "active";
      const Origin::MergeProgress p = o->origin->merge_progress();
      if (!p.snapshot.empty()) t["merging"] = p.snapshot;
    } else {
      t["size"] = nullptr;
      t["state"] = "failed";
      t["reason"] = o->failure;
    }
    t["snapshots"] = children;
    t["dm_status"] = "";
    targets.push_back(std::move(t));
  }
  for (const auto& s : snapshots_) {
    const SnapshotEntry& e = s->entry;
    json t = {{"name", e.name},
              {"type", "snapshot"},
              {"origin", e.origin},
              {"cow", e.cow},
              {"persistent", e.persistent},
              {"writable", e.writable},
              {"chunk_size", e.chunk_size.value()}};
    if (!s->snapshot) {
      t["state"] = "failed";
      t["reason"] = s->failure;
      t["merge"] = nullptr;
      t["dm_status"] = "";
      targets.push_back(std::move(t));
      continue;
    }
    // Through the origin: a merge that just finished may have dropped the snapshot already.
    const OriginTarget* o = nullptr;
    for (const auto& x : origins_)
      if (x->entry.name == e.origin) o = x.get();
    const std::optional<SnapshotStatus> maybe = o->origin->snapshot_status(e.name);
    if (!maybe) {
      t["state"] = "merging";
      t["merge"] = nullptr;
      t["dm_status"] = "";
      targets.push_back(std::move(t));
      continue;
    }
    const SnapshotStatus& st = *maybe;
    t["size"] = o->origin->size().value();
    t["cow_size"] = to_bytes(st.usage.total).value();
    t["cow_used"] = to_bytes(st.usage.allocated).value();
    t["metadata_used"] = to_bytes(st.usage.metadata).value();
    t["merge"] = nullptr;
    if (!st.valid) {
      t["state"] = "invalid";
      t["reason"] = st.reason;
    } else if (st.merge_failed || (e.merging && !s->merge_error.empty())) {
      t["state"] = "failed";
      t["reason"] =
          "merge failed: " + (s->merge_error.empty() ? std::string("see the daemon's log") : s->merge_error);
    } else if (e.merging) {
      t["state"] = "merging";
      const Origin::MergeProgress p = o->origin->merge_progress();
      if (p.snapshot == e.name) t["merge"] = {{"done", p.done_chunks}, {"total", p.total_chunks}};
    } else if (st.overflow) {
      t["state"] = "overflow";
    } else {
      t["state"] = "active";
    }
    t["dm_status"] = st.kernel_status();
    targets.push_back(std::move(t));
  }
  for (const auto& m : mirrors_) {
    const MirrorEntry& e = m->entry;
    json t = {{"name", e.name}, {"type", "mirror"}, {"region_size", e.region_size.value()}, {"log", e.log}};
    if (e.log == "disk") t["log_device"] = e.log_device;
    if (!m->mirror) {
      t["state"] = "failed";
      t["reason"] = m->failure;
      json legs = json::array();
      for (const std::string& l : e.legs) legs.push_back({{"device", l}, {"health", "U"}});
      t["legs"] = legs;
      t["throttle"] = {{"percent", e.throttle_percent}, {"bytes_per_second", e.throttle_bytes_per_second}};
      t["dm_status"] = "";
      targets.push_back(std::move(t));
      continue;
    }
    const MirrorStatus st = m->mirror->status();
    t["size"] = m->mirror->size().value();
    t["regions_total"] = st.regions_total;
    t["regions_in_sync"] = st.regions_in_sync;
    t["state"] = st.regions_in_sync < st.regions_total && st.resyncing ? "resyncing" : "active";
    t["resync_bytes_per_second"] = static_cast<uint64_t>(st.resync_bytes_per_second);
    t["throttle"] = {{"percent", st.throttle_percent}, {"bytes_per_second", st.throttle_bytes_per_second}};
    json legs = json::array();
    for (const auto& l : st.legs) legs.push_back({{"device", l.path}, {"health", std::string(1, l.health)}});
    t["legs"] = legs;
    t["log_health"] = std::string(1, st.log_health);
    t["dm_status"] = m->mirror->status_info();
    targets.push_back(std::move(t));
  }
  return json{{"targets", targets}};
}

// ---- Shutdown ----

Status TargetSet::close() {
  std::lock_guard lock(mutex_);
  if (closed_) return {};
  closed_ = true;
  Status result;
  auto note = [&](const std::string& what, std::error_code ec) {
    if (!ec) return;
    log_line(what + ": final flush failed: " + ec.message());
    if (result) result = Error(ec, what + ": final flush failed: " + ec.message());
  };
  for (const auto& o : origins_)
    if (o->origin) note("origin " + o->entry.name, flush_sync(*o->origin));
  for (const auto& s : snapshots_)
    if (s->snapshot && s->entry.writable && !s->entry.merging)
      note("snapshot " + s->entry.name, flush_sync(*s->snapshot));
  for (const auto& m : mirrors_)
    if (m->mirror) note("mirror " + m->entry.name, flush_sync(*m->mirror));
  // Snapshots belong to their origins: forget the pointers, then close origins (stopping a merge between
  // steps) and mirrors (their destructor flushes the log, as the kernel's suspend does).
  bool dropped = false;
  for (auto it = snapshots_.begin(); it != snapshots_.end();) {
    (*it)->snapshot = nullptr;
    if (!(*it)->entry.persistent) {
      if ((*it)->entry.cow_is_default) ::unlink((*it)->entry.cow.c_str());
      it = snapshots_.erase(it);
      dropped = true;
    } else {
      ++it;
    }
  }
  for (auto& o : origins_) o->origin.reset();
  for (auto& m : mirrors_) {
    m->mirror.reset();
    m->log_device.reset();
  }
  if (dropped) {
    if (Status s = save_locked(); !s && result) result = s;
  }
  return result;
}

}  // namespace kcopyfs::daemon
