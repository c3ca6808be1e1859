// Fuzzes the volume-table parser (fs/daemon/volume_table.h). A table that parses is formatted, parsed again
// and formatted again: the two texts must be the same (the daemon saves what it loaded).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "fs/daemon/volume_table.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto table = kcopyfs::daemon::parse_volume_table(text, "fuzz.conf");
  static const bool verbose = std::getenv("KCOPYFS_FUZZ_VERBOSE") != nullptr;  // say what the input did
  if (verbose) std::fprintf(stderr, "%s\n", table ? "parsed" : table.error().message().c_str());
  if (!table) {
    if (table.error().message().empty()) __builtin_trap();
    return 0;
  }
  for (const auto& o : table.value().origins)
    if (!kcopyfs::daemon::valid_target_name(o.name)) __builtin_trap();
  for (const auto& s : table.value().snapshots)
    if (!kcopyfs::daemon::valid_target_name(s.name)) __builtin_trap();
  for (const auto& m : table.value().mirrors)
    if (!kcopyfs::daemon::valid_target_name(m.name)) __builtin_trap();
  const std::string once = kcopyfs::daemon::format_volume_table(table.value());
  auto back = kcopyfs::daemon::parse_volume_table(once, "fuzz.conf (formatted)");
  if (!back) __builtin_trap();
  if (kcopyfs::daemon::format_volume_table(back.value()) != once) __builtin_trap();
  return 0;
}
