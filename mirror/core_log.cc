#include "mirror/core_log.h"

namespace kcopyfs {

Result<std::unique_ptr<CoreLog>> CoreLog::create(Sector region_size, Sector mirror_size, SyncMode mode) {
  const std::string rule = check_region_size(region_size, mirror_size);
  if (!rule.empty()) return Error::invalid("core log: " + rule);
  auto ring = IoRing::shared();
  if (!ring) return ring.error();
  return std::unique_ptr<CoreLog>(new CoreLog(RegionGeometry(region_size, mirror_size), mode, *ring.value()));
}

void CoreLog::flush(std::function<void(bool ok)> done) {
  // Only the callback is captured: it may run after the log is gone.
  ring_.defer([done = std::move(done)] { done(true); });
}

std::string CoreLog::status_info() const { return "1 core"; }

std::string CoreLog::status_table() const {
  std::string out = "core ";
  out += std::to_string(table_argument_count(1));
  out += ' ';
  append_table_tail(out);
  return out;
}

}  // namespace kcopyfs
