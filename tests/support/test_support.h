// Helpers shared by the test suites: temporary directories, image files with known content, loop devices.
// Every helper cleans up in its destructor, so a failing test leaves nothing behind.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "engine/unique_fd.h"

namespace kcopyfs::test {

// A fresh directory under $TMPDIR (or /var/tmp, which is disk-backed so O_DIRECT works), removed with its
// contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// Deterministic pseudo-random bytes: the same (seed, offset) always gives the same byte, so expected content
// can be recomputed for any range.
std::vector<std::byte> pattern(uint64_t seed, uint64_t offset, uint64_t length);
// Creates (or truncates) path with `size` bytes of pattern(seed, 0, size).
void write_pattern_file(const std::string& path, uint64_t size, uint64_t seed);
// Creates a sparse file of `size` bytes (all zeros, unallocated).
void make_sparse_file(const std::string& path, uint64_t size);
std::vector<std::byte> read_file(const std::string& path, uint64_t offset, uint64_t length);
void write_file(const std::string& path, uint64_t offset, const std::vector<std::byte>& data);

// A loop device over a backing file, attached with autoclear: it detaches when this object closes its fd, and
// also when the test process dies, so nothing leaks. Requires root (tests skip only when not root).
class LoopDevice {
 public:
  // block_size: the loop device's logical block size (512 or 4096).
  explicit LoopDevice(const std::string& backing_file, unsigned block_size = 512);
  ~LoopDevice();
  LoopDevice(const LoopDevice&) = delete;
  LoopDevice& operator=(const LoopDevice&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  UniqueFd fd_;
};

bool running_as_root();

}  // namespace kcopyfs::test
