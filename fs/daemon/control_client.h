// The CLI's end of the control protocol (control_protocol.h).
#pragma once

#include <chrono>
#include <string>

#include <nlohmann/json.hpp>

#include "engine/result.h"

namespace kcopyfs::daemon {

// The state directory of the kcopyfs mount at mountpoint (the mount's source in /proc/self/mountinfo, with
// its octal escapes undone). Errors: "MOUNTPOINT is not a kcopyfs mount" (ENOENT-like: EINVAL), or the
// errno of resolving the path.
Result<std::string> find_state_dir(const std::string& mountpoint);

// Sends request to the daemon listening in state_dir and returns its reply (the whole object, "ok" true or
// false). Errors (no reply at all): no daemon ("no kcopyfs daemon is serving STATE_DIR"), permission,
// a timeout, a reply that is not JSON.
Result<nlohmann::json> call_daemon(const std::string& state_dir, const nlohmann::json& request,
                                   std::chrono::milliseconds timeout = std::chrono::minutes(10));

}  // namespace kcopyfs::daemon
