#include "tests/support/test_support.h"

#include <fcntl.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <random>
#include <stdexcept>

namespace kcopyfs::test {

namespace fs = std::filesystem;

TempDir::TempDir() {
  const char* env = std::getenv("TMPDIR");
  std::string tmpl = std::string(env != nullptr ? env : "/var/tmp") + "/kcopyfs-test.XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr)
    throw std::runtime_error("mkdtemp failed: " + std::string(std::strerror(errno)));
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

std::vector<std::byte> pattern(uint64_t seed, uint64_t offset, uint64_t length) {
  std::vector<std::byte> out(length);
  // Each 8-byte word is a hash of (seed, word index), so any range can be regenerated independently.
  for (uint64_t i = 0; i < length; ++i) {
    const uint64_t pos = offset + i;
    uint64_t x = (pos / 8) * 0x9E3779B97F4A7C15ull ^ (seed + 1) * 0xC2B2AE3D27D4EB4Full;
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 29;
    out[i] = static_cast<std::byte>(x >> ((pos % 8) * 8));
  }
  return out;
}

void write_file(const std::string& path, uint64_t offset, const std::vector<std::byte>& data) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
  if (!fd.valid()) throw std::runtime_error("open " + path + ": " + std::strerror(errno));
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::pwrite(fd.get(), data.data() + done, data.size() - done, static_cast<off_t>(offset + done));
    if (n <= 0) throw std::runtime_error("pwrite " + path + ": " + std::strerror(errno));
    done += static_cast<size_t>(n);
  }
}

void write_pattern_file(const std::string& path, uint64_t size, uint64_t seed) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd.valid()) throw std::runtime_error("open " + path + ": " + std::strerror(errno));
  fd.reset();
  constexpr uint64_t kPiece = 4 << 20;
  for (uint64_t off = 0; off < size; off += kPiece)
    write_file(path, off, pattern(seed, off, std::min(kPiece, size - off)));
}

void make_sparse_file(const std::string& path, uint64_t size) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd.valid() || ::ftruncate(fd.get(), static_cast<off_t>(size)) != 0)
    throw std::runtime_error("create " + path + ": " + std::strerror(errno));
}

std::vector<std::byte> read_file(const std::string& path, uint64_t offset, uint64_t length) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) throw std::runtime_error("open " + path + ": " + std::strerror(errno));
  std::vector<std::byte> out(length);
  size_t done = 0;
  while (done < length) {
    ssize_t n = ::pread(fd.get(), out.data() + done, length - done, static_cast<off_t>(offset + done));
    if (n < 0) throw std::runtime_error("pread " + path + ": " + std::strerror(errno));
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  out.resize(done);
  return out;
}

LoopDevice::LoopDevice(const std::string& backing_file, unsigned block_size) {
  UniqueFd control(::open("/dev/loop-control", O_RDWR | O_CLOEXEC));
  if (!control.valid())
    throw std::runtime_error(std::string("open /dev/loop-control: ") + std::strerror(errno));
  UniqueFd backing(::open(backing_file.c_str(), O_RDWR | O_CLOEXEC));
  if (!backing.valid()) throw std::runtime_error("open " + backing_file + ": " + std::strerror(errno));
  for (int attempt = 0; attempt < 16; ++attempt) {
    const int n = ::ioctl(control.get(), LOOP_CTL_GET_FREE);
    if (n < 0) throw std::runtime_error(std::string("LOOP_CTL_GET_FREE: ") + std::strerror(errno));
    std::string path = "/dev/loop" + std::to_string(n);
    UniqueFd dev(::open(path.c_str(), O_RDWR | O_CLOEXEC));
    if (!dev.valid()) continue;
    loop_config config{};
    config.fd = static_cast<uint32_t>(backing.get());
    config.block_size = block_size;
    config.info.lo_flags = LO_FLAGS_AUTOCLEAR;
    if (::ioctl(dev.get(), LOOP_CONFIGURE, &config) != 0) {
      if (errno == EBUSY) continue;  // another process took it between GET_FREE and CONFIGURE
      throw std::runtime_error("LOOP_CONFIGURE " + path + ": " + std::strerror(errno));
    }
    path_ = path;
    fd_ = std::move(dev);
    return;
  }
  throw std::runtime_error("no free loop device");
}

LoopDevice::~LoopDevice() {
  // Autoclear detaches on the last close; clearing explicitly as well makes it immediate.
  if (fd_.valid()) ::ioctl(fd_.get(), LOOP_CLR_FD, 0);
}

bool running_as_root() { return ::geteuid() == 0; }

}  // namespace kcopyfs::test
