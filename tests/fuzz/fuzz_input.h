// Reading a fuzz input: a few parameter bytes in front, the rest a device image.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kcopyfs::fuzz {

class Input {
 public:
  Input(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  // The next byte (0 once the input is used up).
  uint8_t byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  uint32_t le32() {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(byte()) << (8 * i);
    return v;
  }
  // The rest of the input, zero-padded to a multiple of block, plus extra_bytes of zeros.
  std::vector<std::byte> image(uint32_t block, size_t extra_bytes) {
    const size_t rest = pos_ < size_ ? size_ - pos_ : 0;
    const size_t padded = (rest + block - 1) / block * block + extra_bytes;
    std::vector<std::byte> out(padded);
    for (size_t i = 0; i < rest; ++i) out[i] = static_cast<std::byte>(data_[pos_ + i]);
    pos_ = size_;
    return out;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

}  // namespace kcopyfs::fuzz
