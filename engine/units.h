// Units that carry their meaning in the type.
//
// A Sector is a 512-byte unit (a position or a count), as the kernel's sector_t. Bytes is a byte position or
// count. They never convert implicitly into each other or into integers: use to_bytes() / to_sectors() and
// value(). Later layers add their own (ChunkIndex in snapshot/, RegionIndex in mirror/) the same way.
#pragma once

#include <compare>
#include <cstdint>

namespace kcopyfs {

template <class Tag>
class Quantity {
 public:
  constexpr Quantity() = default;
  constexpr explicit Quantity(uint64_t value) : value_(value) {}

  constexpr uint64_t value() const { return value_; }

  constexpr auto operator<=>(const Quantity&) const = default;
  constexpr Quantity operator+(Quantity other) const { return Quantity(value_ + other.value_); }
  constexpr Quantity operator-(Quantity other) const { return Quantity(value_ - other.value_); }
  constexpr Quantity& operator+=(Quantity other) {
    value_ += other.value_;
    return *this;
  }
  constexpr Quantity& operator-=(Quantity other) {
    value_ -= other.value_;
    return *this;
  }

 private:
  uint64_t value_ = 0;
};

struct SectorTag {};
struct BytesTag {};

// A position or a count in 512-byte sectors.
using Sector = Quantity<SectorTag>;
// A position or a count in bytes.
using Bytes = Quantity<BytesTag>;

inline constexpr uint32_t kSectorShift = 9;
inline constexpr uint32_t kSectorSize = 1u << kSectorShift;
inline constexpr uint32_t kPageSize = 4096;

constexpr Bytes to_bytes(Sector s) { return Bytes(s.value() << kSectorShift); }
// Precondition: b is a multiple of 512 (checked by callers that accept user input).
constexpr Sector to_sectors(Bytes b) { return Sector(b.value() >> kSectorShift); }
constexpr bool is_sector_aligned(Bytes b) { return (b.value() & (kSectorSize - 1)) == 0; }

constexpr Sector min(Sector a, Sector b) { return a < b ? a : b; }
constexpr Bytes min(Bytes a, Bytes b) { return a < b ? a : b; }

}  // namespace kcopyfs
