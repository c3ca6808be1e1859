// Bad-input sweep over every CLI verb (docs/reliability.md, Bad input): malformed sizes, bad names (with
// "..", "/", a NUL through the control protocol, 300 bytes), missing, duplicated and aliased devices (hard
// links, symlinks, paths inside the mount) and devices of a wrong size. Every refusal must be a non-zero exit
// with exactly one stderr line starting "kcopyfs: " (interface.md, Errors) and change nothing: the mount's
// `status --json`, its volume table and the bytes of every device stay as they were.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "fs/daemon/control_client.h"
#include "tests/support/test_support.h"
#include "tests/tools/mount_fixture.h"

namespace kcopyfs {
namespace {

using nlohmann::json;
using test::checksum;
using test::CommandResult;
using test::KcopyfsMount;
using test::path_exists;
using test::read_all;

constexpr uint64_t kMiB = 1024 * 1024;
constexpr uint64_t kImage = 4 * kMiB;

// The malformed SIZE arguments every size option is given.
const std::vector<std::string> kBadSizes = {"", "-1", "1.5G", "4Q", "99999999999T", "0"};

// A mount with an origin "data" (data.img), a snapshot "s1" (default COW) and a mirror "m0" (l0, l1), and a
// spare image no target uses. check() asserts a refusal and that nothing changed since construction.
class BadInput : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!test::running_as_root()) GTEST_SKIP() << "needs root (FUSE)";
    ASSERT_TRUE(m.mount_result().ok()) << m.mount_result();
    image = make_image("data.img", 60);
    l0 = make_image("l0.img", 61);
    l1 = make_image("l1.img", 62);
    spare = make_image("spare.img", 63);
    spare2 = make_image("spare2.img", 64);
    ASSERT_TRUE(m.origin_add("data", image).ok());
    ASSERT_TRUE(m.snapshot_create("data", "s1").ok());
    ASSERT_TRUE(m.mirror_create("m0", {l0, l1}, {"--nosync"}).ok());
    snapshot_state();
  }

  // How many bad inputs the test tried (docs/reliability.md reports the totals).
  void TearDown() override {
    if (checks > 0) std::cout << "[ bad input] " << checks << " bad inputs checked" << std::endl;
  }

  std::string make_image(const std::string& name, uint64_t seed, uint64_t size = kImage) {
    const std::string path = m.file(name);
    test::write_pattern_file(path, size, seed);
    return path;
  }

  // Records what must not change: status, table, the checksums of the devices and of `extra`.
  void snapshot_state(const std::vector<std::string>& extra = {}) {
    extra_files = extra;
    files = {image, l0, l1, spare, spare2, m.state_dir() + "/s1.cow", m.state_dir() + "/m0.log"};
    files.insert(files.end(), extra.begin(), extra.end());
    status = m.status_json();
    table = read_all(m.table_path());
    sums.clear();
    for (const auto& f : files) sums.push_back(path_exists(f) ? checksum(f) : 0);
    state_entries = entries(m.state_dir());
  }

  // The names in a directory, sorted (a refused command must not leave a file behind).
  static std::vector<std::string> entries(const std::string& dir) {
    std::vector<std::string> out;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(dir, ec)) out.push_back(e.path().filename());
    std::sort(out.begin(), out.end());
    return out;
  }

  void unchanged(const std::string& what) const {
    SCOPED_TRACE(what);
    EXPECT_EQ(m.status_json(), status) << "status changed by a refused command";
    EXPECT_EQ(read_all(m.table_path()), table) << "volume table changed by a refused command";
    for (size_t i = 0; i < files.size(); ++i)
      EXPECT_EQ(path_exists(files[i]) ? checksum(files[i]) : 0, sums[i]) << files[i] << " changed";
    EXPECT_EQ(entries(m.state_dir()), state_entries) << "the state directory changed";
  }

  // r must be a clean refusal that changed nothing. A command that was not refused is a failure; what it
  // made is removed (a target "new") and the state recorded again, so the checks after it still mean
  // something.
  void check(const CommandResult& r, const std::string& what) {
    ++checks;
    EXPECT_TRUE(refused(r)) << what;
    unchanged(what);
    if (r.ok()) {
      (void)m.remove("new");
      snapshot_state(extra_files);
    }
  }

  // A raw control request: must be answered {"ok": false, "error": "..."} and change nothing.
  void check_request(const json& request, const std::string& what) {
    SCOPED_TRACE(what);
    ++checks;
    auto reply = daemon::call_daemon(m.state_dir(), request, std::chrono::seconds(60));
    ASSERT_TRUE(reply) << reply.error().message();
    EXPECT_TRUE(reply.value().is_object() && reply.value().value("ok", true) == false &&
                reply.value().contains("error") && reply.value()["error"].is_string() &&
                !reply.value()["error"].get<std::string>().empty())
        << "not refused: " << reply.value().dump(-1, ' ', false, json::error_handler_t::replace);
    unchanged(what);
  }

  KcopyfsMount m;
  std::string image, l0, l1, spare, spare2;
  std::vector<std::string> extra_files;
  std::vector<std::string> files;
  json status;
  std::string table;
  std::vector<uint64_t> sums;
  std::vector<std::string> state_entries;
  int checks = 0;
};

// ---------------------------------------------------------------------------------------------------------
// Malformed sizes

TEST_F(BadInput, MalformedSizes) {
  const std::string out = make_image("copy-out.img", 65);
  snapshot_state({out});
  for (const std::string& bad : kBadSizes) {
    const std::string q = "'" + bad + "'";
    check(m.snapshot_create("data", "new", {"--chunk-size", bad}), "snapshot create --chunk-size " + q);
    check(m.snapshot_create("data", "new", {"--cow-size", bad}), "snapshot create --cow-size " + q);
    check(m.mirror_create("new", {spare, spare2}, {"--region-size", bad}),
          "mirror create --region-size " + q);
    check(m.verb({"mirror", "throttle"}, {"m0", "--percent", bad}), "mirror throttle --percent " + q);
    // --rate 0 is "no cap" (interface of mirror throttle), a valid value.
    if (bad != "0")
      check(m.verb({"mirror", "throttle"}, {"m0", "--rate", bad}), "mirror throttle --rate " + q);
    check(m.run({"copy", "--rate", bad, spare, out}), "copy --rate " + q);
    check(m.run({"copy", "--throttle", bad, spare, out}), "copy --throttle " + q);
    // OFFSET 0 and LENGTH 0 are sizes; a suffix not starting with a digit ("-1", "") is part of the path
    // by design (interface.md: "./a:b" works), so only SOURCE is sure to be refused then (no such file).
    if (bad != "0" && !bad.empty()) check(m.run({"copy", spare + ":" + bad, out}), "copy SOURCE:" + bad);
    if (bad != "0" && !bad.empty() && bad != "-1") {
      check(m.run({"copy", spare, out + ":0:" + bad}), "copy DEST:0:" + bad);
    }
  }
  // Sizes that parse but break a rule.
  for (const char* size : {"3K", "1K", "1M", "4097"})
    check(m.snapshot_create("data", "new", {"--chunk-size", size}), std::string("--chunk-size ") + size);
  for (const char* size : {"3K", "256", "1G"})
    check(m.mirror_create("new", {spare, spare2}, {"--region-size", size}),
          std::string("--region-size ") + size);
  check(m.verb({"mirror", "throttle"}, {"m0", "--percent", "101"}), "--percent 101");
  check(m.run({"copy", spare + ":100", out}), "copy at an offset not a multiple of 512");
  check(m.run({"copy", spare + ":0:1000", out}), "copy of a length not a multiple of 512");
}

// ---------------------------------------------------------------------------------------------------------
// Names

TEST_F(BadInput, NamesWithDotsSlashesAndLength) {
  const std::vector<std::string> names = {"..",
                                          ".",
                                          "../x",
                                          "a/b",
                                          "/abs",
                                          "a/../b",
                                          std::string(300, 'n'),
                                          std::string(300, '.'),
                                          std::string("x/").append(298, 'y')};
  for (const std::string& name : names) {
    std::string q = "'";
    q.append(name, 0, 20).append(name.size() > 20 ? "...'" : "'");
    check(m.origin_add(name, spare), "origin add " + q);
    check(m.snapshot_create("data", name), "snapshot create NAME " + q);
    check(m.snapshot_create(name, "new"), "snapshot create ORIGIN " + q);
    check(m.snapshot_attach("data", name, spare), "snapshot attach NAME " + q);
    check(m.snapshot_attach(name, "new", spare), "snapshot attach ORIGIN " + q);
    check(m.verb({"snapshot", "merge"}, {name}), "snapshot merge " + q);
    check(m.mirror_create(name, {spare, spare2}), "mirror create " + q);
    check(m.verb({"mirror", "resync"}, {name}), "mirror resync " + q);
    check(m.verb({"mirror", "replace"}, {name, l0, spare}), "mirror replace " + q);
    check(m.verb({"mirror", "throttle"}, {name, "--percent", "50"}), "mirror throttle " + q);
    check(m.remove(name), "remove " + q);
    check(m.verb({"status"}, {name}), "status " + q);
  }
  // Nothing was made from a name: no COW or log file in the state directory, nothing outside it.
  EXPECT_FALSE(path_exists(m.file("x.cow")));
  EXPECT_FALSE(path_exists(m.file("b.cow")));
  EXPECT_FALSE(path_exists("/abs.cow"));
}

// A NUL cannot pass through argv: the control protocol carries it (JSON "\u0000").
TEST_F(BadInput, NamesWithANulThroughTheControlSocket) {
  const std::string nul_name = std::string("new\0x", 5);
  const std::string nul_path = spare + std::string("\0.img", 5);
  check_request({{"op", "origin_add"}, {"name", nul_name}, {"device", spare}}, "origin_add NAME with NUL");
  check_request({{"op", "origin_add"}, {"name", "new"}, {"device", nul_path}}, "origin_add DEVICE with NUL");
  check_request({{"op", "snapshot_create"},
                 {"origin", "data"},
                 {"name", nul_name},
                 {"chunk_size", 4096},
                 {"transient", false},
                 {"writable", false}},
                "snapshot_create NAME with NUL");
  check_request({{"op", "snapshot_create"},
                 {"origin", std::string("data\0", 5)},
                 {"name", "new"},
                 {"chunk_size", 4096}},
                "snapshot_create ORIGIN with NUL");
  check_request({{"op", "snapshot_create"},
                 {"origin", "data"},
                 {"name", "new"},
                 {"chunk_size", 4096},
                 {"cow", nul_path}},
                "snapshot_create COW with NUL");
  check_request({{"op", "snapshot_attach"}, {"origin", "data"}, {"name", nul_name}, {"cow", spare}},
                "snapshot_attach NAME with NUL");
  check_request({{"op", "snapshot_merge"}, {"name", std::string("s1\0", 3)}}, "snapshot_merge s1 NUL");
  check_request({{"op", "mirror_create"},
                 {"name", nul_name},
                 {"legs", {spare, spare2}},
                 {"region_size", 524288},
                 {"log", "disk"}},
                "mirror_create NAME with NUL");
  check_request({{"op", "mirror_create"},
                 {"name", "new"},
                 {"legs", {spare, nul_path}},
                 {"region_size", 524288},
                 {"log", "disk"}},
                "mirror_create leg with NUL");
  check_request({{"op", "mirror_create"},
                 {"name", "new"},
                 {"legs", {spare, spare2}},
                 {"region_size", 524288},
                 {"log", std::string("core\0", 5)}},
                "mirror_create log with NUL");
  check_request({{"op", "mirror_resync"}, {"name", std::string("m0\0", 3)}}, "mirror_resync m0 NUL");
  check_request({{"op", "mirror_replace"}, {"name", "m0"}, {"old", l0}, {"new", nul_path}},
                "mirror_replace new with NUL");
  check_request(
      {{"op", "mirror_replace"}, {"name", "m0"}, {"old", l0 + std::string("\0", 1)}, {"new", spare}},
      "mirror_replace old with NUL");
  check_request(
      {{"op", "mirror_throttle"}, {"name", std::string("m0\0", 3)}, {"percent", 50}, {"bytes_per_second", 0}},
      "mirror_throttle m0 NUL");
  check_request({{"op", "remove"}, {"name", std::string("s1\0", 3)}}, "remove s1 NUL");
  check_request({{"op", "remove"}, {"name", std::string(300, 'n')}}, "remove of a 300-byte name");
  // And malformed requests of the right shape.
  check_request({{"op", "snapshot_create"}, {"origin", "data"}, {"name", "new"}, {"chunk_size", -4096}},
                "negative chunk_size");
  check_request({{"op", "snapshot_create"}, {"origin", "data"}, {"name", "new"}, {"chunk_size", 4096.5}},
                "fractional chunk_size");
  check_request({{"op", "snapshot_create"}, {"origin", "data"}, {"name", "new"}, {"chunk_size", 0}},
                "chunk_size 0");
  check_request({{"op", "origin_add"}, {"name", "new"}, {"device", "relative.img"}}, "relative device path");
}

// The CLI checks --region-size before it asks the daemon; a raw request must be refused by the daemon too.
TEST_F(BadInput, ZeroRegionSizeThroughTheControlSocket) {
  for (const char* log : {"core", "disk"}) {
    for (uint64_t region_size : {uint64_t{0}, uint64_t{256}, uint64_t{3 * 1024}}) {
      check_request({{"op", "mirror_create"},
                     {"name", "new"},
                     {"legs", {spare, spare2}},
                     {"region_size", region_size},
                     {"log", log}},
                    std::string("region_size ") + std::to_string(region_size) + ", log " + log);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Devices

TEST_F(BadInput, MissingDevices) {
  const std::string absent = m.file("absent.img");
  check(m.origin_add("new", absent), "origin add of a missing file");
  check(m.snapshot_create("data", "new", {"--cow", absent}), "snapshot create --cow missing");
  check(m.snapshot_attach("data", "new", absent), "snapshot attach --cow missing");
  check(m.mirror_create("new", {spare, absent}), "mirror create with a missing leg");
  check(m.mirror_create("new", {absent, spare}), "mirror create with a missing leg 0");
  check(m.verb({"mirror", "replace"}, {"m0", l0, absent}), "mirror replace with a missing NEW");
  check(m.verb({"mirror", "replace"}, {"m0", absent, spare}), "mirror replace of a missing OLD");
  check(m.origin_add("new", m.file("nodir/x.img")), "origin add under a missing directory");
  check(m.origin_add("new", m.file("")), "origin add of a directory");
  check(m.run({"copy", absent, spare}), "copy from a missing file");
  EXPECT_FALSE(path_exists(absent));
}

TEST_F(BadInput, DuplicatedDevices) {
  check(m.mirror_create("new", {spare, spare}), "the same leg twice");
  check(m.mirror_create("new", {spare, spare2, spare}), "the same leg twice, not adjacent");
  check(m.snapshot_create("data", "new", {"--cow", image}), "the origin's device as its COW");
  check(m.snapshot_attach("data", "new", image), "the origin's device attached as a COW");
  check(m.snapshot_create("data", "new", {"--cow", m.state_dir() + "/s1.cow"}), "s1's COW again");
  check(m.snapshot_attach("data", "new", m.state_dir() + "/s1.cow"), "s1's COW attached again");
  check(m.origin_add("new", image), "the origin's device as another origin");
  check(m.origin_add("new", l0), "a leg as an origin");
  check(m.origin_add("new", m.state_dir() + "/s1.cow"), "a COW as an origin");
  check(m.origin_add("new", m.state_dir() + "/m0.log"), "a mirror log as an origin");
  check(m.mirror_create("new", {spare, l1}), "a leg of m0 as a leg");
  check(m.mirror_create("new", {spare, image}), "the origin's device as a leg");
  check(m.verb({"mirror", "replace"}, {"m0", l0, l1}), "replace a leg by the other leg");
  check(m.verb({"mirror", "replace"}, {"m0", l0, l0}), "replace a leg by itself");
  check(m.verb({"mirror", "replace"}, {"m0", l0, image}), "replace a leg by the origin's device");
  check(m.snapshot_create("data", "new", {"--cow", l0}), "a leg as a COW");
  check(m.run({"copy", spare, spare}), "copy onto its own source");
  check(m.run({"copy", spare, spare2, spare2}), "copy to the same destination twice");
}

TEST_F(BadInput, AliasedDevices) {
  const std::string hard = m.file("data-hardlink.img");
  ASSERT_EQ(::link(image.c_str(), hard.c_str()), 0);
  const std::string soft = m.file("spare-symlink.img");
  ASSERT_EQ(::symlink(spare.c_str(), soft.c_str()), 0);
  const std::string soft_l0 = m.file("l0-symlink.img");
  ASSERT_EQ(::symlink(l0.c_str(), soft_l0.c_str()), 0);
  const std::string dotted = m.file("sub/../spare.img");
  ASSERT_EQ(::mkdir(m.file("sub").c_str(), 0755), 0);
  snapshot_state();

  check(m.origin_add("new", hard), "a hard link to the origin's device as an origin");
  check(m.snapshot_create("data", "new", {"--cow", hard}), "a hard link to the origin's device as COW");
  check(m.mirror_create("new", {spare, hard}), "a hard link to the origin's device as a leg");
  check(m.mirror_create("new", {spare, soft}), "a leg and a symlink to it");
  check(m.mirror_create("new", {soft, dotted}), "a symlink and a ../ path to one leg");
  check(m.mirror_create("new", {spare, soft_l0}), "a symlink to a leg of m0");
  check(m.origin_add("new", soft_l0), "a symlink to a leg of m0 as an origin");
  check(m.verb({"mirror", "replace"}, {"m0", l0, soft_l0}), "replace a leg by a symlink to itself");
  check(m.snapshot_create("data", "new", {"--cow", soft_l0}), "a symlink to a leg as COW");

  // Paths inside the mount: the views, and the mount's directories.
  const auto timeout = std::chrono::seconds(30);
  check(m.verb({"origin", "add"}, {"new", m.origin_view("data")}, timeout), "an origin view as an origin");
  check(m.verb({"origin", "add"}, {"new", m.snapshot_view("s1")}, timeout), "a snapshot view as an origin");
  check(m.verb({"snapshot", "create"}, {"data", "new", "--cow", m.origin_view("data")}, timeout),
        "the origin's view as its COW");
  check(m.verb({"snapshot", "attach"}, {"data", "new", "--cow", m.mirror_view("m0")}, timeout),
        "a mirror view attached as COW");
  check(m.verb({"mirror", "create"}, {"new", spare, m.mirror_view("m0")}, timeout), "a mirror view as a leg");
  check(m.verb({"mirror", "create"}, {"new", m.origin_view("data"), spare}, timeout),
        "an origin view as leg 0");
  check(m.verb({"mirror", "replace"}, {"m0", l1, m.mirror_view("m0")}, timeout), "m0's own view as its leg");
  check(m.verb({"origin", "add"}, {"new", m.mnt() + "/origins"}, timeout), "a directory of the mount");
  check(m.verb({"origin", "add"}, {"new", m.mnt() + "/origins/../origins/data"}, timeout),
        "a ../ path to a view");
}

TEST_F(BadInput, WrongDeviceSizes) {
  const std::string odd = make_image("odd.img", 66, kImage + 100);
  const std::string tiny = make_image("tiny.img", 67, 100);
  const std::string empty = m.file("empty.img");
  test::make_sparse_file(empty, 0);
  snapshot_state({odd, tiny, empty});
  for (const std::string& dev : {odd, tiny, empty}) {
    const std::string what = dev.substr(dev.rfind('/') + 1);
    check(m.origin_add("new", dev), "origin add " + what);
    check(m.snapshot_create("data", "new", {"--cow", dev}), "snapshot create --cow " + what);
    check(m.snapshot_attach("data", "new", dev), "snapshot attach --cow " + what);
    check(m.mirror_create("new", {spare, dev}), "mirror create with leg " + what);
    check(m.mirror_create("new", {dev, spare}), "mirror create with leg 0 " + what);
    check(m.verb({"mirror", "replace"}, {"m0", l0, dev}), "mirror replace with " + what);
  }
  // A new leg smaller than the mirror.
  const std::string small = make_image("small.img", 68, kImage / 2);
  snapshot_state({small});
  check(m.verb({"mirror", "replace"}, {"m0", l0, small}), "mirror replace with a smaller leg");
  // --cow-size that cannot hold a store (header, one area and one data chunk).
  check(m.snapshot_create("data", "new", {"--cow-size", "4K"}), "--cow-size 4K");
  check(m.snapshot_create("data", "new", {"--cow-size", "1000"}), "--cow-size 1000");
}

// The verbs that take no device: bad MOUNTPOINTs and extra words.
TEST_F(BadInput, MountpointsAndWords) {
  const std::string file = spare;
  for (const std::string& mp : {file, m.file("absent-dir"), std::string(""), m.origin_view("data")}) {
    check(m.run({"status", mp}), "status of '" + mp + "'");
    check(m.run({"umount", mp}), "umount of '" + mp + "'");
    check(m.run({"remove", mp, "s1"}), "remove through '" + mp + "'");
  }
  check(m.verb({"status"}, {"s1", "m0"}), "status with two names");
  check(m.verb({"remove"}, {}), "remove without a name");
  check(m.verb({"remove"}, {"s1", "m0"}), "remove with two names");
  check(m.verb({"origin", "add"}, {"new"}), "origin add without a device");
  check(m.verb({"origin", "add"}, {"new", spare, spare2}), "origin add with two devices");
  check(m.verb({"mirror", "create"}, {"new", spare}), "mirror create with one leg");
  check(m.verb({"snapshot", "attach"}, {"data", "new"}), "snapshot attach without --cow");
  check(m.verb({"snapshot", "create"}, {"data", "new", "--bogus"}), "an unknown option");
  check(m.verb({"mirror", "create"}, {"new", spare, spare2, "--log", "nvram"}), "an unknown log type");
  check(m.run({"mount", "--state", m.state_dir(), m.file("absent-dir")}), "mount on a missing directory");
  check(m.run({"mount", "--state", m.state_dir(), spare}), "mount on a file");
}

}  // namespace
}  // namespace kcopyfs
