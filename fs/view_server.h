// ViewServer: a FUSE mount that shows volumes (BlockDevices) as regular files.
//
// Layout: MOUNTPOINT/origins/, snapshots/ and mirrors/ always exist; each holds one regular file per volume
// added with add_volume(), whose size is the volume's size. Read, write, fsync go to the device
// asynchronously (VolumeIo) and are answered from its completion callbacks, so FUSE worker threads never wait
// for I/O. Nothing else can be made or changed in the mount: create, mknod, mkdir, unlink, rmdir, rename,
// symlink, link, size changes and chmod/chown fail with EPERM; utimes is accepted and ignored (the times
// shown are the mount's); O_TRUNC on open is ignored, as a block device ignores it.
//
// Threads: the session loop runs on a thread of its own, which starts libfuse's workers (up to
// max_idle_threads kept idle). The mount is served from the moment mount() returns.
//
// Lifetime: the destructor unmounts (unmount()), so a ViewServer never outlives its mount and never leaves
// one behind. When the kernel side goes away first (fusermount3 -u, umount), the loop ends by itself, the
// on_unmounted callback runs on the loop thread and wait_unmounted() returns; the object must still be
// destroyed (or unmount() called) to free the session. Do not destroy the ViewServer from on_unmounted.
//
// add_volume, remove_volume and invalidate_cache are thread-safe, but must not be called from inside a FUSE
// request of this mount (the kernel notifications they send could wait for that very request).
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "engine/block_device.h"
#include "engine/result.h"

struct fuse_session;

namespace kcopyfs::fs {

enum class VolumeKind { origin, snapshot, mirror };
// The directory a kind lives in: "origins", "snapshots", "mirrors".
const char* directory_name(VolumeKind kind);

enum class CacheMode {
  // Every read and write goes to the daemon (FOPEN_DIRECT_IO), with parallel direct writes: the page cache
  // is never used, so a volume that changes under the view (an origin, a mirror, a writable snapshot) is
  // always shown as it is.
  direct_io,
  // The kernel keeps the view's pages between opens (FOPEN_KEEP_CACHE): for volumes that never change, such
  // as read-only snapshots. Call invalidate_cache() when one does change after all (an origin under a merge).
  keep_cache,
};

struct ViewOptions {
  bool read_only = false;  // writes and opens for writing fail with EROFS
  CacheMode cache = CacheMode::direct_io;
};

struct MountOptions {
  std::string mountpoint;  // an existing directory
  // Lets other users reach the mount (fuse's allow_other; /etc/fuse.conf must allow it for non-root). Files
  // are then 0660 (0440 read-only) instead of 0600 (0400), and the kernel checks these modes
  // (default_permissions).
  bool allow_other = false;
  // Shown as the source in /proc/mounts (any non-empty text: commas and backslashes are escaped for libfuse).
  std::string fsname = "kcopyfs";
  // Non-empty: the mount's type is fuse.SUBTYPE instead of fuse, so tools can tell its mounts apart.
  std::string subtype;
  unsigned max_idle_threads = 16;
  unsigned max_threads = 64;
  unsigned max_background = 64;  // concurrent background (async) requests the kernel may send
  // Runs once on the loop thread when the session loop ends for any reason (unmount() or the kernel side).
  std::function<void()> on_unmounted;
};

class ViewServer {
 public:
  // Mounts at options.mountpoint and starts serving. Errors name the mountpoint and the reason.
  static Result<std::unique_ptr<ViewServer>> mount(MountOptions options);
  ~ViewServer();
  ViewServer(const ViewServer&) = delete;
  ViewServer& operator=(const ViewServer&) = delete;

  // Shows device as DIR/name. name: 1-64 of [A-Za-z0-9._-], not starting with '.' (EINVAL); EEXIST if the
  // directory already has it. The device's size must be a multiple of its logical block size.
  Status add_volume(VolumeKind kind, const std::string& name, std::shared_ptr<BlockDevice> device,
                    ViewOptions options = {});
  // Removes DIR/name: ENOENT if absent; EBUSY while any process has it open. The kernel reports the last
  // close to the daemon asynchronously (close(2) returns before it arrives), so wait_for_close lets the
  // removal wait that long for the view to become unused. Once it returns ok, the view holds no reference to
  // the device and no I/O on it is in flight.
  Status remove_volume(VolumeKind kind, const std::string& name,
                       std::chrono::milliseconds wait_for_close = std::chrono::milliseconds(0));
  // Drops the kernel's cached pages of a keep_cache view (after its volume changed).
  Status invalidate_cache(VolumeKind kind, const std::string& name);
  // Waits (up to timeout) until no view is open. Result: "" once none is, else "DIR/name" of one still open.
  // As for remove_volume, the kernel reports closes asynchronously: a short wait covers closes just made.
  std::string wait_unused(std::chrono::milliseconds timeout);
  // How many opens of DIR/name are live (ENOENT if absent).
  Result<unsigned> open_count(VolumeKind kind, const std::string& name) const;

  // Unmounts and stops serving; idempotent. If the mount is busy (files open, a process inside), it is
  // detached lazily and its connection aborted, so this always returns and processes still using the mount
  // get ENOTCONN. Waits for all I/O in flight to complete; afterwards the server holds no reference to any
  // volume, so their owner may close them. Does nothing when called from on_unmounted (the
  // loop thread cannot wait for itself).
  void unmount();
  // Waits until the session loop has ended (kernel-side unmount or unmount()); false on timeout.
  bool wait_unmounted(std::chrono::milliseconds timeout);
  bool serving() const;

  const std::string& mountpoint() const { return options_.mountpoint; }

  // Used by the FUSE callbacks (fs/view_server.cc); not part of the interface.
  struct Impl;

 private:
  explicit ViewServer(MountOptions options);

  MountOptions options_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kcopyfs::fs
