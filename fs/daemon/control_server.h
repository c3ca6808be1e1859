// ControlServer: the daemon's end of the control protocol (control_protocol.h).
//
// One thread accepts connections on STATE_DIR/control.sock and serves them one at a time: it reads one
// request line (bounded: 1 MiB and 10 s), checks the peer's credentials, parses the JSON, calls the handler
// and writes its reply. Malformed requests (not JSON, not an object, no "op") are answered with an error
// without reaching the handler; a peer that is neither the owner nor root gets {"ok": false, "error":
// "permission denied"} and is disconnected.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "engine/result.h"
#include "engine/unique_fd.h"

namespace kcopyfs::daemon {

class ControlServer {
 public:
  // Called on the server thread, one request at a time; returns the reply (must contain "ok").
  using Handler = std::function<nlohmann::json(const nlohmann::json& request)>;

  // Binds STATE_DIR/control.sock (a stale socket file there is replaced: the caller holds the state
  // directory's lock, so no other daemon uses it), mode 0600, and starts serving. Paths longer than
  // sun_path are reached through /proc/self/fd. Result: the server, or an error naming the socket path.
  static Result<std::unique_ptr<ControlServer>> start(const std::string& state_dir, uid_t owner,
                                                      Handler handler);
  // Stops accepting, lets a request being served finish (its reply is written), joins the thread and
  // removes the socket file.
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

 private:
  ControlServer() = default;
  void serve();

  std::string socket_path_;
  uid_t owner_ = 0;
  Handler handler_;
  UniqueFd listen_fd_;
  UniqueFd wake_fd_;  // an eventfd: the destructor writes it to end the accept loop
  std::thread thread_;
};

}  // namespace kcopyfs::daemon
