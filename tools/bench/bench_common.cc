#include "tools/bench/bench_common.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>

#include "tools/cli/sizes.h"

namespace kcopyfs::bench {

namespace {
const char* program = "bench";
}

void set_program_name(const char* name) { program = name; }

void die(const std::string& message) {
  std::fprintf(stderr, "%s: %s\n", program, message.c_str());
  std::exit(1);
}

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

bool is_root() { return ::geteuid() == 0; }

void drop_caches() {
  ::sync();
  if (!is_root()) return;
  std::ofstream f("/proc/sys/vm/drop_caches");
  f << "3\n";
}

double load_average() {
  std::ifstream f("/proc/loadavg");
  double v = 0;
  f >> v;
  return v;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

std::vector<std::string> split(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

void parse_options(int argc, char** argv, const char* usage,
                   boost::program_options::options_description& options) {
  namespace po = boost::program_options;
  options.add_options()("help,h", "this text");
  po::variables_map vm;
  try {
    po::store(po::parse_command_line(argc, argv, options), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    die(std::string(e.what()) + " (see --help)");
  }
  if (vm.count("help")) {
    std::printf("%s\n", usage);
    std::cout << options;
    std::exit(0);
  }
}

std::vector<uint64_t> numbers_or_die(const std::string& option, const std::string& text) {
  std::vector<uint64_t> out;
  for (const std::string& item : split(text)) {
    char* end = nullptr;
    errno = 0;
    const uint64_t v = std::strtoull(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || errno != 0 || item[0] == '-')
      die(option + " takes whole numbers separated by commas, not '" + text + "'");
    out.push_back(v);
  }
  return out;
}

uint64_t size_or_die(const std::string& text) {
  auto size = cli::parse_size(text);
  if (!size) die("cannot parse size '" + text + "'");
  return *size;
}

std::unique_ptr<FileDevice> open_device(const std::string& path) {
  auto dev = FileDevice::open(path, OpenOptions{});
  if (!dev) die(dev.error().message());
  static bool warned = false;
  if (!dev.value()->direct_io() && !warned) {
    warned = true;
    std::fprintf(stderr, "%s: warning: %s is not O_DIRECT (buffered I/O)\n", program, path.c_str());
  }
  return std::move(dev).value();
}

Buffer random_buffer(size_t bytes, uint64_t seed) {
  Buffer buffer = allocate_aligned(kPageSize, bytes);
  std::byte* p = buffer.get();
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i + 8 <= bytes; i += 8) {
    const uint64_t v = rng();
    std::memcpy(p + i, &v, 8);
  }
  return buffer;
}

}  // namespace kcopyfs::bench
