// The control protocol between the CLI and the daemon of a mount.
//
// Finding the daemon: the mount's source (fsname, the first field of /proc/self/mounts) is the absolute path
// of its state directory and its type is "fuse.kcopyfs"; the daemon listens on the Unix stream socket
// STATE_DIR/control.sock (mode 0600 in a 0700 directory) and answers only peers (SO_PEERCRED) whose uid is
// the mounting user's or root's.
//
// One request per connection: the client sends one JSON object followed by '\n' and reads one JSON object
// followed by '\n'. Every reply has "ok" (bool); a failed request has "error", one sentence without the
// "kcopyfs: VERB: " prefix (the CLI adds it). Requests ("op" and its fields; sizes in bytes, paths absolute):
//
//   {"op": "status"}                                              -> {"ok", "targets": [...]} (interface.md,
//        every target also has "dm_status": the dmsetup-style field, "" for origins)
//   {"op": "origin_add", "name", "device"}
//   {"op": "snapshot_create", "origin", "name", "chunk_size", "cow" (or absent), "cow_size" (or absent),
//        "transient", "writable"}
//   {"op": "snapshot_attach", "origin", "name", "cow", "writable"}
//   {"op": "snapshot_merge", "name"}
//   {"op": "mirror_create", "name", "legs": [...], "region_size", "log": "disk"|"core", "nosync"}
//   {"op": "mirror_resync", "name"}
//   {"op": "mirror_replace", "name", "old", "new"}
//   {"op": "mirror_throttle", "name", "percent", "bytes_per_second"}
//   {"op": "remove", "name"}
//   {"op": "umount"}      -> replied to once everything is flushed, unmounted and every device closed
//
// Errors a client may see before any reply: ENOENT / ECONNREFUSED (no daemon), EACCES (not allowed).
#pragma once

namespace kcopyfs::daemon {

inline constexpr const char* kSocketName = "control.sock";
inline constexpr const char* kMountType = "fuse.kcopyfs";
inline constexpr const char* kFuseSubtype = "kcopyfs";

}  // namespace kcopyfs::daemon
