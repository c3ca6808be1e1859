// What the library-driven benchmarks (snapshot_bench, mirror_bench) share: timing, cache dropping, medians,
// option values, devices and random data. Benchmarks are tools, not tests: errors end the program via die().
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <boost/program_options.hpp>

#include "engine/aligned_memory.h"
#include "engine/file_device.h"

namespace kcopyfs::bench {

using Clock = std::chrono::steady_clock;
inline constexpr uint64_t kKiB = 1024;
inline constexpr uint64_t kMiB = 1024 * kKiB;

// The name die() and warnings start with; set once in main().
void set_program_name(const char* name);
[[noreturn]] void die(const std::string& message);

double seconds_since(Clock::time_point t0);
bool is_root();
// sync; echo 3 > /proc/sys/vm/drop_caches (root only; otherwise just a sync).
void drop_caches();
double load_average();
double median(std::vector<double> v);

// Parses argv with options (Boost.Program_options, plus -h/--help, which prints usage then options and
// exits 0). Any parse error ends the program with one line.
void parse_options(int argc, char** argv, const char* usage,
                   boost::program_options::options_description& options);

// A comma-separated option value.
std::vector<std::string> split(const std::string& text);
// A comma-separated list of whole numbers, or die naming the option.
std::vector<uint64_t> numbers_or_die(const std::string& option, const std::string& text);
// A SIZE as the CLI takes it (bytes or K/M/G/T), or die.
uint64_t size_or_die(const std::string& text);

// Opens an image read-write, exclusively; warns once if the filesystem refused O_DIRECT.
std::unique_ptr<FileDevice> open_device(const std::string& path);

using Buffer = AlignedBytes;
// `bytes` of seeded random data, 4 KiB aligned.
Buffer random_buffer(size_t bytes, uint64_t seed);

}  // namespace kcopyfs::bench
