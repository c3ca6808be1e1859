#include "tools/cli/progress.h"

#include <unistd.h>

#include "tools/cli/sizes.h"

namespace kcopyfs::cli {

Progress::Progress(std::string label, uint64_t total_bytes, std::FILE* out, uint64_t start_bytes)
    : label_(std::move(label)),
      total_(total_bytes),
      start_bytes_(start_bytes),
      out_(out),
      tty_(::isatty(::fileno(out)) == 1),
      start_(std::chrono::steady_clock::now()) {}

void Progress::update(uint64_t done_bytes, bool force) {
  const auto now = std::chrono::steady_clock::now();
  const auto interval = tty_ ? std::chrono::milliseconds(100) : std::chrono::milliseconds(1000);
  if (!force && now - last_draw_ < interval) return;
  last_draw_ = now;
  draw(done_bytes, false);
}

void Progress::finish(uint64_t done_bytes) {
  // A plain line already showing the final figure is not repeated; a terminal line still needs its newline.
  if (!tty_ && drawn_ && last_bytes_ == done_bytes) return;
  draw(done_bytes, true);
}

void Progress::draw(uint64_t done_bytes, bool final) {
  drawn_ = true;
  last_bytes_ = done_bytes;
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const uint64_t moved = done_bytes > start_bytes_ ? done_bytes - start_bytes_ : 0;
  const double rate = secs > 0 ? static_cast<double>(moved) / secs : 0;
  const double fraction = total_ == 0 ? 1.0 : static_cast<double>(done_bytes) / static_cast<double>(total_);
  const int percent = static_cast<int>(fraction * 100);
  std::string eta = "--:--";
  if (rate > 0 && done_bytes < total_) {
    const auto left = static_cast<long>(static_cast<double>(total_ - done_bytes) / rate);
    char buf[32];
    std::snprintf(buf, sizeof buf, "%02ld:%02ld", left / 60, left % 60);
    eta = buf;
  } else if (done_bytes >= total_) {
    eta = "00:00";
  }
  if (tty_) {
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(fraction * kWidth);
    std::string bar(static_cast<size_t>(filled), '#');
    bar.append(static_cast<size_t>(kWidth - filled), '.');
    std::fprintf(out_, "\r%s [%s] %3d%% %s/s ETA %s\033[K", label_.c_str(), bar.c_str(), percent,
                 format_bytes(rate).c_str(), eta.c_str());
    if (final) std::fputc('\n', out_);
  } else {
    std::fprintf(out_, "%s: %d%% (%s of %s, %s/s)\n", label_.c_str(), percent,
                 format_bytes(static_cast<double>(done_bytes)).c_str(),
                 format_bytes(static_cast<double>(total_)).c_str(), format_bytes(rate).c_str());
  }
  std::fflush(out_);
}

}  // namespace kcopyfs::cli
