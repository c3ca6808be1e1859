// One control request from a verb to the daemon serving a mount (fs/daemon/control_protocol.h).
#pragma once

#include <chrono>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "engine/result.h"

namespace kcopyfs::cli {

// Sends request to the daemon of the kcopyfs mount at mountpoint. Result: the reply when it says "ok"; an
// Error whose message is one sentence (no such mount, no daemon, or the daemon's own "error") otherwise.
Result<nlohmann::json> ask_daemon(const std::string& mountpoint, const nlohmann::json& request,
                                  std::chrono::milliseconds timeout = std::chrono::minutes(10));

// ask_daemon for a verb: a failure is printed as "kcopyfs: VERB: message" and gives nullopt.
std::optional<nlohmann::json> request_or_fail(const std::string& verb, const std::string& mountpoint,
                                              const nlohmann::json& request);

// The target called name in a status reply ({"targets": [...]}), or nullptr.
const nlohmann::json* find_target(const nlohmann::json& status, const std::string& name);

}  // namespace kcopyfs::cli
