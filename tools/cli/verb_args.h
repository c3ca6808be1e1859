// What every daemon verb parses the same way: options plus positional words (Boost.Program_options), NAMEs
// and paths as interface.md defines them ("Sizes and names").
#pragma once

#include <boost/program_options.hpp>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace kcopyfs::cli {

struct VerbArgs {
  boost::program_options::variables_map options;
  std::vector<std::string> words;  // the positional arguments, in order
};

// Parses args against visible (whose caption is the verb's usage text) and expects min_words to max_words
// positional words. Result: the parsed arguments, or the exit code when the verb is done already (--help
// printed: 0; a usage error printed as one line: 1).
std::variant<VerbArgs, int> parse_verb_args(const std::string& verb,
                                            const boost::program_options::options_description& visible,
                                            const std::vector<std::string>& args, size_t min_words,
                                            size_t max_words);

// A verb with sub-verbs ("snapshot create"): the sub-verb's name, its one-line summary, and what runs it
// (with the words after the sub-verb).
struct SubVerb {
  const char* name;
  const char* summary;
  int (*run)(const std::vector<std::string>& args);
};

// Runs the sub-verb args[0] of verb; "--help" lists the sub-verbs. A missing or unknown sub-verb is a usage
// error (exit 2, as an unknown verb).
int run_sub_verb(const std::string& verb, const std::vector<SubVerb>& sub_verbs,
                 const std::vector<std::string>& args);

// Why name is not a NAME (1-64 of A-Z a-z 0-9 . _ -, not starting with '.'), or nullopt when it is one.
std::optional<std::string> name_problem(const std::string& name);

// path made absolute and lexically normal, without resolving symlinks, so the daemon records the user's
// names (a trailing '/' is dropped).
std::string absolute_path(const std::string& path);

}  // namespace kcopyfs::cli
