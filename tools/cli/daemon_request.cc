#include "tools/cli/daemon_request.h"

#include <cerrno>

#include "fs/daemon/control_client.h"
#include "tools/cli/command.h"
#include "tools/cli/verb_args.h"

namespace kcopyfs::cli {

Result<nlohmann::json> ask_daemon(const std::string& mountpoint, const nlohmann::json& request,
                                  std::chrono::milliseconds timeout) {
  const std::string where = absolute_path(mountpoint);
  auto state_dir = daemon::find_state_dir(where);
  if (!state_dir) return state_dir.error();
  auto reply = daemon::call_daemon(state_dir.value(), request, timeout);
  if (!reply) {
    const int err = reply.error().errno_value();
    if (err != ENOENT && err != ECONNREFUSED) return reply.error();
    // Mounted but nobody listening: the daemon was killed; say how to get the mount back.
    return Error(reply.error().code(), reply.error().message() + " (a dead mount: 'kcopyfs umount " + where +
                                           "' clears it, then mount again)");
  }
  const nlohmann::json& r = reply.value();
  if (!r.is_object()) return Error::invalid("the daemon's reply is not a JSON object");
  const auto ok = r.find("ok");
  if (ok != r.end() && ok->is_boolean() && ok->get<bool>()) return reply;
  const auto error = r.find("error");
  if (error != r.end() && error->is_string()) return Error::invalid(error->get<std::string>());
  return Error::invalid("the daemon refused the request without saying why");
}

std::optional<nlohmann::json> request_or_fail(const std::string& verb, const std::string& mountpoint,
                                              const nlohmann::json& request) {
  auto reply = ask_daemon(mountpoint, request);
  if (!reply) {
    fail(verb, reply.error().message());
    return std::nullopt;
  }
  return std::move(reply).value();
}

const nlohmann::json* find_target(const nlohmann::json& status, const std::string& name) {
  const auto targets = status.find("targets");
  if (targets == status.end() || !targets->is_array()) return nullptr;
  for (const auto& t : *targets) {
    const auto n = t.find("name");
    if (n != t.end() && n->is_string() && n->get<std::string>() == name) return &t;
  }
  return nullptr;
}

}  // namespace kcopyfs::cli
