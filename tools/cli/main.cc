// kcopyfs: the command-line tool. Dispatches to one verb per file (command.h).
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "tools/cli/command.h"

namespace kcopyfs::cli {

int fail(const std::string& verb, const std::string& message, int code) {
  std::cerr << "kcopyfs: " << verb << ": " << message << "\n";
  return code;
}

namespace {

struct Verb {
  const char* name;
  const char* summary;
  int (*run)(const std::vector<std::string>&);
};

const Verb kVerbs[] = {
    {"mount", "start the daemon of a state directory and mount its targets", run_mount},
    {"umount", "flush everything, unmount, and stop the daemon", run_umount},
    {"origin", "add a device as an origin (origin add)", run_origin},
    {"snapshot", "create, attach or merge a snapshot (snapshot create|attach|merge)", run_snapshot},
    {"mirror", "create, resync, replace or throttle a mirror (mirror create|resync|replace|throttle)",
     run_mirror},
    {"remove", "remove a target from a mount", run_remove},
    {"status", "show the targets of a mount (--json for scripts)", run_status},
    {"copy", "copy a volume to up to 8 destinations with one read of the source", run_copy},
    {"demo", "show kcopyfs at work on sample images", run_demo},
};

void usage(std::ostream& out) {
  out << "Usage: kcopyfs VERB [OPTIONS] ARGS...\n\nVerbs:\n";
  for (const Verb& v : kVerbs)
    out << "  " << v.name << std::string(10 - std::strlen(v.name), ' ') << v.summary << "\n";
  out << "\n'kcopyfs VERB --help' describes a verb.\n";
}

}  // namespace
}  // namespace kcopyfs::cli

int main(int argc, char** argv) {
  using namespace kcopyfs::cli;
  if (argc < 2) {
    usage(std::cerr);
    return 2;
  }
  const std::string verb = argv[1];
  if (verb == "--help" || verb == "-h" || verb == "help") {
    usage(std::cout);
    return 0;
  }
  std::vector<std::string> args(argv + 2, argv + argc);
  for (const Verb& v : kVerbs) {
    if (verb == v.name) return v.run(args);
  }
  return fail(verb, "unknown verb (see kcopyfs --help)", 2);
}
