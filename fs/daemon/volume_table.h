// VolumeTable: the daemon's list of targets, kept in STATE_DIR/kcopyfs.conf (interface.md), an INI file a
// person can read, parsed with Boost.Program_options.
//
// Format (one section per target, "[KIND.NAME]" with KIND origin, snapshot or mirror; NAME may contain
// dots, keys never do; repeated "leg" keys keep their order; '#' starts a comment):
//
//   [origin.data]
//   device = /dev/loop0
//
//   [snapshot.s1]
//   origin = data
//   cow = /var/lib/kcopyfs/s1.cow
//   cow_is_default = true        # the daemon made the file and deletes it when the snapshot is removed
//   persistent = true
//   writable = false
//   chunk_size = 4096            # bytes
//   merging = false              # a merge was started: it resumes at the next mount
//
//   [mirror.m0]
//   leg = /dev/loop1
//   leg = /dev/loop2
//   region_size = 524288         # bytes
//   log = disk                   # disk or core
//   log_device = /var/lib/kcopyfs/m0.log   # disk only
//   log_is_default = true
//   throttle_percent = 40        # the resync's limits (mirror throttle): 1 to 100, omitted when 100
//   throttle_rate = 67108864     # bytes per second, omitted when uncapped
//
// The order of sections is kept: origins before their snapshots, snapshots in creation order.
//
// What PO's INI reader cannot keep, so save_volume_table refuses it (EINVAL) rather than write a table that
// loads back different: a value containing '#' (a comment starts there, also inside a path) or a newline, a
// value with leading or trailing whitespace (trimmed), an empty value. A NAME ending in '.' is written with
// one more '.' ("[mirror.m1..]") since PO reads "[mirror.m1.]" as the name "m1". A section with no keys is
// refused when parsing (PO alone would drop it, and the target with it).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "engine/result.h"
#include "engine/units.h"

namespace kcopyfs::daemon {

struct OriginEntry {
  std::string name;
  std::string device;
};

struct SnapshotEntry {
  std::string name;
  std::string origin;
  std::string cow;
  bool cow_is_default = false;
  bool persistent = true;  // false: transient; dropped (and a default COW file deleted) at the next mount
  bool writable = false;
  Bytes chunk_size = Bytes(4096);
  bool merging = false;
};

struct MirrorEntry {
  std::string name;
  std::vector<std::string> legs;
  Bytes region_size = Bytes(512 * 1024);
  std::string log = "disk";  // "disk" or "core"
  std::string log_device;    // disk only
  bool log_is_default = false;
  // The resync's limits (`mirror throttle`), kept across mounts as LVM keeps a recovery rate; the keys are
  // written only when set.
  unsigned throttle_percent = 100;
  uint64_t throttle_bytes_per_second = 0;  // 0: no cap
};

struct VolumeTable {
  std::vector<OriginEntry> origins;
  std::vector<SnapshotEntry> snapshots;
  std::vector<MirrorEntry> mirrors;
};

// The text of the table, as save_volume_table writes it (a header comment, then one section per target).
std::string format_volume_table(const VolumeTable& table);

// Parses text; `source` names it in messages. Result: the table, or EINVAL with one line naming the source,
// the section and the fault (unknown kind or key, a missing key, a bad number or boolean, a name against
// the NAME rules, a duplicate name across all kinds, a snapshot whose origin is not in the table).
Result<VolumeTable> parse_volume_table(std::string_view text, const std::string& source);

// Reads and parses path. A missing file is an empty table; any other read error names path and errno.
Result<VolumeTable> load_volume_table(const std::string& path);

// Writes the table atomically: path.tmp written and fsync'd, renamed over path, the directory fsync'd. On
// error nothing at path has changed. Errors name the file and errno.
Status save_volume_table(const std::string& path, const VolumeTable& table);

// NAME rules of interface.md: 1-64 of [A-Za-z0-9._-], not starting with '.'.
bool valid_target_name(std::string_view name);

}  // namespace kcopyfs::daemon
