// kcopyfs mirror create / resync / replace / throttle (interface.md, "Targets").
#include <algorithm>
#include <cstdint>
#include <iostream>

#include "tools/cli/command.h"
#include "tools/cli/daemon_request.h"
#include "tools/cli/sizes.h"
#include "tools/cli/verb_args.h"
#include "tools/cli/wait_progress.h"

namespace po = boost::program_options;

namespace kcopyfs::cli {

namespace {

// The kernel's limit: one source plus kcopyd's 8 destinations.
constexpr size_t kMinLegs = 2;
constexpr size_t kMaxLegs = 9;

constexpr const char* kWaitHelp =
    "show the resync's progress (a bar on a terminal) and return when it is done";

int mirror_create(const std::vector<std::string>& args) {
  constexpr const char* kVerb = "mirror create";
  po::options_description visible(
      "Usage: kcopyfs mirror create MOUNTPOINT NAME DEVICE DEVICE... [OPTIONS]\n"
      "Makes the mirror NAME of 2 to 9 legs, shown read-write at MOUNTPOINT/mirrors/NAME; its size is the\n"
      "smallest leg's. A write goes to every healthy leg; reads are spread over the legs in sync. Unless\n"
      "--nosync, leg 0 is copied to the others in the background and the view is usable at once.\n\nOptions");
  std::string region_text = "512K", log = "disk";
  visible.add_options()("help,h", "show this help")("region-size", po::value<std::string>(&region_text),
                                                    "SIZE of a region: a power of two (512K)")(
      "log", po::value<std::string>(&log),
      "disk (DIR/NAME.log, only dirty regions resync after a crash) or core (in memory: every start "
      "resyncs)")("nosync", "the legs hold the same data already: no initial resync")("wait", kWaitHelp);
  auto parsed = parse_verb_args(kVerb, visible, args, 2, SIZE_MAX);
  if (auto* code = std::get_if<int>(&parsed)) return *code;
  const auto& vm = std::get<VerbArgs>(parsed).options;
  const auto& words = std::get<VerbArgs>(parsed).words;
  if (auto problem = name_problem(words[1])) return fail(kVerb, *problem);
  const size_t leg_count = words.size() - 2;
  if (leg_count < kMinLegs || leg_count > kMaxLegs)
    return fail(kVerb, std::string("a mirror has 2 to 9 legs (DEVICEs), not ") + std::to_string(leg_count));
  const auto region = parse_size(region_text);
  if (!region || *region < 512 || (*region & (*region - 1)) != 0)
    return fail(kVerb, "--region-size takes a power of two of at least 512, not '" + region_text + "'");
  if (log != "disk" && log != "core") return fail(kVerb, "--log takes disk or core, not '" + log + "'");
  nlohmann::json legs = nlohmann::json::array();
  for (size_t i = 2; i < words.size(); ++i) {
    const std::string leg = absolute_path(words[i]);
    if (std::find(legs.begin(), legs.end(), leg) != legs.end())
      return fail(kVerb, leg + " is named twice (each leg needs its own device)");
    legs.push_back(leg);
  }
  const nlohmann::json request = {
      {"op", "mirror_create"},  {"name", words[1]}, {"legs", legs},
      {"region_size", *region}, {"log", log},       {"nosync", vm.count("nosync") > 0}};
  if (!request_or_fail(kVerb, words[0], request)) return 1;
  if (vm.count("wait") && !vm.count("nosync")) return wait_for_resync(kVerb, words[0], words[1]);
  return 0;
}

int mirror_resync(const std::vector<std::string>& args) {
  constexpr const char* kVerb = "mirror resync";
  po::options_description visible(
      "Usage: kcopyfs mirror resync MOUNTPOINT NAME [--wait]\n"
      "Marks every region of the mirror NAME out of sync and copies leg 0 to the other legs.\n\nOptions");
  visible.add_options()("help,h", "show this help")("wait", kWaitHelp);
  auto parsed = parse_verb_args(kVerb, visible, args, 2, 2);
  if (auto* code = std::get_if<int>(&parsed)) return *code;
  const auto& words = std::get<VerbArgs>(parsed).words;
  if (auto problem = name_problem(words[1])) return fail(kVerb, *problem);
  if (!request_or_fail(kVerb, words[0], {{"op", "mirror_resync"}, {"name", words[1]}})) return 1;
  if (std::get<VerbArgs>(parsed).options.count("wait")) return wait_for_resync(kVerb, words[0], words[1]);
  return 0;
}

int mirror_replace(const std::vector<std::string>& args) {
  constexpr const char* kVerb = "mirror replace";
  po::options_description visible(
      "Usage: kcopyfs mirror replace MOUNTPOINT NAME OLD_DEVICE NEW_DEVICE [--wait]\n"
      "Swaps the leg OLD_DEVICE of the mirror NAME for NEW_DEVICE, which is then resynced.\n\nOptions");
  visible.add_options()("help,h", "show this help")("wait", kWaitHelp);
  auto parsed = parse_verb_args(kVerb, visible, args, 4, 4);
  if (auto* code = std::get_if<int>(&parsed)) return *code;
  const auto& words = std::get<VerbArgs>(parsed).words;
  if (auto problem = name_problem(words[1])) return fail(kVerb, *problem);
  const std::string old_leg = absolute_path(words[2]), new_leg = absolute_path(words[3]);
  if (old_leg == new_leg) return fail(kVerb, "OLD_DEVICE and NEW_DEVICE are both " + old_leg);
  const nlohmann::json request = {
      {"op", "mirror_replace"}, {"name", words[1]}, {"old", old_leg}, {"new", new_leg}};
  if (!request_or_fail(kVerb, words[0], request)) return 1;
  if (std::get<VerbArgs>(parsed).options.count("wait")) return wait_for_resync(kVerb, words[0], words[1]);
  return 0;
}

int mirror_throttle(const std::vector<std::string>& args) {
  constexpr const char* kVerb = "mirror throttle";
  po::options_description visible(
      "Usage: kcopyfs mirror throttle MOUNTPOINT NAME [--percent N] [--rate BYTES_PER_S]\n"
      "Limits the background resync of the mirror NAME (not the view's own I/O). Without options, removes\n"
      "the limits. Kept in the volume table: later mounts resync with the same limits.\n\nOptions");
  unsigned percent = 100;
  std::string rate_text = "0";
  visible.add_options()("help,h", "show this help")(
      "percent", po::value<unsigned>(&percent),
      "percent of the time the resync may keep I/O in flight (1-100)")(
      "rate", po::value<std::string>(&rate_text),
      "cap the resync at BYTES_PER_S (K/M/G suffixes; 0: no cap)");
  auto parsed = parse_verb_args(kVerb, visible, args, 2, 2);
  if (auto* code = std::get_if<int>(&parsed)) return *code;
  const auto& words = std::get<VerbArgs>(parsed).words;
  if (auto problem = name_problem(words[1])) return fail(kVerb, *problem);
  if (percent < 1 || percent > 100) return fail(kVerb, "--percent takes a percent from 1 to 100");
  const auto rate = parse_size(rate_text);
  if (!rate) return fail(kVerb, "--rate takes a number of bytes per second, not '" + rate_text + "'");
  const nlohmann::json request = {
      {"op", "mirror_throttle"}, {"name", words[1]}, {"percent", percent}, {"bytes_per_second", *rate}};
  return request_or_fail(kVerb, words[0], request) ? 0 : 1;
}

}  // namespace

int run_mirror(const std::vector<std::string>& args) {
  return run_sub_verb("mirror",
                      {{"create", "make a mirror of 2 to 9 devices", mirror_create},
                       {"resync", "copy leg 0 to the other legs again", mirror_resync},
                       {"replace", "swap a leg for another device", mirror_replace},
                       {"throttle", "limit the background resync", mirror_throttle}},
                      args);
}

}  // namespace kcopyfs::cli
