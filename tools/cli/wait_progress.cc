#include "tools/cli/wait_progress.h"

#include <chrono>
#include <optional>
#include <thread>

#include "tools/cli/command.h"
#include "tools/cli/daemon_request.h"
#include "tools/cli/progress.h"

namespace kcopyfs::cli {

namespace {

// Often enough for a smooth bar, rarely enough to cost the daemon nothing.
constexpr auto kPollInterval = std::chrono::milliseconds(200);
// A status request answers at once; longer means the daemon is stuck.
constexpr auto kStatusTimeout = std::chrono::seconds(30);
// Right after a resync request the state may not read "resyncing" yet: that many polls of "stopped short"
// in a row before the wait gives up.
constexpr int kStoppedPolls = 5;

std::string text_field(const nlohmann::json& target, const char* key) {
  const auto it = target.find(key);
  return it != target.end() && it->is_string() ? it->get<std::string>() : std::string();
}

uint64_t number_field(const nlohmann::json& object, const char* key) {
  const auto it = object.find(key);
  return it != object.end() && it->is_number_unsigned() ? it->get<uint64_t>() : 0;
}

std::string with_reason(const std::string& what, const nlohmann::json& target) {
  const std::string reason = text_field(target, "reason");
  return reason.empty() ? what : what + ": " + reason;
}

}  // namespace

int wait_for_merge(const std::string& verb, const std::string& mountpoint, const std::string& name) {
  std::optional<Progress> progress;
  uint64_t total_bytes = 0;
  while (true) {
    auto status = ask_daemon(mountpoint, {{"op", "status"}}, kStatusTimeout);
    if (!status)
      return fail(verb, "lost the daemon while waiting for the merge: " + status.error().message());
    const nlohmann::json* target = find_target(status.value(), name);
    if (target == nullptr) {
      if (progress) progress->finish(total_bytes);
      return 0;
    }
    const std::string state = text_field(*target, "state");
    if (state == "failed") return fail(verb, with_reason("the merge of " + name + " failed", *target));
    if (text_field(*target, "dm_status") == "Merge failed")
      return fail(verb, "the merge of " + name + " failed (see the daemon's log in the state directory)");
    if (state == "invalid" || state == "overflow")
      return fail(verb, "the merge of " + name + " stopped: the snapshot is " + state);
    const auto merge = target->find("merge");
    if (merge != target->end() && merge->is_object()) {
      const uint64_t chunk = number_field(*target, "chunk_size");
      total_bytes = number_field(*merge, "total") * chunk;
      const uint64_t done_bytes = number_field(*merge, "done") * chunk;
      if (!progress) progress.emplace("merge " + name, total_bytes, stderr, done_bytes);
      progress->update(done_bytes);
    }
    std::this_thread::sleep_for(kPollInterval);
  }
}

int wait_for_resync(const std::string& verb, const std::string& mountpoint, const std::string& name) {
  std::optional<Progress> progress;
  int stopped_polls = 0;
  while (true) {
    auto status = ask_daemon(mountpoint, {{"op", "status"}}, kStatusTimeout);
    if (!status)
      return fail(verb, "lost the daemon while waiting for the resync: " + status.error().message());
    const nlohmann::json* target = find_target(status.value(), name);
    if (target == nullptr) return fail(verb, "mirror " + name + " was removed during the resync");
    const std::string state = text_field(*target, "state");
    if (state == "failed") return fail(verb, with_reason("mirror " + name + " failed", *target));
    const uint64_t region = number_field(*target, "region_size");
    const uint64_t total = number_field(*target, "regions_total");
    const uint64_t in_sync = number_field(*target, "regions_in_sync");
    if (!progress) progress.emplace("resync " + name, total * region, stderr, in_sync * region);
    if (in_sync >= total) {
      progress->finish(total * region);
      return 0;
    }
    progress->update(in_sync * region);
    stopped_polls = state == "resyncing" ? 0 : stopped_polls + 1;
    if (stopped_polls >= kStoppedPolls) {
      std::string legs;
      const auto list = target->find("legs");
      if (list != target->end() && list->is_array()) {
        for (const auto& leg : *list)
          legs += std::string(legs.empty() ? "" : ", ") + text_field(leg, "device") + " " +
                  text_field(leg, "health");
      }
      return fail(verb, std::string("resync stopped at ") + std::to_string(in_sync) + " of " +
                            std::to_string(total) + " regions (state " + state + "; legs: " + legs + ")");
    }
    std::this_thread::sleep_for(kPollInterval);
  }
}

}  // namespace kcopyfs::cli
