// The control channel (ControlServer, call_daemon, find_state_dir) over real Unix sockets, and the device
// checks, against a real kcopyfs FUSE mount served by a ViewServer in the test process.
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <future>
#include <stdexcept>
#include <string>
#include <thread>

#include "engine/unique_fd.h"
#include "fs/daemon/control_client.h"
#include "fs/daemon/control_protocol.h"
#include "fs/daemon/control_server.h"
#include "fs/daemon/device_checks.h"
#include "fs/view_server.h"
#include "tests/fs/fs_test_util.h"
#include "tests/support/test_support.h"

namespace kcopyfs::daemon {
namespace {

using json = nlohmann::json;
using kcopyfs::test::TempDir;

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// A server whose handler echoes the request back under "echo" and counts its calls.
std::unique_ptr<ControlServer> start_echo(const std::string& state_dir, std::atomic<int>* calls = nullptr) {
  auto server = ControlServer::start(state_dir, ::geteuid(), [calls](const json& request) {
    if (calls != nullptr) ++*calls;
    return json{{"ok", true}, {"echo", request}};
  });
  if (!server.ok()) throw std::runtime_error(server.error().message());
  return std::move(server).value();
}

// Connects to a socket path (short enough for sun_path), sends bytes as they are and returns the reply line.
std::string raw_exchange(const std::string& socket_path, const std::string& bytes) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, socket_path.c_str(), sizeof addr.sun_path - 1);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    throw std::runtime_error("connect " + socket_path + ": " + std::strerror(errno));
  if (::send(fd.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(bytes.size()))
    throw std::runtime_error("send: " + std::string(std::strerror(errno)));
  std::string reply;
  char c;
  while (::recv(fd.get(), &c, 1, 0) == 1 && c != '\n') reply += c;
  return reply;
}

std::string socket_of(const TempDir& dir) { return dir.file(kSocketName); }

TEST(ControlServer, RoundTripEchoesTheRequest) {
  TempDir dir;
  std::atomic<int> calls = 0;
  auto server = start_echo(dir.path(), &calls);
  json request = {{"op", "status"}, {"name", "a b"}, {"size", 4096}};
  auto reply = call_daemon(dir.path(), request);
  ASSERT_TRUE(reply.ok()) << reply.error().message();
  EXPECT_EQ((*reply)["ok"], true);
  EXPECT_EQ((*reply)["echo"], request);
  // One connection per request: a second call works as well.
  auto again = call_daemon(dir.path(), json{{"op", "umount"}});
  ASSERT_TRUE(again.ok()) << again.error().message();
  EXPECT_EQ((*again)["echo"]["op"], "umount");
  EXPECT_EQ(calls.load(), 2);
}

TEST(ControlServer, NonJsonRequestIsAnsweredWithAnError) {
  TempDir dir;
  std::atomic<int> calls = 0;
  auto server = start_echo(dir.path(), &calls);
  json reply = json::parse(raw_exchange(socket_of(dir), "this is not json\n"), nullptr, false);
  ASSERT_TRUE(reply.is_object());
  EXPECT_EQ(reply["ok"], false);
  EXPECT_EQ(reply["error"], "the request is not JSON");
  EXPECT_EQ(calls.load(), 0);
}

TEST(ControlServer, ArrayAndMissingOpAreRefused) {
  TempDir dir;
  std::atomic<int> calls = 0;
  auto server = start_echo(dir.path(), &calls);
  auto array = call_daemon(dir.path(), json::array({"op", "status"}));
  ASSERT_TRUE(array.ok()) << array.error().message();
  EXPECT_EQ((*array)["ok"], false);
  EXPECT_EQ((*array)["error"], "the request is not a JSON object");
  auto no_op = call_daemon(dir.path(), json{{"name", "x"}});
  ASSERT_TRUE(no_op.ok()) << no_op.error().message();
  EXPECT_EQ((*no_op)["ok"], false);
  EXPECT_TRUE(contains((*no_op)["error"].get<std::string>(), "\"op\""));
  auto numeric_op = call_daemon(dir.path(), json{{"op", 3}});
  ASSERT_TRUE(numeric_op.ok()) << numeric_op.error().message();
  EXPECT_EQ((*numeric_op)["ok"], false);
  EXPECT_EQ(calls.load(), 0);
}

TEST(ControlServer, HandlerExceptionBecomesInternalError) {
  TempDir dir;
  auto server = ControlServer::start(dir.path(), ::geteuid(),
                                     [](const json&) -> json { throw std::runtime_error("boom"); });
  ASSERT_TRUE(server.ok()) << server.error().message();
  auto reply = call_daemon(dir.path(), json{{"op", "status"}});
  ASSERT_TRUE(reply.ok()) << reply.error().message();
  EXPECT_EQ((*reply)["ok"], false);
  EXPECT_EQ((*reply)["error"], "internal error: boom");
  // The server survives the exception.
  auto second = call_daemon(dir.path(), json{{"op", "status"}});
  ASSERT_TRUE(second.ok()) << second.error().message();
  EXPECT_EQ((*second)["error"], "internal error: boom");
}

TEST(ControlServer, RequestOverOneMebibyteIsRefused) {
  TempDir dir;
  std::atomic<int> calls = 0;
  auto server = start_echo(dir.path(), &calls);
  auto big = call_daemon(dir.path(), json{{"op", "status"}, {"pad", std::string(2 << 20, 'x')}});
  ASSERT_TRUE(big.ok()) << big.error().message();
  EXPECT_EQ((*big)["ok"], false);
  EXPECT_TRUE(contains((*big)["error"].get<std::string>(), "1 MiB")) << *big;
  EXPECT_EQ(calls.load(), 0);
  // Just under the limit is served: the cap is not set needlessly low.
  auto fits = call_daemon(dir.path(), json{{"op", "status"}, {"pad", std::string((1 << 20) - 64, 'y')}});
  ASSERT_TRUE(fits.ok()) << fits.error().message();
  EXPECT_EQ((*fits)["ok"], true);
  EXPECT_EQ(calls.load(), 1);
}

TEST(ControlServer, LongStateDirectoryPathWorks) {
  TempDir dir;
  std::filesystem::path state = dir.path();
  for (int i = 0; i < 4; ++i) state /= std::string(40, static_cast<char>('a' + i));
  std::filesystem::create_directories(state);
  const std::string socket_path = (state / kSocketName).string();
  ASSERT_GT(socket_path.size(), sizeof(sockaddr_un{}.sun_path));
  {
    auto server = start_echo(state.string());
    auto reply = call_daemon(state.string(), json{{"op", "status"}});
    ASSERT_TRUE(reply.ok()) << reply.error().message();
    EXPECT_EQ((*reply)["echo"]["op"], "status");
    struct stat st {};
    ASSERT_EQ(::lstat(socket_path.c_str(), &st), 0) << "the socket must be at the long path itself";
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
  }
  struct stat st {};
  EXPECT_NE(::lstat(socket_path.c_str(), &st), 0);
  // No daemon at a long path is reported as such too.
  auto none = call_daemon(state.string(), json{{"op", "status"}});
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().message(), "no kcopyfs daemon is serving " + state.string());
}

TEST(ControlServer, SocketIsMode0600AndRemovedByTheDestructor) {
  TempDir dir;
  // With umask 022, bind() alone would leave 0755: the server must chmod.
  const mode_t old_umask = ::umask(022);
  auto server = start_echo(dir.path());
  ::umask(old_umask);
  struct stat st {};
  ASSERT_EQ(::lstat(socket_of(dir).c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  server.reset();
  EXPECT_NE(::lstat(socket_of(dir).c_str(), &st), 0);
  EXPECT_EQ(errno, ENOENT);
}

TEST(ControlServer, StaleSocketIsReplaced) {
  TempDir dir;
  {
    // A socket bound and closed without unlinking: what a killed daemon leaves behind.
    UniqueFd stale(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, socket_of(dir).c_str(), sizeof addr.sun_path - 1);
    ASSERT_EQ(::bind(stale.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  }
  auto refused = call_daemon(dir.path(), json{{"op", "status"}});
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().message(), "no kcopyfs daemon is serving " + dir.path().string());

  auto server = start_echo(dir.path());
  auto reply = call_daemon(dir.path(), json{{"op", "status"}});
  ASSERT_TRUE(reply.ok()) << reply.error().message();
  EXPECT_EQ((*reply)["ok"], true);
}

TEST(ControlServer, NonSocketFileIsNotDeleted) {
  TempDir dir;
  kcopyfs::test::make_sparse_file(socket_of(dir), 10);
  auto server = ControlServer::start(dir.path(), ::geteuid(), [](const json&) { return json{{"ok", true}}; });
  ASSERT_FALSE(server.ok());
  EXPECT_TRUE(contains(server.error().message(), socket_of(dir))) << server.error().message();
  struct stat st {};
  ASSERT_EQ(::lstat(socket_of(dir).c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
}

TEST(ControlServer, DestructorLetsTheRequestBeingServedFinish) {
  TempDir dir;
  std::promise<void> entered;
  auto server = ControlServer::start(dir.path(), ::geteuid(), [&entered](const json&) {
    entered.set_value();
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    return json{{"ok", true}, {"finished", true}};
  });
  ASSERT_TRUE(server.ok()) << server.error().message();
  auto call = std::async(std::launch::async, [&] { return call_daemon(dir.path(), json{{"op", "umount"}}); });
  entered.get_future().wait();
  server->reset();  // while the handler runs
  auto reply = call.get();
  ASSERT_TRUE(reply.ok()) << reply.error().message();
  EXPECT_EQ((*reply)["finished"], true);
}

TEST(ControlServer, ClientTimesOut) {
  TempDir dir;
  auto server = ControlServer::start(dir.path(), ::geteuid(), [](const json&) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    return json{{"ok", true}};
  });
  ASSERT_TRUE(server.ok()) << server.error().message();
  const auto start = std::chrono::steady_clock::now();
  auto reply = call_daemon(dir.path(), json{{"op", "status"}}, std::chrono::milliseconds(100));
  ASSERT_FALSE(reply.ok());
  EXPECT_EQ(reply.error().errno_value(), ETIMEDOUT);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(450));
}

TEST(ControlClient, NoDaemon) {
  TempDir dir;
  auto reply = call_daemon(dir.path(), json{{"op", "status"}});
  ASSERT_FALSE(reply.ok());
  EXPECT_EQ(reply.error().message(), "no kcopyfs daemon is serving " + dir.path().string());
}

TEST(ControlClient, ReplyThatIsNotJson) {
  TempDir dir;
  // A fake daemon that answers garbage.
  UniqueFd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, socket_of(dir).c_str(), sizeof addr.sun_path - 1);
  ASSERT_EQ(::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(listener.get(), 1), 0);
  std::thread fake([&] {
    UniqueFd conn(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    char c;
    while (::recv(conn.get(), &c, 1, 0) == 1 && c != '\n') {
    }
    const char garbage[] = "<html>\n";
    (void)!::send(conn.get(), garbage, sizeof garbage - 1, MSG_NOSIGNAL);
  });
  auto reply = call_daemon(dir.path(), json{{"op", "status"}});
  fake.join();
  ASSERT_FALSE(reply.ok());
  EXPECT_EQ(reply.error().message(), "the daemon's reply is not JSON");
}

// A child process with another uid connects: the server must refuse it by its credentials. The socket is
// opened up (0666, a traversable directory) so that the file mode does not refuse it first.
TEST(ControlServer, PeerWithAnotherUidGetsPermissionDenied) {
  if (!kcopyfs::test::running_as_root()) GTEST_SKIP() << "needs root to run a child as another uid";
  TempDir dir;
  std::atomic<int> calls = 0;
  auto server = start_echo(dir.path(), &calls);
  ASSERT_EQ(::chmod(dir.path().c_str(), 0755), 0);
  ASSERT_EQ(::chmod(socket_of(dir).c_str(), 0666), 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  ASSERT_LT(socket_of(dir).size(), sizeof addr.sun_path);
  std::strncpy(addr.sun_path, socket_of(dir).c_str(), sizeof addr.sun_path - 1);
  const char request[] = "{\"op\":\"status\"}\n";
  int out[2];
  ASSERT_EQ(::pipe2(out, O_CLOEXEC), 0);
  UniqueFd read_end(out[0]), write_end(out[1]);

  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // Only async-signal-safe calls from here: the parent has other threads. Raw syscalls change the ids of
    // this (only) thread without glibc's cross-thread machinery.
    if (::syscall(SYS_setgroups, 0, nullptr) != 0 || ::syscall(SYS_setresgid, 65534, 65534, 65534) != 0 ||
        ::syscall(SYS_setresuid, 65534, 65534, 65534) != 0)
      ::_exit(2);
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) ::_exit(3);
    (void)!::send(fd, request, sizeof request - 1, MSG_NOSIGNAL);
    char buffer[512];
    ssize_t n;
    while ((n = ::recv(fd, buffer, sizeof buffer, 0)) > 0) (void)!::write(write_end.get(), buffer, n);
    ::_exit(0);
  }
  write_end.reset();
  std::string reply_text;
  char buffer[512];
  ssize_t n;
  while ((n = ::read(read_end.get(), buffer, sizeof buffer)) > 0) reply_text.append(buffer, n);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 0) << "the child could not drop privileges (2) or connect (3)";
  json reply = json::parse(reply_text, nullptr, false);
  ASSERT_TRUE(reply.is_object()) << reply_text;
  EXPECT_EQ(reply["ok"], false);
  EXPECT_EQ(reply["error"], "permission denied");
  EXPECT_EQ(calls.load(), 0);
  // The owner is still served afterwards.
  auto mine = call_daemon(dir.path(), json{{"op", "status"}});
  ASSERT_TRUE(mine.ok()) << mine.error().message();
  EXPECT_EQ((*mine)["ok"], true);
}

TEST(FindStateDir, NotAMount) {
  TempDir dir;
  auto found = find_state_dir(dir.path());
  ASSERT_FALSE(found.ok());
  EXPECT_EQ(found.error().message(), dir.path().string() + " is not a kcopyfs mount");
  EXPECT_EQ(found.error().errno_value(), EINVAL);
}

TEST(FindStateDir, MissingPathNamesIt) {
  TempDir dir;
  const std::string missing = dir.file("nope");
  auto found = find_state_dir(missing);
  ASSERT_FALSE(found.ok());
  EXPECT_EQ(found.error().errno_value(), ENOENT);
  EXPECT_TRUE(contains(found.error().message(), missing)) << found.error().message();
}

// A real kcopyfs FUSE mount whose source is a state directory with characters that need escaping, and one
// volume (a file inside the mount).
class KcopyfsMount : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::access("/dev/fuse", R_OK | W_OK) != 0) GTEST_SKIP() << "/dev/fuse is not usable";
    state_ = dir_.file("state dir, with\\odd chars");
    mountpoint_ = dir_.file("mount point");
    ASSERT_TRUE(std::filesystem::create_directory(state_));
    ASSERT_TRUE(std::filesystem::create_directory(mountpoint_));
    kcopyfs::test::write_pattern_file(dir_.file("image"), 1 << 20, 7);
    fs::MountOptions options;
    options.mountpoint = mountpoint_;
    options.fsname = state_;
    options.subtype = kFuseSubtype;
    auto server = fs::ViewServer::mount(options);
    ASSERT_TRUE(server.ok()) << server.error().message();
    server_ = std::move(server).value();
    ASSERT_TRUE(
        server_->add_volume(fs::VolumeKind::origin, "vol", fs::test::open_image(dir_.file("image"))).ok());
    volume_ = mountpoint_ + "/origins/vol";
  }

  TempDir dir_;
  std::string state_, mountpoint_, volume_;
  std::unique_ptr<fs::ViewServer> server_;
};
class FindStateDirOnMount : public KcopyfsMount {};
class DeviceCheckOnMount : public KcopyfsMount {};

TEST_F(FindStateDirOnMount, ReturnsTheSource) {
  auto found = find_state_dir(mountpoint_);
  ASSERT_TRUE(found.ok()) << found.error().message();
  EXPECT_EQ(*found, state_);
  // The path is resolved first.
  auto via_dots = find_state_dir(mountpoint_ + "/origins/..");
  ASSERT_TRUE(via_dots.ok()) << via_dots.error().message();
  EXPECT_EQ(*via_dots, state_);
  // A directory inside the mount is not the mount.
  auto inside = find_state_dir(mountpoint_ + "/origins");
  ASSERT_FALSE(inside.ok());
  EXPECT_TRUE(contains(inside.error().message(), "is not a kcopyfs mount"));
}

TEST_F(FindStateDirOnMount, TakesTheTopOfStackedMounts) {
  const std::string other = dir_.file("other state");
  ASSERT_TRUE(std::filesystem::create_directory(other));
  fs::MountOptions options;
  options.mountpoint = mountpoint_;
  options.fsname = other;
  options.subtype = kFuseSubtype;
  auto top = fs::ViewServer::mount(options);
  ASSERT_TRUE(top.ok()) << top.error().message();
  auto found = find_state_dir(mountpoint_);
  ASSERT_TRUE(found.ok()) << found.error().message();
  EXPECT_EQ(*found, other);
  top->reset();  // unmounts the top one: the one below shows again
  auto below = find_state_dir(mountpoint_);
  ASSERT_TRUE(below.ok()) << below.error().message();
  EXPECT_EQ(*below, state_);
}

// Only the type tells a kcopyfs mount: another FUSE mount (type "fuse") whose source is a directory is not
// one.
TEST_F(FindStateDirOnMount, PlainFuseMountIsNotKcopyfs) {
  const std::string plain_mountpoint = dir_.file("plain");
  ASSERT_TRUE(std::filesystem::create_directory(plain_mountpoint));
  fs::MountOptions options;
  options.mountpoint = plain_mountpoint;
  options.fsname = state_;
  auto plain = fs::ViewServer::mount(options);
  ASSERT_TRUE(plain.ok()) << plain.error().message();
  auto found = find_state_dir(plain_mountpoint);
  ASSERT_FALSE(found.ok());
  EXPECT_EQ(found.error().message(), plain_mountpoint + " is not a kcopyfs mount");
  // The device check goes by the type as well.
  ASSERT_TRUE(
      (*plain)->add_volume(fs::VolumeKind::origin, "vol", fs::test::open_image(dir_.file("image"))).ok());
  auto status = check_device_path(plain_mountpoint + "/origins/vol");
  EXPECT_TRUE(status.ok()) << status.error().message();
}

TEST_F(DeviceCheckOnMount, DeviceInsideTheMountIsRefused) {
  auto status = check_device_path(volume_);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().message(),
            volume_ + " is inside the kcopyfs mount at " + mountpoint_ + ": serving it would deadlock");
  // The image outside the mount is fine.
  EXPECT_TRUE(check_device_path(dir_.file("image")).ok());
}

TEST_F(DeviceCheckOnMount, LoopDeviceOverAFileInsideTheMountIsRefused) {
  if (!kcopyfs::test::running_as_root()) GTEST_SKIP() << "loop devices need root";
  kcopyfs::test::LoopDevice loop(volume_);
  auto status = check_device_path(loop.path());
  ASSERT_FALSE(status.ok());
  EXPECT_TRUE(contains(status.error().message(), loop.path())) << status.error().message();
  EXPECT_TRUE(contains(status.error().message(), "inside the kcopyfs mount at " + mountpoint_))
      << status.error().message();
}

TEST(DeviceCheck, RegularFileIsAccepted) {
  TempDir dir;
  kcopyfs::test::make_sparse_file(dir.file("image"), 1 << 20);
  auto status = check_device_path(dir.file("image"));
  EXPECT_TRUE(status.ok()) << status.error().message();
}

TEST(DeviceCheck, DirectoryAndCharacterDeviceAreRefused) {
  TempDir dir;
  auto status = check_device_path(dir.path());
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().message(), dir.path().string() + " is neither a regular file nor a block device");
  auto null = check_device_path("/dev/null");
  ASSERT_FALSE(null.ok());
  EXPECT_EQ(null.error().message(), "/dev/null is neither a regular file nor a block device");
}

TEST(DeviceCheck, MissingPathIsRefused) {
  TempDir dir;
  const std::string missing = dir.file("missing");
  auto status = check_device_path(missing);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().errno_value(), ENOENT);
  EXPECT_TRUE(contains(status.error().message(), missing)) << status.error().message();
  EXPECT_TRUE(contains(status.error().message(), std::strerror(ENOENT))) << status.error().message();
}

TEST(DeviceCheck, LoopDeviceOverANormalFileIsAccepted) {
  if (!kcopyfs::test::running_as_root()) GTEST_SKIP() << "loop devices need root";
  TempDir dir;
  kcopyfs::test::make_sparse_file(dir.file("image"), 1 << 20);
  kcopyfs::test::LoopDevice loop(dir.file("image"));
  auto status = check_device_path(loop.path());
  EXPECT_TRUE(status.ok()) << status.error().message();
}

}  // namespace
}  // namespace kcopyfs::daemon
