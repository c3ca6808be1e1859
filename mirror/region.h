// Regions: the mirror's unit of synchronisation (kernel-dm-notes.md §4.1, §6). RegionIndex numbers regions of
// region_size sectors from the start of the mirror.
#pragma once

#include <cstdint>
#include <string>

#include "engine/units.h"

namespace kcopyfs {

struct RegionTag {};
using RegionIndex = Quantity<RegionTag>;

inline constexpr Sector kDefaultRegionSize = Sector(1024);  // 512 KiB

// The kernel's region-size rules (_check_region_size, §4.1): a power of two, at least 2 sectors and no larger
// than the mirror. Result: empty when they hold, else the sentence saying which rule failed.
inline std::string check_region_size(Sector region_size, Sector mirror_size) {
  const uint64_t rs = region_size.value();
  std::string what = "region size ";
  what += std::to_string(rs);
  what += " sectors";
  if (mirror_size.value() == 0) return "mirror size 0: a mirror needs at least one sector";
  if (rs < 2) return what + " is too small (the smallest is 2 sectors)";
  if ((rs & (rs - 1)) != 0) return what + " is not a power of 2";
  if (region_size > mirror_size) {
    what += " is larger than the mirror (";
    what += std::to_string(mirror_size.value());
    return what + " sectors)";
  }
  return {};
}

class RegionGeometry {
 public:
  // Precondition: check_region_size(region_size, mirror_size) is empty.
  RegionGeometry(Sector region_size, Sector mirror_size)
      : size_(region_size),
        shift_(static_cast<unsigned>(__builtin_ctzll(region_size.value()))),
        count_((mirror_size.value() + region_size.value() - 1) >> shift_),
        mirror_size_(mirror_size) {}

  Sector region_size() const { return size_; }
  Sector mirror_size() const { return mirror_size_; }
  uint64_t region_count() const { return count_; }
  RegionIndex region_of(Sector s) const { return RegionIndex(s.value() >> shift_); }
  Sector start_of(RegionIndex r) const { return Sector(r.value() << shift_); }
  // The last region may be shorter than region_size.
  Sector length_of(RegionIndex r) const { return min(size_, mirror_size_ - start_of(r)); }

 private:
  Sector size_;
  unsigned shift_;
  uint64_t count_;
  Sector mirror_size_;
};

}  // namespace kcopyfs
