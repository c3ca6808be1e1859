// SIZE arguments as interface.md defines them: bytes, or a number with K, M, G or T (powers of 1024).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace kcopyfs::cli {

// Result: the size in bytes, or nullopt when text is not a SIZE (empty, not a number, bad suffix, overflow).
std::optional<uint64_t> parse_size(const std::string& text);
// "1.5 GiB", "512 KiB", "100 B": for people.
std::string format_bytes(double bytes);

}  // namespace kcopyfs::cli
