// kcopyfs origin add: make a device an origin of a mount (interface.md, "Targets").
#include <iostream>

#include "tools/cli/command.h"
#include "tools/cli/daemon_request.h"
#include "tools/cli/verb_args.h"

namespace po = boost::program_options;

namespace kcopyfs::cli {

namespace {

int origin_add(const std::vector<std::string>& args) {
  constexpr const char* kVerb = "origin add";
  po::options_description visible(
      "Usage: kcopyfs origin add MOUNTPOINT NAME DEVICE\n"
      "Adds DEVICE (a regular file or a block device, a multiple of 512 bytes, opened exclusively) as the\n"
      "origin NAME, shown read-write at MOUNTPOINT/origins/NAME; its writes copy-on-write into its\n"
      "snapshots first. The table in the state directory records it for the next mount.\n\nOptions");
  visible.add_options()("help,h", "show this help");
  auto parsed = parse_verb_args(kVerb, visible, args, 3, 3);
  if (auto* code = std::get_if<int>(&parsed)) return *code;
  const auto& words = std::get<VerbArgs>(parsed).words;
  if (auto problem = name_problem(words[1])) return fail(kVerb, *problem);
  const nlohmann::json request = {
      {"op", "origin_add"}, {"name", words[1]}, {"device", absolute_path(words[2])}};
  return request_or_fail(kVerb, words[0], request) ? 0 : 1;
}

}  // namespace

int run_origin(const std::vector<std::string>& args) {
  return run_sub_verb(
      "origin", {{"add", "add a device as an origin (a volume that can have snapshots)", origin_add}}, args);
}

}  // namespace kcopyfs::cli
