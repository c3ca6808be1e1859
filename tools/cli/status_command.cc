// kcopyfs status: the targets of a mount, as a table for people or as JSON for scripts (interface.md,
// "Targets").
#include <algorithm>
#include <cstdio>
#include <iostream>

#include "tools/cli/command.h"
#include "tools/cli/daemon_request.h"
#include "tools/cli/verb_args.h"

namespace po = boost::program_options;

namespace kcopyfs::cli {

namespace {

// "1.0G", "512.0M", "4.0K", "512B": compact, so the column stays one word for awk.
std::string short_size(uint64_t bytes) {
  static const char* units = "KMGTPE";
  if (bytes < 1024) return std::to_string(bytes) + "B";
  double value = static_cast<double>(bytes) / 1024;
  int u = 0;
  while (value >= 1024 && u < 5) {
    value /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f%c", value, units[u]);
  return buf;
}

std::string text(const nlohmann::json& object, const char* key) {
  const auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : std::string();
}

// The volume size of target: its own "size", or its origin's for a snapshot (which has none of its own).
std::string size_column(const nlohmann::json& status, const nlohmann::json& target) {
  const nlohmann::json* sized = &target;
  if (!target.contains("size")) {
    const nlohmann::json* origin = find_target(status, text(target, "origin"));
    if (origin != nullptr) sized = origin;
  }
  const auto it = sized->find("size");
  return it != sized->end() && it->is_number_unsigned() ? short_size(it->get<uint64_t>()) : "-";
}

std::string status_column(const nlohmann::json& target) {
  if (text(target, "state") == "failed") return text(target, "reason");
  if (text(target, "type") == "origin") {
    std::string names;
    const auto snapshots = target.find("snapshots");
    if (snapshots != target.end() && snapshots->is_array()) {
      for (const auto& s : *snapshots) {
        if (s.is_string()) names += std::string(names.empty() ? "" : ",") + s.get<std::string>();
      }
    }
    return names.empty() ? "-" : "snapshots: " + names;
  }
  const std::string dm = text(target, "dm_status");
  return dm.empty() ? "-" : dm;
}

void print_table(const nlohmann::json& status, const std::vector<const nlohmann::json*>& targets) {
  std::vector<std::vector<std::string>> rows{{"NAME", "TYPE", "SIZE", "STATE", "STATUS"}};
  for (const nlohmann::json* t : targets) {
    std::string state = text(*t, "state");
    rows.push_back({text(*t, "name"), text(*t, "type"), size_column(status, *t), state.empty() ? "-" : state,
                    status_column(*t)});
  }
  std::vector<size_t> widths(rows[0].size(), 0);
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line += std::string(widths[i] - row[i].size() + 2, ' ');
    }
    std::cout << line << "\n";
  }
}

}  // namespace

int run_status(const std::vector<std::string>& args) {
  constexpr const char* kVerb = "status";
  po::options_description visible(
      "Usage: kcopyfs status MOUNTPOINT [NAME] [--json]\n"
      "Shows every target of the mount at MOUNTPOINT (or only NAME), one line each:\n"
      "  NAME TYPE SIZE STATE STATUS\n"
      "STATE: active, resyncing, merging, invalid, overflow or failed. STATUS: a snapshot's or a mirror's\n"
      "dmsetup-style status (snapshot: allocated/total metadata in sectors, or Invalid, Overflow, Merge\n"
      "failed; mirror: N dev... in_sync/total 1 HEALTH log-info, with paths for devices), an origin's\n"
      "snapshots ('snapshots: s1,s2', or '-'), or why a failed target could not be loaded.\n"
      "--json prints one JSON object {\"targets\": [...]} with every field (interface.md).\n\nOptions");
  visible.add_options()("help,h", "show this help")("json", "print one JSON object instead of the table");
  auto parsed = parse_verb_args(kVerb, visible, args, 1, 2);
  if (auto* code = std::get_if<int>(&parsed)) return *code;
  const auto& words = std::get<VerbArgs>(parsed).words;
  auto reply = request_or_fail(kVerb, words[0], {{"op", "status"}});
  if (!reply) return 1;
  nlohmann::json status = std::move(*reply);
  status.erase("ok");
  if (!status.contains("targets") || !status["targets"].is_array())
    return fail(kVerb, "the daemon's reply has no list of targets");

  std::vector<const nlohmann::json*> shown;
  if (words.size() == 2) {
    const nlohmann::json* target = find_target(status, words[1]);
    if (target == nullptr)
      return fail(kVerb, "no target named '" + words[1] + "' at " + absolute_path(words[0]));
    shown.push_back(target);
  } else {
    for (const auto& t : status["targets"]) shown.push_back(&t);
  }

  if (std::get<VerbArgs>(parsed).options.count("json")) {
    if (words.size() == 2) {
      nlohmann::json only = status;
      only["targets"] = nlohmann::json::array({*shown[0]});
      std::cout << only.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    } else {
      std::cout << status.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    }
    return 0;
  }
  print_table(status, shown);
  return 0;
}

}  // namespace kcopyfs::cli
