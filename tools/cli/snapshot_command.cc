// kcopyfs snapshot create / attach / merge (interface.md, "Targets").
#include <iostream>

#include "tools/cli/command.h"
#include "tools/cli/daemon_request.h"
#include "tools/cli/sizes.h"
#include "tools/cli/verb_args.h"
#include "tools/cli/wait_progress.h"

namespace po = boost::program_options;

namespace kcopyfs::cli {

namespace {

constexpr uint64_t kMinChunk = 4096;
constexpr uint64_t kMaxChunk = 512 * 1024;

bool power_of_two(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

// The arguments of create and attach, MOUNTPOINT ORIGIN NAME plus options, with both NAMEs checked. Result:
// the parsed arguments, or the exit code when the verb is done already (help shown, or an error reported).
std::variant<VerbArgs, int> parse_origin_and_name(const char* verb, const po::options_description& visible,
                                                  const std::vector<std::string>& args) {
  auto parsed = parse_verb_args(verb, visible, args, 3, 3);
  if (const auto* verb_args = std::get_if<VerbArgs>(&parsed)) {
    for (size_t i : {1, 2}) {
      if (auto problem = name_problem(verb_args->words[i])) return fail(verb, *problem);
    }
  }
  return parsed;
}

int snapshot_create(const std::vector<std::string>& args) {
  constexpr const char* kVerb = "snapshot create";
  po::options_description visible(
      "Usage: kcopyfs snapshot create MOUNTPOINT ORIGIN NAME [OPTIONS]\n"
      "Takes the snapshot NAME of the origin ORIGIN, shown at MOUNTPOINT/snapshots/NAME: every write to the\n"
      "origin acknowledged before the command starts is in it, no write issued after it returns is.\n"
      "The COW store is persistent (the kernel's dm-snapshot format, version 1) unless --transient; by\n"
      "default the sparse file DIR/NAME.cow in the state directory, large enough never to overflow.\n"
      "A COW device that already holds a valid header is refused (use kcopyfs snapshot attach).\n\nOptions");
  std::string chunk_text = "4K", cow, cow_size_text;
  visible.add_options()("help,h", "show this help")("chunk-size", po::value<std::string>(&chunk_text),
                                                    "SIZE of a COW chunk: a power of two, 4K to 512K (4K)")(
      "cow", po::value<std::string>(&cow), "keep the COW store on DEVICE (a file or block device) instead")(
      "cow-size", po::value<std::string>(&cow_size_text), "bound the default COW file to SIZE")(
      "transient", "keep the exceptions in memory only; the snapshot is dropped at unmount")(
      "writable", "make the snapshot's view read-write");
  auto parsed = parse_origin_and_name(kVerb, visible, args);
  if (auto* code = std::get_if<int>(&parsed)) return *code;
  const auto& vm = std::get<VerbArgs>(parsed).options;
  const auto& words = std::get<VerbArgs>(parsed).words;
  const auto chunk = parse_size(chunk_text);
  if (!chunk || !power_of_two(*chunk) || *chunk < kMinChunk || *chunk > kMaxChunk)
    return fail(kVerb, "--chunk-size takes a power of two from 4K to 512K, not '" + chunk_text + "'");
  nlohmann::json request = {{"op", "snapshot_create"},
                            {"origin", words[1]},
                            {"name", words[2]},
                            {"chunk_size", *chunk},
                            {"transient", vm.count("transient") > 0},
                            {"writable", vm.count("writable") > 0}};
  if (vm.count("cow")) {
    if (vm.count("cow-size"))
      return fail(kVerb, "--cow-size bounds the default COW file; it does not go with --cow");
    request["cow"] = absolute_path(cow);
  }
  if (vm.count("cow-size")) {
    const auto cow_size = parse_size(cow_size_text);
    if (!cow_size || *cow_size == 0 || *cow_size % 512 != 0)
      return fail(kVerb, "--cow-size takes a positive SIZE, a multiple of 512, not '" + cow_size_text + "'");
    request["cow_size"] = *cow_size;
  }
  return request_or_fail(kVerb, words[0], request) ? 0 : 1;
}

int snapshot_attach(const std::vector<std::string>& args) {
  constexpr const char* kVerb = "snapshot attach";
  po::options_description visible(
      "Usage: kcopyfs snapshot attach MOUNTPOINT ORIGIN NAME --cow DEVICE [--writable]\n"
      "Adopts the existing persistent COW store on DEVICE (made by kcopyfs or by the kernel's dm-snapshot)\n"
      "as the snapshot NAME of ORIGIN; its chunk size is the store's.\n\nOptions");
  std::string cow;
  visible.add_options()("help,h", "show this help")("cow", po::value<std::string>(&cow)->required(),
                                                    "the COW DEVICE (a file or block device)")(
      "writable", "make the snapshot's view read-write");
  auto parsed = parse_origin_and_name(kVerb, visible, args);
  if (auto* code = std::get_if<int>(&parsed)) return *code;
  const auto& vm = std::get<VerbArgs>(parsed).options;
  const auto& words = std::get<VerbArgs>(parsed).words;
  const nlohmann::json request = {{"op", "snapshot_attach"},
                                  {"origin", words[1]},
                                  {"name", words[2]},
                                  {"cow", absolute_path(cow)},
                                  {"writable", vm.count("writable") > 0}};
  return request_or_fail(kVerb, words[0], request) ? 0 : 1;
}

int snapshot_merge(const std::vector<std::string>& args) {
  constexpr const char* kVerb = "snapshot merge";
  po::options_description visible(
      "Usage: kcopyfs snapshot merge MOUNTPOINT NAME [--wait]\n"
      "Rolls the snapshot's origin back to the snapshot NAME. The origin shows the snapshot's content at\n"
      "once and stays usable while the chunks are copied back; other snapshots keep their content; NAME is\n"
      "removed when the merge is done. An interrupted merge resumes at the next mount.\n\nOptions");
  visible.add_options()("help,h", "show this help")(
      "wait", "show the progress (a bar on a terminal) and return when the merge is done");
  auto parsed = parse_verb_args(kVerb, visible, args, 2, 2);
  if (auto* code = std::get_if<int>(&parsed)) return *code;
  const auto& words = std::get<VerbArgs>(parsed).words;
  if (auto problem = name_problem(words[1])) return fail(kVerb, *problem);
  if (!request_or_fail(kVerb, words[0], {{"op", "snapshot_merge"}, {"name", words[1]}})) return 1;
  if (std::get<VerbArgs>(parsed).options.count("wait")) return wait_for_merge(kVerb, words[0], words[1]);
  return 0;
}

}  // namespace

int run_snapshot(const std::vector<std::string>& args) {
  return run_sub_verb("snapshot",
                      {{"create", "take a snapshot of an origin", snapshot_create},
                       {"attach", "adopt an existing COW store (kcopyfs's or the kernel's)", snapshot_attach},
                       {"merge", "roll the origin back to a snapshot", snapshot_merge}},
                      args);
}

}  // namespace kcopyfs::cli
