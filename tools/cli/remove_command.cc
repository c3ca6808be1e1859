// kcopyfs remove: take a target out of a mount and its table (interface.md, "Targets").
#include <iostream>

#include "tools/cli/command.h"
#include "tools/cli/daemon_request.h"
#include "tools/cli/verb_args.h"

namespace po = boost::program_options;

namespace kcopyfs::cli {

int run_remove(const std::vector<std::string>& args) {
  constexpr const char* kVerb = "remove";
  po::options_description visible(
      "Usage: kcopyfs remove MOUNTPOINT NAME\n"
      "Removes the target NAME (origin, snapshot or mirror) from the mount and its table. Refused while its\n"
      "view is open or while an origin still has snapshots. Removing a snapshot deletes its default COW "
      "file\n"
      "(and a mirror its default log); devices you named are never deleted.\n\nOptions");
  visible.add_options()("help,h", "show this help");
  auto parsed = parse_verb_args(kVerb, visible, args, 2, 2);
  if (auto* code = std::get_if<int>(&parsed)) return *code;
  const auto& words = std::get<VerbArgs>(parsed).words;
  if (auto problem = name_problem(words[1])) return fail(kVerb, *problem);
  return request_or_fail(kVerb, words[0], {{"op", "remove"}, {"name", words[1]}}) ? 0 : 1;
}

}  // namespace kcopyfs::cli
