#include "tools/cli/verb_args.h"

#include <filesystem>
#include <iostream>

#include "tools/cli/command.h"

namespace po = boost::program_options;

namespace kcopyfs::cli {

std::variant<VerbArgs, int> parse_verb_args(const std::string& verb, const po::options_description& visible,
                                            const std::vector<std::string>& args, size_t min_words,
                                            size_t max_words) {
  po::options_description hidden;
  hidden.add_options()("words", po::value<std::vector<std::string>>(), "");
  po::options_description all;
  all.add(visible).add(hidden);
  po::positional_options_description positional;
  positional.add("words", -1);
  VerbArgs parsed;
  try {
    po::store(po::command_line_parser(args).options(all).positional(positional).run(), parsed.options);
    // --help wins over missing required options, so it is checked before notify() enforces them.
    if (parsed.options.count("help")) {
      std::cout << visible;
      return 0;
    }
    po::notify(parsed.options);
  } catch (const po::error& e) {
    return fail(verb, e.what());
  }
  if (parsed.options.count("words")) parsed.words = parsed.options["words"].as<std::vector<std::string>>();
  if (parsed.words.size() < min_words)
    return fail(verb, "missing arguments (see kcopyfs " + verb + " --help)");
  if (parsed.words.size() > max_words)
    return fail(verb,
                "too many arguments: '" + parsed.words[max_words] + "' (see kcopyfs " + verb + " --help)");
  return parsed;
}

int run_sub_verb(const std::string& verb, const std::vector<SubVerb>& sub_verbs,
                 const std::vector<std::string>& args) {
  auto usage = [&](std::ostream& out) {
    out << "Usage: kcopyfs " << verb << " SUB-VERB [OPTIONS] ARGS...\n\nSub-verbs:\n";
    for (const SubVerb& s : sub_verbs) {
      const std::string name = s.name;
      out << "  " << name << std::string(name.size() < 10 ? 10 - name.size() : 1, ' ') << s.summary << "\n";
    }
    out << "\n'kcopyfs " << verb << " SUB-VERB --help' describes a sub-verb.\n";
  };
  if (args.empty()) return fail(verb, "missing SUB-VERB (see kcopyfs " + verb + " --help)", 2);
  if (args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    usage(std::cout);
    return 0;
  }
  for (const SubVerb& s : sub_verbs) {
    if (args[0] == s.name) return s.run(std::vector<std::string>(args.begin() + 1, args.end()));
  }
  return fail(verb, "unknown sub-verb '" + args[0] + "' (see kcopyfs " + verb + " --help)", 2);
}

std::optional<std::string> name_problem(const std::string& name) {
  const std::string rule = "(a NAME is 1-64 of A-Z a-z 0-9 . _ -, not starting with '.')";
  if (name.empty()) return "an empty NAME is not allowed " + rule;
  if (name.size() > 64) return "'" + name + "' is longer than 64 characters " + rule;
  if (name[0] == '.') return "'" + name + "' starts with '.' " + rule;
  for (char c : name) {
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
                    c == '_' || c == '-';
    if (!ok) return "'" + name + "' is not a NAME " + rule;
  }
  return std::nullopt;
}

std::string absolute_path(const std::string& path) {
  std::error_code ec;
  std::filesystem::path p = std::filesystem::absolute(path, ec);
  if (ec) p = path;
  std::string text = p.lexically_normal().string();
  while (text.size() > 1 && text.back() == '/') text.pop_back();
  return text;
}

}  // namespace kcopyfs::cli
