#include "fs/daemon/requests.h"

#include <stdexcept>
#include <string>
#include <utility>
#include <variant>

namespace kcopyfs::daemon {
namespace {

using nlohmann::json;

// A request field that is missing or of the wrong type; answered as {"ok": false}.
struct BadRequest : std::runtime_error {
  using std::runtime_error::runtime_error;
};

const json& field(const json& r, const char* key) {
  auto it = r.find(key);
  if (it == r.end()) throw BadRequest(std::string("request has no \"") + key + "\"");
  return *it;
}

std::string text(const json& r, const char* key) {
  const json& v = field(r, key);
  if (!v.is_string()) throw BadRequest(std::string("\"") + key + "\" must be a string");
  return v.get<std::string>();
}

std::string path(const json& r, const char* key) {
  std::string p = text(r, key);
  if (p.empty() || p[0] != '/') throw BadRequest(std::string("\"") + key + "\" must be an absolute path");
  if (p.find('\0') != std::string::npos) throw BadRequest(std::string("\"") + key + "\" holds a NUL");
  return p;
}

uint64_t number(const json& r, const char* key) {
  const json& v = field(r, key);
  if (!v.is_number_unsigned())
    throw BadRequest(std::string("\"") + key + "\" must be a non-negative integer");
  return v.get<uint64_t>();
}

bool flag(const json& r, const char* key) {
  auto it = r.find(key);
  if (it == r.end()) return false;
  if (!it->is_boolean()) throw BadRequest(std::string("\"") + key + "\" must be true or false");
  return it->get<bool>();
}

json reply(const Status& s) {
  if (s) return json{{"ok", true}};
  return json{{"ok", false}, {"error", s.error().message()}};
}

ParsedRequest parse(const json& r, const std::string& op) {
  if (op == "status") return parsed::Status{};
  if (op == "origin_add") {
    parsed::OriginAdd q;
    q.name = text(r, "name");
    q.device = path(r, "device");
    return q;
  }
  if (op == "snapshot_create") {
    SnapshotRequest q;
    q.origin = text(r, "origin");
    q.name = text(r, "name");
    q.chunk_size = Bytes(number(r, "chunk_size"));
    if (r.contains("cow") && !r["cow"].is_null()) q.cow = path(r, "cow");
    if (r.contains("cow_size") && !r["cow_size"].is_null()) q.cow_size = Bytes(number(r, "cow_size"));
    q.transient = flag(r, "transient");
    q.writable = flag(r, "writable");
    return parsed::SnapshotCreate{std::move(q)};
  }
  if (op == "snapshot_attach") {
    parsed::SnapshotAttach q;
    q.origin = text(r, "origin");
    q.name = text(r, "name");
    q.cow = path(r, "cow");
    q.writable = flag(r, "writable");
    return q;
  }
  if (op == "snapshot_merge") return parsed::SnapshotMerge{text(r, "name")};
  if (op == "mirror_create") {
    MirrorRequest q;
    q.name = text(r, "name");
    const json& legs = field(r, "legs");
    if (!legs.is_array()) throw BadRequest("\"legs\" must be an array of paths");
    for (size_t i = 0; i < legs.size(); ++i) {
      json one = {{"leg", legs[i]}};
      q.legs.push_back(path(one, "leg"));
    }
    q.region_size = Bytes(number(r, "region_size"));
    q.log = text(r, "log");
    q.nosync = flag(r, "nosync");
    return parsed::MirrorCreate{std::move(q)};
  }
  if (op == "mirror_resync") return parsed::MirrorResync{text(r, "name")};
  if (op == "mirror_replace") {
    parsed::MirrorReplace q;
    q.name = text(r, "name");
    q.old_leg = path(r, "old");
    q.new_leg = path(r, "new");
    return q;
  }
  if (op == "mirror_throttle") {
    parsed::MirrorThrottle q;
    const uint64_t percent = number(r, "percent");
    if (percent > 100) throw BadRequest("\"percent\" must be 1 to 100");
    q.percent = static_cast<unsigned>(percent);
    q.name = text(r, "name");
    q.bytes_per_second = number(r, "bytes_per_second");
    return q;
  }
  if (op == "remove") return parsed::Remove{text(r, "name")};
  throw BadRequest("unknown request \"" + op + "\"");
}

// Runs a checked request.
struct Execute {
  TargetSet& targets;

  json operator()(const parsed::Status&) const {
    json out = targets.status();
    out["ok"] = true;
    return out;
  }
  json operator()(const parsed::OriginAdd& q) const { return reply(targets.add_origin(q.name, q.device)); }
  json operator()(const parsed::SnapshotCreate& q) const { return reply(targets.create_snapshot(q.request)); }
  json operator()(const parsed::SnapshotAttach& q) const {
    return reply(targets.attach_snapshot(q.origin, q.name, q.cow, q.writable));
  }
  json operator()(const parsed::SnapshotMerge& q) const { return reply(targets.merge_snapshot(q.name)); }
  json operator()(const parsed::MirrorCreate& q) const { return reply(targets.create_mirror(q.request)); }
  json operator()(const parsed::MirrorResync& q) const { return reply(targets.resync_mirror(q.name)); }
  json operator()(const parsed::MirrorReplace& q) const {
    return reply(targets.replace_leg(q.name, q.old_leg, q.new_leg));
  }
  json operator()(const parsed::MirrorThrottle& q) const {
    return reply(targets.throttle_mirror(q.name, q.percent, q.bytes_per_second));
  }
  json operator()(const parsed::Remove& q) const { return reply(targets.remove(q.name)); }
};

}  // namespace

Result<ParsedRequest> parse_request(const json& request) {
  try {
    return parse(request, text(request, "op"));
  } catch (const BadRequest& e) {
    return Error::invalid(std::string("bad request: ") + e.what());
  }
}

json handle_target_request(TargetSet& targets, const json& request) {
  auto parsed = parse_request(request);
  if (!parsed) return json{{"ok", false}, {"error", parsed.error().message()}};
  return std::visit(Execute{targets}, parsed.value());
}

}  // namespace kcopyfs::daemon
