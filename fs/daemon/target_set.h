// TargetSet: the targets one daemon serves (origins with their snapshots, mirrors), each shown as a view of
// the mount, and the volume table entry that brings it back at the next mount.
//
// Every operation validates its request in full before it changes anything, and undoes what it did when a
// later step fails, so a refused request leaves no half-made target, table entry or file (interface.md,
// Errors). A device the user named is never deleted; the files the daemon made itself in the state directory
// (default COW stores, default mirror logs) are deleted when their target is removed.
//
// Loading (load()) never stops at a target that cannot be brought up: it is kept, not written to, and shown
// as "failed" with the reason; remove() drops it from the table.
//
// Threading: every public method takes the set's mutex, so requests are serialized; none may run on an I/O
// completion thread or inside a FUSE request (they open devices and change the mount). Merge completions
// arrive on the merge thread and are handed to `post` (the daemon's main loop), which calls
// merge_finished().
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/block_device.h"
#include "engine/result.h"
#include "fs/daemon/volume_table.h"
#include "fs/view_server.h"
#include "mirror/mirror.h"
#include "snapshot/origin.h"

namespace kcopyfs::daemon {

struct SnapshotRequest {
  std::string origin;
  std::string name;
  Bytes chunk_size = Bytes(4096);
  std::optional<std::string> cow;  // a device the user named; else STATE_DIR/NAME.cow is made
  std::optional<Bytes> cow_size;   // the size of the default COW file; else one that never overflows
  bool transient = false;
  bool writable = false;
};

struct MirrorRequest {
  std::string name;
  std::vector<std::string> legs;
  Bytes region_size = Bytes(512 * 1024);
  std::string log = "disk";
  bool nosync = false;
};

class TargetSet {
 public:
  // views must outlive the set. save is called with the new table after every change (it writes the
  // volume table file); an operation whose save fails is undone and fails with save's error. post hands work
  // to the daemon's main loop (never runs it inline); false when the loop takes no more work (shutting down).
  TargetSet(std::string state_dir, fs::ViewServer& views, std::function<Status(const VolumeTable&)> save,
            std::function<bool(std::function<void()>)> post);
  // Calls close() if it has not run.
  ~TargetSet();
  // For every origin loaded or added from now on: Origin::set_write_back_limit. Call before load().
  void set_write_back_limit(Bytes limit) { write_back_limit_ = limit; }
  TargetSet(const TargetSet&) = delete;
  TargetSet& operator=(const TargetSet&) = delete;

  // Brings up every entry of table (failures are kept as failed targets, and logged to stderr); transient
  // snapshots of an earlier run are dropped. Saves the table if it changed. Result: the save's error.
  Status load(const VolumeTable& table);

  Status add_origin(const std::string& name, const std::string& device);
  Status create_snapshot(const SnapshotRequest& request);
  Status attach_snapshot(const std::string& origin, const std::string& name, const std::string& cow,
                         bool writable);
  Status merge_snapshot(const std::string& name);
  Status create_mirror(const MirrorRequest& request);
  Status resync_mirror(const std::string& name);
  Status replace_leg(const std::string& name, const std::string& old_device, const std::string& new_device);
  Status throttle_mirror(const std::string& name, unsigned percent, uint64_t bytes_per_second);
  Status remove(const std::string& name);

  // {"targets": [...]} as interface.md shows, each target with "dm_status" too.
  nlohmann::json status() const;
  VolumeTable table() const;

  // Flushes and closes every target (after the mount is gone: views must not be served any more) and
  // refuses every later request. Errors of the final flushes are logged to stderr and returned.
  Status close();

 private:
  struct OriginTarget;
  struct SnapshotTarget;
  struct MirrorTarget;

  // All private methods are called with mutex_ held.
  Status check_new_name(const std::string& name) const;
  Status check_open() const;
  OriginTarget* find_origin(const std::string& name);
  SnapshotTarget* find_snapshot(const std::string& name);
  MirrorTarget* find_mirror(const std::string& name);
  // The target called name, if it exists, is of that kind and loaded; else the error saying which not.
  Result<OriginTarget*> loaded_origin(const std::string& name);
  Result<MirrorTarget*> loaded_mirror(const std::string& name);
  // Shows a new snapshot's view, adds it and saves the table; undoes both if the save fails.
  Status publish_snapshot(OriginTarget& o, std::unique_ptr<SnapshotTarget> t);
  Status save_locked();
  VolumeTable table_locked() const;
  void load_origin(const OriginEntry& entry);
  void load_snapshot(const SnapshotEntry& entry);
  void load_mirror(const MirrorEntry& entry);
  Result<std::shared_ptr<Mirror>> build_mirror(const MirrorEntry& entry, SyncMode mode,
                                               std::unique_ptr<BlockDevice>& log_device);
  Status show_snapshot(OriginTarget& o, SnapshotTarget& s);
  Status start_merge_locked(OriginTarget& o, SnapshotTarget& s);
  void merge_finished(const std::string& name, Status result);
  // STATE_DIR/NAME.invalid: the mark of a snapshot invalidated while its COW header could not say so.
  std::string invalid_mark(const std::string& name) const;
  // The origins' InvalidationRecorder: writes the mark durably on recorder_thread_, then lets the origin's
  // writes go on. Never takes mutex_: a request holding it may be waiting for those very writes (a snapshot
  // create drains the origin's writes).
  Origin::InvalidationRecorder invalidation_recorder();
  // What every origin gets from the daemon: the invalidation recorder, the write-back limit, and a log line
  // for each acknowledged write that failed to reach its device.
  void configure_origin(Origin& origin, const OriginEntry& entry);
  void recorder_loop();
  std::string default_path(const std::string& name, const char* suffix) const;
  // Whether a target's table entry names path or another name of the same file (same_device).
  bool path_in_use_locked(const std::string& path) const;

  // Constant after construction.
  const std::string state_dir_;
  fs::ViewServer& views_;
  const std::function<Status(const VolumeTable&)> save_;
  const std::function<bool(std::function<void()>)> post_;
  Bytes write_back_limit_ = Origin::kDefaultWriteBackLimit;  // set before load()

  mutable std::mutex mutex_;
  // Guarded by mutex_. In table order; snapshots in creation order.
  std::vector<std::unique_ptr<OriginTarget>> origins_;
  std::vector<std::unique_ptr<SnapshotTarget>> snapshots_;
  std::vector<std::unique_ptr<MirrorTarget>> mirrors_;
  bool closed_ = false;
  // The invalidation marks to write (invalidation_recorder), guarded by recorder_mutex_, not mutex_.
  std::mutex recorder_mutex_;
  std::condition_variable recorder_wake_;
  std::deque<std::pair<std::string, std::function<void()>>> recorder_queue_;
  bool recorder_stop_ = false;
  std::thread recorder_thread_;
  // While load() runs: how long a device locked by another holder is retried (a daemon SIGKILLed just
  // before this one started still holds its locks for a moment). The epoch (never) otherwise.
  std::chrono::steady_clock::time_point lock_wait_until_{};
};

}  // namespace kcopyfs::daemon
