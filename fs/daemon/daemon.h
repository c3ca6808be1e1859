// The kcopyfs daemon: serves one mount (fs::ViewServer) of the targets listed in a state directory's volume
// table, and the control requests of the CLI (control_protocol.h).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

namespace kcopyfs::daemon {

struct DaemonOptions {
  std::string state_dir;   // absolute; created (0700) when missing
  std::string mountpoint;  // absolute, an existing directory
  bool allow_other = false;
  // Origin::set_write_back_limit for every origin: bytes of origin writes acknowledged before their
  // copy-on-write is done (0: acknowledged once on the device).
  uint64_t write_back_bytes = 16ull << 20;
  // IoRing::Options::sq_poll_idle of the daemon's io_uring: how long the kernel keeps polling for new I/O
  // after the last one (0: no polling thread).
  std::chrono::milliseconds io_poll{2};
};

// Locks the state directory (one daemon per directory), loads the volume table, mounts, loads every target
// (a target that fails is kept as "failed" with its reason), starts the control server, then calls
// ready("") and serves until umount (the control request), a kernel-side unmount (umount, fusermount3 -u)
// or SIGTERM/SIGINT, after which it flushes and closes every target and returns 0. If start-up fails,
// ready(message) is called with one sentence and the result is non-zero; nothing is left mounted.
// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread (before creating threads) and waits for them.
int run_daemon(const DaemonOptions& options, const std::function<void(const std::string& error)>& ready);

// The default state directory: /var/lib/kcopyfs for root, else $XDG_STATE_HOME/kcopyfs or
// ~/.local/state/kcopyfs.
std::string default_state_dir();

}  // namespace kcopyfs::daemon
