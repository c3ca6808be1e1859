// Fuzzes the control-request path of the daemon up to the TargetSet call: the request line as the control
// server takes it (fs/daemon/control_server.cc: JSON object with an "op" string), then parse_request
// (fs/daemon/requests.h), which checks every field without executing anything; the reply is dumped as the
// server does.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <variant>

#include <nlohmann/json.hpp>

#include "fs/daemon/requests.h"

namespace {

bool absolute_without_nul(const std::string& p) {
  return !p.empty() && p[0] == '/' && p.find('\0') == std::string::npos;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string line(reinterpret_cast<const char*>(data), size);
  const size_t newline = line.find('\n');
  if (newline != std::string::npos) line.resize(newline);  // the server reads up to the first '\n'
  const nlohmann::json request = nlohmann::json::parse(line, nullptr, false);
  if (request.is_discarded() || !request.is_object() || !request.contains("op") || !request["op"].is_string())
    return 0;
  auto parsed = kcopyfs::daemon::parse_request(request);
  nlohmann::json reply;
  if (!parsed) {
    if (parsed.error().message().rfind("bad request: ", 0) != 0) __builtin_trap();
    reply = {{"ok", false}, {"error", parsed.error().message()}};
  } else {
    namespace p = kcopyfs::daemon::parsed;
    const auto& q = parsed.value();
    // Every path that reaches a TargetSet call is absolute and holds no NUL.
    if (auto* o = std::get_if<p::OriginAdd>(&q); o && !absolute_without_nul(o->device)) __builtin_trap();
    if (auto* a = std::get_if<p::SnapshotAttach>(&q); a && !absolute_without_nul(a->cow)) __builtin_trap();
    if (auto* s = std::get_if<p::SnapshotCreate>(&q);
        s && s->request.cow && !absolute_without_nul(*s->request.cow))
      __builtin_trap();
    if (auto* m = std::get_if<p::MirrorCreate>(&q))
      for (const auto& leg : m->request.legs)
        if (!absolute_without_nul(leg)) __builtin_trap();
    if (auto* r = std::get_if<p::MirrorReplace>(&q);
        r && (!absolute_without_nul(r->old_leg) || !absolute_without_nul(r->new_leg)))
      __builtin_trap();
    if (auto* t = std::get_if<p::MirrorThrottle>(&q); t && t->percent > 100) __builtin_trap();
    reply = {{"ok", true}};
  }
  const std::string text = reply.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  static const bool verbose = std::getenv("KCOPYFS_FUZZ_VERBOSE") != nullptr;  // say what the input did
  if (verbose) std::fprintf(stderr, "%s\n", text.c_str());
  return 0;
}
