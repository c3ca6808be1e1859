#include "fs/view_server.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cassert>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "engine/unique_fd.h"
#include "fs/fuse_api.h"
#include "fs/open_reply.h"
#include "fs/volume_io.h"

extern char** environ;

namespace kcopyfs::fs {

namespace {

constexpr int kKinds = 3;
constexpr fuse_ino_t kFirstVolumeIno = 16;  // below: the root (1) and the three directories (2..4)
// Entries and attributes change only through add/remove_volume, which tell the kernel (notify_delete), so the
// kernel may cache them long; the timeout only bounds the damage should a notification be lost.
constexpr double kCacheTimeout = 60.0;

fuse_ino_t dir_ino(int kind) { return 2 + static_cast<fuse_ino_t>(kind); }
int kind_of_dir(fuse_ino_t ino) { return ino >= 2 && ino < 2 + kKinds ? static_cast<int>(ino - 2) : -1; }

bool valid_name(const std::string& name) {
  if (name.empty() || name.size() > 64 || name[0] == '.') return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
}

}  // namespace

const char* directory_name(VolumeKind kind) {
  switch (kind) {
    case VolumeKind::origin:
      return "origins";
    case VolumeKind::snapshot:
      return "snapshots";
    case VolumeKind::mirror:
      return "mirrors";
  }
  return "?";
}

namespace {

struct Node {
  fuse_ino_t ino = 0;
  int kind = 0;
  std::string name;
  ViewOptions options;
  uint64_t size = 0;
  std::shared_ptr<VolumeIo> io;  // reset once removed
  unsigned opens = 0;
  uint64_t lookups = 0;  // the kernel's references (lookup replies minus forgets)
  bool removed = false;
};

// One open of a view; its address is the FUSE file handle.
struct Handle {
  std::shared_ptr<Node> node;
  std::shared_ptr<VolumeIo> io;
  bool writable = false;
  std::atomic<bool> dirty{false};  // written since the last flush: close() then flushes the device
};

}  // namespace

struct ViewServer::Impl {
  const MountOptions& options;
  uid_t uid = ::getuid();
  gid_t gid = ::getgid();
  timespec mount_time{};
  fuse_session* session = nullptr;
  std::thread loop;
  dev_t connection = 0;  // st_dev of the mount: names its /sys/fs/fuse/connections entry

  mutable std::mutex mutex;
  std::condition_variable changed;  // opens dropped, the loop ended, in-flight I/O drained
  // Guarded by mutex.
  std::unordered_map<fuse_ino_t, std::shared_ptr<Node>> inodes;
  std::array<std::map<std::string, std::shared_ptr<Node>>, kKinds> dirs;
  fuse_ino_t next_ino = kFirstVolumeIno;
  // Every open the kernel holds, owned here; the kernel's fh is the raw pointer.
  std::unordered_map<Handle*, std::unique_ptr<Handle>> handles;
  bool loop_ended = false;

  std::atomic<uint64_t> in_flight{0};  // requests answered from I/O callbacks, not answered yet

  std::mutex unmount_mutex;  // serializes unmount()
  // Held by notifications and by the session's destruction, so that no notification uses a freed session.
  std::mutex session_mutex;
  bool session_gone = false;  // guarded by session_mutex

  explicit Impl(const MountOptions& o) : options(o) { ::clock_gettime(CLOCK_REALTIME, &mount_time); }

  void begin_io() { in_flight.fetch_add(1, std::memory_order_relaxed); }
  void end_io() {
    if (in_flight.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard lock(mutex);
      changed.notify_all();
    }
  }

  mode_t file_mode(const Node& node) const {
    const bool ro = node.options.read_only;
    if (options.allow_other) return S_IFREG | (ro ? 0440 : 0660);
    return S_IFREG | (ro ? 0400 : 0600);
  }
  mode_t dir_mode() const { return S_IFDIR | (options.allow_other ? 0750 : 0700); }

  struct stat base_attr(fuse_ino_t ino) const {
    struct stat st {};
    st.st_ino = ino;
    st.st_uid = uid;
    st.st_gid = gid;
    st.st_atim = st.st_mtim = st.st_ctim = mount_time;
    st.st_blksize = 128 * 1024;  // a hint for buffered tools (cp, cat): large requests, few round trips
    return st;
  }
  struct stat dir_attr(fuse_ino_t ino) const {
    struct stat st = base_attr(ino);
    st.st_mode = dir_mode();
    st.st_nlink = ino == FUSE_ROOT_ID ? 2 + kKinds : 2;
    return st;
  }
  struct stat file_attr(const Node& node) const {
    struct stat st = base_attr(node.ino);
    st.st_mode = file_mode(node);
    st.st_nlink = node.removed ? 0 : 1;
    st.st_size = static_cast<off_t>(node.size);
    st.st_blocks = static_cast<blkcnt_t>(node.size / 512);
    return st;
  }
  // The attributes of ino, false if unknown. Caller holds mutex.
  bool attr_locked(fuse_ino_t ino, struct stat& st) const {
    if (ino == FUSE_ROOT_ID || kind_of_dir(ino) >= 0) {
      st = dir_attr(ino);
      return true;
    }
    auto it = inodes.find(ino);
    if (it == inodes.end()) return false;
    st = file_attr(*it->second);
    return true;
  }

  void forget_locked(fuse_ino_t ino, uint64_t n) {
    auto it = inodes.find(ino);
    if (it == inodes.end()) return;
    Node& node = *it->second;
    node.lookups -= std::min(n, node.lookups);
    if (node.lookups == 0 && node.removed) inodes.erase(it);
  }

  void release_handle(Handle* handle) {
    // Destroyed after the lock is released: it may hold the last reference to a volume, whose closing waits.
    std::unique_ptr<Handle> owned;
    std::lock_guard lock(mutex);
    auto it = handles.find(handle);
    assert(it != handles.end() && "a release of an open the kernel was never given");
    if (it == handles.end()) return;
    handle->node->opens--;
    owned = std::move(it->second);
    handles.erase(it);
    changed.notify_all();
  }

  // Runs a kernel notification unless the session is gone. Returns its result (0 or -errno).
  template <class F>
  int notify(F&& f) {
    std::lock_guard lock(session_mutex);
    if (session_gone) return -ENOTCONN;
    {
      std::lock_guard table(mutex);
      if (loop_ended) return -ENOTCONN;
    }
    return f(session);
  }

  void run_loop() {
    fuse_loop_config* config = fuse_loop_cfg_create();
    fuse_loop_cfg_set_idle_threads(config, options.max_idle_threads);
    fuse_loop_cfg_set_max_threads(config, options.max_threads);
    fuse_loop_cfg_set_clone_fd(config, 0);
    fuse_session_loop_mt(session, config);
    fuse_loop_cfg_destroy(config);
    // The owner's callback runs before the end is announced, so whoever wait_unmounted() releases finds it
    // done.
    if (options.on_unmounted) options.on_unmounted();
    {
      std::lock_guard lock(mutex);
      loop_ended = true;
      changed.notify_all();
    }
  }
};

namespace {

using Impl = ViewServer::Impl;

Impl& impl_of(fuse_req_t req) { return *static_cast<Impl*>(fuse_req_userdata(req)); }
Handle* handle_of(const fuse_file_info* fi) { return reinterpret_cast<Handle*>(fi->fh); }

void op_init(void* userdata, fuse_conn_info* conn) {
  auto& impl = *static_cast<Impl*>(userdata);
  // Many concurrent requests (the default of 12 caps queue depth for async direct I/O and writes).
  conn->max_background = impl.options.max_background;
  conn->congestion_threshold = std::max(1u, impl.options.max_background * 3 / 4);
  conn->max_write = std::min(conn->max_write, 1u << 20);
  // O_TRUNC arrives with the open (and is ignored there, as a block device ignores it) instead of a
  // truncating SETATTR, which views refuse.
  if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC) conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
  // Writeback caching would hold origin writes in the kernel past a snapshot's point in time; splice gave
  // nothing here without a 2 MiB pipe (see performance-notes.md).
  conn->want &=
      ~(FUSE_CAP_WRITEBACK_CACHE | FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);
}

void op_lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Impl& impl = impl_of(req);
  fuse_entry_param e{};
  e.attr_timeout = kCacheTimeout;
  e.entry_timeout = kCacheTimeout;
  {
    std::lock_guard lock(impl.mutex);
    if (parent == FUSE_ROOT_ID) {
      int kind = -1;
      for (int k = 0; k < kKinds; ++k)
        if (std::strcmp(name, directory_name(static_cast<VolumeKind>(k))) == 0) kind = k;
      if (kind < 0) return (void)fuse_reply_err(req, ENOENT);
      e.ino = dir_ino(kind);
      e.attr = impl.dir_attr(e.ino);
    } else if (int kind = kind_of_dir(parent); kind >= 0) {
      auto it = impl.dirs[kind].find(name);
      if (it == impl.dirs[kind].end()) return (void)fuse_reply_err(req, ENOENT);
      Node& node = *it->second;
      node.lookups++;
      e.ino = node.ino;
      e.attr = impl.file_attr(node);
    } else {
      return (void)fuse_reply_err(req, impl.inodes.count(parent) ? ENOTDIR : ENOENT);
    }
  }
  fuse_reply_entry(req, &e);
}

void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  Impl& impl = impl_of(req);
  {
    std::lock_guard lock(impl.mutex);
    impl.forget_locked(ino, nlookup);
  }
  fuse_reply_none(req);
}

void op_forget_multi(fuse_req_t req, size_t count, fuse_forget_data* forgets) {
  Impl& impl = impl_of(req);
  {
    std::lock_guard lock(impl.mutex);
    for (size_t i = 0; i < count; ++i) impl.forget_locked(forgets[i].ino, forgets[i].nlookup);
  }
  fuse_reply_none(req);
}

void op_getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  Impl& impl = impl_of(req);
  struct stat st {};
  bool found;
  {
    std::lock_guard lock(impl.mutex);
    found = impl.attr_locked(ino, st);
  }
  if (!found) return (void)fuse_reply_err(req, ENOENT);
  fuse_reply_attr(req, &st, kCacheTimeout);
}

void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info*) {
  Impl& impl = impl_of(req);
  struct stat st {};
  bool found;
  {
    std::lock_guard lock(impl.mutex);
    found = impl.attr_locked(ino, st);
  }
  if (!found) return (void)fuse_reply_err(req, ENOENT);
  // Modes and owners follow from the mount's options; the size is the volume's. Times are accepted and
  // ignored, so tools that touch or copy timestamps onto a view do not fail.
  if (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID))
    return (void)fuse_reply_err(req, EPERM);
  if ((to_set & FUSE_SET_ATTR_SIZE) && attr->st_size != st.st_size) return (void)fuse_reply_err(req, EPERM);
  fuse_reply_attr(req, &st, kCacheTimeout);
}

void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  Impl& impl = impl_of(req);
  struct Entry {
    std::string name;
    fuse_ino_t ino;
    mode_t mode;
  };
  std::vector<Entry> entries;
  {
    std::lock_guard lock(impl.mutex);
    const int kind = kind_of_dir(ino);
    if (ino != FUSE_ROOT_ID && kind < 0)
      return (void)fuse_reply_err(req, impl.inodes.count(ino) ? ENOTDIR : ENOENT);
    entries.push_back({".", ino, S_IFDIR});
    entries.push_back({"..", FUSE_ROOT_ID, S_IFDIR});
    if (ino == FUSE_ROOT_ID) {
      for (int k = 0; k < kKinds; ++k)
        entries.push_back({directory_name(static_cast<VolumeKind>(k)), dir_ino(k), S_IFDIR});
    } else {
      for (const auto& [name, node] : impl.dirs[kind]) entries.push_back({name, node->ino, S_IFREG});
    }
  }
  // Offsets are positions in the sorted listing: a volume added or removed between two readdir calls can
  // shift a name, as readdir on any changing directory allows.
  std::vector<char> buffer(size);
  size_t used = 0;
  for (size_t i = static_cast<size_t>(std::max<off_t>(off, 0)); i < entries.size(); ++i) {
    struct stat st {};
    st.st_ino = entries[i].ino;
    st.st_mode = entries[i].mode;
    const size_t len = fuse_add_direntry(req, buffer.data() + used, size - used, entries[i].name.c_str(), &st,
                                         static_cast<off_t>(i + 1));
    if (len > size - used) break;
    used += len;
  }
  fuse_reply_buf(req, buffer.data(), used);
}

void op_open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Impl& impl = impl_of(req);
  const bool writable = (fi->flags & O_ACCMODE) != O_RDONLY;
  Handle* handle = nullptr;
  OpenFlags flags;
  {
    std::lock_guard lock(impl.mutex);
    if (ino == FUSE_ROOT_ID || kind_of_dir(ino) >= 0) return (void)fuse_reply_err(req, EISDIR);
    auto it = impl.inodes.find(ino);
    if (it == impl.inodes.end() || it->second->removed) return (void)fuse_reply_err(req, ENOENT);
    Node& node = *it->second;
    if ((writable || (fi->flags & O_TRUNC)) && node.options.read_only)
      return (void)fuse_reply_err(req, EROFS);
    auto owned = std::make_unique<Handle>();
    handle = owned.get();
    handle->node = it->second;
    handle->io = node.io;
    handle->writable = writable;
    node.opens++;
    impl.handles.emplace(handle, std::move(owned));
    flags.direct_io = node.options.cache == CacheMode::direct_io;
    flags.keep_cache = node.options.cache == CacheMode::keep_cache;
    flags.parallel_direct_writes = flags.direct_io;
  }
  if (reply_open(req, reinterpret_cast<uint64_t>(handle), flags) == -ENOENT) {
    impl.release_handle(handle);  // interrupted: the kernel will never release it
  }
}

void op_release(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  impl_of(req).release_handle(handle_of(fi));
  fuse_reply_err(req, 0);
}

void op_read(fuse_req_t req, fuse_ino_t, size_t size, off_t off, fuse_file_info* fi) {
  Impl& impl = impl_of(req);
  if (off < 0) return (void)fuse_reply_err(req, EINVAL);
  impl.begin_io();
  handle_of(fi)->io->read(static_cast<uint64_t>(off), size,
                          [&impl, req](int err, std::span<const std::byte> data) {
                            if (err)
                              fuse_reply_err(req, err);
                            else
                              fuse_reply_buf(req, reinterpret_cast<const char*>(data.data()), data.size());
                            impl.end_io();
                          });
}

void op_write(fuse_req_t req, fuse_ino_t, const char* buf, size_t size, off_t off, fuse_file_info* fi) {
  Impl& impl = impl_of(req);
  Handle* handle = handle_of(fi);
  if (!handle->writable) return (void)fuse_reply_err(req, EBADF);
  if (off < 0) return (void)fuse_reply_err(req, EINVAL);
  handle->dirty.store(true, std::memory_order_relaxed);
  impl.begin_io();
  handle->io->write(static_cast<uint64_t>(off),
                    std::span<const std::byte>(reinterpret_cast<const std::byte*>(buf), size),
                    [&impl, req](int err, size_t written) {
                      if (err)
                        fuse_reply_err(req, err);
                      else
                        fuse_reply_write(req, written);
                      impl.end_io();
                    });
}

void flush_device(Impl& impl, fuse_req_t req, Handle* handle) {
  impl.begin_io();
  handle->io->flush([&impl, req, handle](int err) {
    if (err) handle->dirty.store(true);  // still not durable: the next flush tries again
    fuse_reply_err(req, err);
    impl.end_io();
  });
}

// Every close(2) sends FLUSH: make the writes of this open durable then, so a writer that closes without
// fsync still finds its data on the device (as closing a block device syncs it). Opens that did not write
// pay nothing.
void op_flush(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  Handle* handle = handle_of(fi);
  if (!handle->dirty.exchange(false)) return (void)fuse_reply_err(req, 0);
  flush_device(impl_of(req), req, handle);
}

void op_fsync(fuse_req_t req, fuse_ino_t, int, fuse_file_info* fi) {
  Handle* handle = handle_of(fi);
  handle->dirty.store(false);
  flush_device(impl_of(req), req, handle);
}

void op_statfs(fuse_req_t req, fuse_ino_t) {
  Impl& impl = impl_of(req);
  struct statvfs s {};
  uint64_t bytes = 0;
  uint64_t files = 1 + kKinds;
  {
    std::lock_guard lock(impl.mutex);
    for (const auto& dir : impl.dirs) {
      for (const auto& [name, node] : dir) bytes += node->size;
      files += dir.size();
    }
  }
  // A fixed namespace: the "filesystem" is exactly as large as its volumes and has no free space.
  s.f_bsize = 4096;
  s.f_frsize = 4096;
  s.f_blocks = bytes / 4096;
  s.f_files = files;
  s.f_namemax = 64;
  fuse_reply_statfs(req, &s);
}

void op_eperm_mknod(fuse_req_t req, fuse_ino_t, const char*, mode_t, dev_t) { fuse_reply_err(req, EPERM); }
void op_eperm_mkdir(fuse_req_t req, fuse_ino_t, const char*, mode_t) { fuse_reply_err(req, EPERM); }
void op_eperm_unlink(fuse_req_t req, fuse_ino_t, const char*) { fuse_reply_err(req, EPERM); }
void op_eperm_symlink(fuse_req_t req, const char*, fuse_ino_t, const char*) { fuse_reply_err(req, EPERM); }
void op_eperm_rename(fuse_req_t req, fuse_ino_t, const char*, fuse_ino_t, const char*, unsigned) {
  fuse_reply_err(req, EPERM);
}
void op_eperm_link(fuse_req_t req, fuse_ino_t, fuse_ino_t, const char*) { fuse_reply_err(req, EPERM); }
void op_eperm_create(fuse_req_t req, fuse_ino_t, const char*, mode_t, fuse_file_info*) {
  fuse_reply_err(req, EPERM);
}

fuse_lowlevel_ops make_ops() {
  fuse_lowlevel_ops ops{};
  ops.init = op_init;
  ops.lookup = op_lookup;
  ops.forget = op_forget;
  ops.forget_multi = op_forget_multi;
  ops.getattr = op_getattr;
  ops.setattr = op_setattr;
  ops.readdir = op_readdir;
  ops.open = op_open;
  ops.release = op_release;
  ops.read = op_read;
  ops.write = op_write;
  ops.flush = op_flush;
  ops.fsync = op_fsync;
  ops.statfs = op_statfs;
  ops.mknod = op_eperm_mknod;
  ops.mkdir = op_eperm_mkdir;
  ops.unlink = op_eperm_unlink;
  ops.rmdir = op_eperm_unlink;
  ops.symlink = op_eperm_symlink;
  ops.rename = op_eperm_rename;
  ops.link = op_eperm_link;
  ops.create = op_eperm_create;
  return ops;
}

// Aborts the FUSE connection of a mount that is detached but still referenced (so the kernel would keep it
// alive): pending and future requests fail with ENOTCONN and the session loop sees ENODEV. Needs the fusectl
// filesystem at /sys/fs/fuse/connections; systemd mounts it at boot, and root mounts it here when missing.
constexpr long kFusectlMagic = 0x65735543;  // FUSECTL_SUPER_MAGIC, missing from <linux/magic.h>

void abort_connection(dev_t dev) {
  if (dev == 0 || major(dev) != 0) return;
  const std::string dir = "/sys/fs/fuse/connections";
  std::string path = dir;
  path += "/";
  path += std::to_string(minor(dev));
  path += "/abort";
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd.valid() && errno == ENOENT && ::geteuid() == 0) {
    struct statfs sfs {};
    if (::statfs(dir.c_str(), &sfs) == 0 && sfs.f_type != kFusectlMagic)
      ::mount("fusectl", dir.c_str(), "fusectl", 0, nullptr);
    fd.reset(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  }
  if (fd.valid()) (void)!::write(fd.get(), "1", 1);
}

// Non-root unmount goes through the setuid helper, lazily as libfuse does.
void fusermount_unmount(const std::string& mountpoint) {
  const char* argv[] = {"fusermount3", "-u", "-q", "-z", "--", mountpoint.c_str(), nullptr};
  pid_t pid;
  if (posix_spawnp(&pid, "fusermount3", nullptr, nullptr, const_cast<char**>(argv), environ) != 0) return;
  int status;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
}

}  // namespace

ViewServer::ViewServer(MountOptions options)
    : options_(std::move(options)), impl_(std::make_unique<Impl>(options_)) {}

Result<std::unique_ptr<ViewServer>> ViewServer::mount(MountOptions options) {
  const std::string mp = options.mountpoint;
  struct stat st {};
  if (::stat(mp.c_str(), &st) != 0) return Error::from_errno(errno, "mount " + mp);
  if (!S_ISDIR(st.st_mode)) return Error::from_errno(ENOTDIR, "mount " + mp);
  if (options.fsname.empty()) return Error::invalid("mount " + mp + ": the fsname is empty");

  std::unique_ptr<ViewServer> server(new ViewServer(std::move(options)));
  Impl& impl = *server->impl_;
  // libfuse splits -o at commas and undoes backslash escapes, so a path with commas or backslashes (a state
  // directory, say) must be escaped to arrive whole; spaces need nothing (no shell is involved).
  auto escaped = [](const std::string& value) {
    std::string out;
    for (char c : value) {
      if (c == ',' || c == '\\') out += '\\';
      out += c;
    }
    return out;
  };
  std::string opts = "fsname=" + escaped(server->options_.fsname) + ",default_permissions";
  if (!server->options_.subtype.empty()) opts += ",subtype=" + escaped(server->options_.subtype);
  if (server->options_.allow_other) opts += ",allow_other";
  const char* argv[] = {"kcopyfs", "-o", opts.c_str(), nullptr};
  fuse_args args = FUSE_ARGS_INIT(3, const_cast<char**>(argv));
  const fuse_lowlevel_ops ops = make_ops();
  impl.session = fuse_session_new(&args, &ops, sizeof ops, &impl);
  fuse_opt_free_args(&args);
  if (impl.session == nullptr) return Error::invalid("mount " + mp + ": cannot create the FUSE session");
  if (fuse_session_mount(impl.session, mp.c_str()) != 0) {
    fuse_session_destroy(impl.session);
    impl.session = nullptr;
    return Error(std::make_error_code(std::errc::io_error),
                 "mount " + mp + ": the FUSE mount failed (is /dev/fuse usable? see the message above)");
  }
  impl.loop = std::thread([&impl] { impl.run_loop(); });
  // Served by the loop just started. The device number names the connection, for abort_connection().
  if (::stat(mp.c_str(), &st) == 0) impl.connection = st.st_dev;
  return server;
}

ViewServer::~ViewServer() { unmount(); }

void ViewServer::unmount() {
  Impl& impl = *impl_;
  if (impl.loop.joinable() && impl.loop.get_id() == std::this_thread::get_id()) return;
  std::lock_guard unmount_lock(impl.unmount_mutex);
  if (impl.session == nullptr) return;
  const std::string& mp = options_.mountpoint;
  bool ended;
  {
    std::lock_guard lock(impl.mutex);
    ended = impl.loop_ended;
  }
  if (!ended) {
    // The unmount itself ends the connection and the workers stop on ENODEV. (No fuse_session_exit() first:
    // libfuse would then cancel its workers while the unmount may still need them.) If the mount is busy,
    // detach it and, unless the last user goes away at once, abort the connection so the loop ends anyway.
    bool detached_lazily = true;
    if (::geteuid() == 0) {
      if (::umount2(mp.c_str(), UMOUNT_NOFOLLOW) == 0)
        detached_lazily = false;
      else
        ::umount2(mp.c_str(), MNT_DETACH | UMOUNT_NOFOLLOW);
    } else {
      fusermount_unmount(mp);
    }
    if (detached_lazily && !wait_unmounted(std::chrono::milliseconds(200))) abort_connection(impl.connection);
  }
  if (impl.loop.joinable()) impl.loop.join();
  {
    // Answers still to come from I/O callbacks write to the session's fd: it must outlive them.
    std::unique_lock lock(impl.mutex);
    impl.changed.wait(lock, [&] { return impl.in_flight.load() == 0; });
  }
  {
    std::lock_guard session_lock(impl.session_mutex);
    fuse_session_unmount(impl.session);  // the kernel side is gone already; this closes the fd
    fuse_session_destroy(impl.session);
    impl.session = nullptr;
    impl.session_gone = true;
  }
  // Opens the kernel never released (an aborted connection sends no RELEASE).
  std::unordered_map<Handle*, std::unique_ptr<Handle>> left;
  {
    std::lock_guard lock(impl.mutex);
    left.swap(impl.handles);
    for (auto& [h, owned] : left) h->node->opens--;
  }
  left.clear();
  // The owner closes its volumes after unmount(): drop every reference to them now.
  std::lock_guard lock(impl.mutex);
  for (auto& dir : impl.dirs) dir.clear();
  for (auto& [ino, node] : impl.inodes) {
    node->io.reset();
    node->removed = true;
  }
  impl.inodes.clear();
}

bool ViewServer::wait_unmounted(std::chrono::milliseconds timeout) {
  std::unique_lock lock(impl_->mutex);
  return impl_->changed.wait_for(lock, timeout, [&] { return impl_->loop_ended; });
}

bool ViewServer::serving() const {
  std::lock_guard lock(impl_->mutex);
  return !impl_->loop_ended;
}

Status ViewServer::add_volume(VolumeKind kind, const std::string& name, std::shared_ptr<BlockDevice> device,
                              ViewOptions options) {
  const std::string what = std::string("add ") + directory_name(kind) + "/" + name;
  if (!valid_name(name))
    return Error::invalid(what + ": a name is 1 to 64 of A-Z a-z 0-9 . _ - and does not start with '.'");
  if (!device) return Error::invalid(what + ": no device");
  const uint64_t size = device->size().value();
  if (size % std::max<uint32_t>(device->logical_block_size(), 1) != 0)
    return Error::invalid(what + ": the size of " + device->path() + " is not a multiple of its block size");
  auto node = std::make_shared<Node>();
  node->kind = static_cast<int>(kind);
  node->name = name;
  node->options = options;
  node->size = size;
  node->io = std::make_shared<VolumeIo>(std::move(device));
  std::lock_guard lock(impl_->mutex);
  auto& dir = impl_->dirs[node->kind];
  if (dir.count(name)) return Error::from_errno(EEXIST, what);
  node->ino = impl_->next_ino++;  // never reused, so a stale kernel inode cannot alias a new volume
  impl_->inodes.emplace(node->ino, node);
  dir.emplace(name, std::move(node));
  return {};
}

Status ViewServer::remove_volume(VolumeKind kind, const std::string& name,
                                 std::chrono::milliseconds wait_for_close) {
  const std::string what = std::string("remove ") + directory_name(kind) + "/" + name;
  const int k = static_cast<int>(kind);
  fuse_ino_t ino;
  std::shared_ptr<VolumeIo> io;  // dropped outside the lock: it may close the device
  {
    std::unique_lock lock(impl_->mutex);
    const auto deadline = std::chrono::steady_clock::now() + wait_for_close;
    auto& dir = impl_->dirs[k];
    while (true) {
      auto it = dir.find(name);
      if (it == dir.end()) return Error::from_errno(ENOENT, what);
      if (it->second->opens == 0) break;
      if (impl_->changed.wait_until(lock, deadline) == std::cv_status::timeout) {
        it = dir.find(name);
        if (it == dir.end()) return Error::from_errno(ENOENT, what);
        if (it->second->opens != 0) return Error::from_errno(EBUSY, what + " (the view is open)");
        break;
      }
    }
    auto it = dir.find(name);
    auto node = it->second;
    dir.erase(it);
    node->removed = true;
    io = std::move(node->io);
    ino = node->ino;
    if (node->lookups == 0) impl_->inodes.erase(ino);
  }
  // Drop the kernel's dentry so the name is gone at once (no cached entry survives for kCacheTimeout).
  impl_->notify([&](fuse_session* se) {
    return fuse_lowlevel_notify_delete(se, dir_ino(k), ino, name.c_str(), name.size());
  });
  return {};
}

std::string ViewServer::wait_unused(std::chrono::milliseconds timeout) {
  std::unique_lock lock(impl_->mutex);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  auto open_one = [&]() -> std::string {
    for (int k = 0; k < kKinds; ++k) {
      for (const auto& [name, node] : impl_->dirs[k]) {
        if (node->opens != 0) return std::string(directory_name(static_cast<VolumeKind>(k))) + "/" + name;
      }
    }
    return "";
  };
  std::string open = open_one();
  while (!open.empty() && impl_->changed.wait_until(lock, deadline) != std::cv_status::timeout)
    open = open_one();
  return open_one();
}

Status ViewServer::invalidate_cache(VolumeKind kind, const std::string& name) {
  const std::string what = std::string("invalidate ") + directory_name(kind) + "/" + name;
  fuse_ino_t ino;
  {
    std::lock_guard lock(impl_->mutex);
    auto& dir = impl_->dirs[static_cast<int>(kind)];
    auto it = dir.find(name);
    if (it == dir.end()) return Error::from_errno(ENOENT, what);
    ino = it->second->ino;
  }
  const int rc =
      impl_->notify([&](fuse_session* se) { return fuse_lowlevel_notify_inval_inode(se, ino, 0, 0); });
  // ENOENT: the kernel holds no inode for it, so nothing is cached. ENOTCONN: no mount, nothing cached.
  if (rc != 0 && rc != -ENOENT && rc != -ENOTCONN) return Error::from_errno(-rc, what);
  return {};
}

Result<unsigned> ViewServer::open_count(VolumeKind kind, const std::string& name) const {
  std::lock_guard lock(impl_->mutex);
  auto& dir = impl_->dirs[static_cast<int>(kind)];
  auto it = dir.find(name);
  if (it == dir.end())
    return Error::from_errno(ENOENT, std::string("open count of ") + directory_name(kind) + "/" + name);
  return it->second->opens;
}

}  // namespace kcopyfs::fs
