// Turns a control request (control_protocol.h) into a TargetSet call and its reply. Every field is checked
// (present, of the right JSON type, paths absolute, sizes positive) before the call, so a malformed request
// changes nothing.
#pragma once

#include <cstdint>
#include <string>
#include <variant>

#include <nlohmann/json.hpp>

#include "engine/result.h"
#include "fs/daemon/target_set.h"

namespace kcopyfs::daemon {

// A request whose fields have been checked, not yet executed: one struct per "op" (control_protocol.h).
namespace parsed {
struct Status {};
struct OriginAdd {
  std::string name, device;
};
struct SnapshotCreate {
  SnapshotRequest request;
};
struct SnapshotAttach {
  std::string origin, name, cow;
  bool writable = false;
};
struct SnapshotMerge {
  std::string name;
};
struct MirrorCreate {
  MirrorRequest request;
};
struct MirrorResync {
  std::string name;
};
struct MirrorReplace {
  std::string name, old_leg, new_leg;
};
struct MirrorThrottle {
  std::string name;
  unsigned percent = 0;
  uint64_t bytes_per_second = 0;
};
struct Remove {
  std::string name;
};
}  // namespace parsed

using ParsedRequest =
    std::variant<parsed::Status, parsed::OriginAdd, parsed::SnapshotCreate, parsed::SnapshotAttach,
                 parsed::SnapshotMerge, parsed::MirrorCreate, parsed::MirrorResync, parsed::MirrorReplace,
                 parsed::MirrorThrottle, parsed::Remove>;

// Checks request (any JSON value) without executing it. Error (EINVAL): "bad request: ..." naming the first
// missing or malformed field, or the unknown op. Pure: no I/O, no state (the fuzzer of tests/fuzz/ calls it).
Result<ParsedRequest> parse_request(const nlohmann::json& request);

// Result: the reply ({"ok": true, ...} or {"ok": false, "error": "..."}). "umount" is the daemon's own and is
// not handled here (an unknown op).
nlohmann::json handle_target_request(TargetSet& targets, const nlohmann::json& request);

}  // namespace kcopyfs::daemon
