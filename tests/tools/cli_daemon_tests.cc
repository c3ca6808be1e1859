// End-to-end tests of the daemon and its verbs (interface.md, "The daemon and the mount", "Targets",
// "Errors"): the built kcopyfs binary is run as a user would, on image files and loop devices, and every
// result is checked against reference bytes.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/unique_fd.h"
#include "tests/support/test_support.h"
#include "tests/tools/mount_fixture.h"

namespace kcopyfs {
namespace {

using nlohmann::json;
using test::checksum;
using test::CommandResult;
using test::file_size;
using test::KcopyfsMount;
using test::path_exists;
using test::read_all;
using test::wait_until;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * 1024;
constexpr uint64_t kImage = 4 * kMiB;
constexpr auto kWait = std::chrono::seconds(60);

#define REQUIRE_ROOT()                                                 \
  do {                                                                 \
    if (!test::running_as_root()) GTEST_SKIP() << "needs root (FUSE)"; \
  } while (0)

// A fresh mount that must be up, or the test stops.
#define MOUNT_OK(m)                                       \
  KcopyfsMount m;                                         \
  ASSERT_TRUE(m.mount_result().ok()) << m.mount_result(); \
  ASSERT_TRUE(m.mounted()) << m.mnt() << " is not a fuse.kcopyfs mount"

#define RUN_OK(expr)                 \
  do {                               \
    const CommandResult r_ = (expr); \
    ASSERT_TRUE(r_.ok()) << r_;      \
  } while (0)

std::string pattern_string(uint64_t seed, uint64_t offset, uint64_t length) {
  const auto bytes = test::pattern(seed, offset, length);
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

// An image of kImage (or size) bytes of pattern(seed).
std::string make_image(const KcopyfsMount& m, const std::string& name, uint64_t seed,
                       uint64_t size = kImage) {
  const std::string path = m.file(name);
  test::write_pattern_file(path, size, seed);
  return path;
}

std::string make_sparse(const KcopyfsMount& m, const std::string& name, uint64_t size) {
  const std::string path = m.file(name);
  test::make_sparse_file(path, size);
  return path;
}

// Writes data at offset through a view (or any file) and fsyncs it.
void write_at(const std::string& path, uint64_t offset, const std::string& data) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  ASSERT_TRUE(fd.valid()) << "open " << path << ": " << std::strerror(errno);
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n =
        ::pwrite(fd.get(), data.data() + done, data.size() - done, static_cast<off_t>(offset + done));
    ASSERT_GT(n, 0) << "pwrite " << path << ": " << std::strerror(errno);
    done += static_cast<size_t>(n);
  }
  ASSERT_EQ(::fsync(fd.get()), 0) << "fsync " << path << ": " << std::strerror(errno);
}

// The whole content of path, read with pread (the views are regular files of the volume's size).
std::string contents(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    ADD_FAILURE() << "open " << path << ": " << std::strerror(errno);
    return {};
  }
  std::string data;
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::pread(fd.get(), buf, sizeof buf, static_cast<off_t>(data.size()));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      ADD_FAILURE() << "read " << path << " at " << data.size() << ": " << std::strerror(errno);
      return data;
    }
    if (n == 0) return data;
    data.append(buf, static_cast<size_t>(n));
  }
}

// Compares without printing megabytes: the first differing offset.
::testing::AssertionResult same_bytes(const std::string& actual, const std::string& expected) {
  if (actual == expected) return ::testing::AssertionSuccess();
  if (actual.size() != expected.size())
    return ::testing::AssertionFailure() << "size " << actual.size() << ", expected " << expected.size();
  size_t i = 0;
  while (actual[i] == expected[i]) ++i;
  return ::testing::AssertionFailure() << "bytes differ from offset " << i << " (of " << actual.size() << ")";
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

std::set<std::string> target_names(const json& status) {
  std::set<std::string> names;
  if (status.is_object() && status.contains("targets"))
    for (const auto& t : status["targets"]) names.insert(t.value("name", ""));
  return names;
}

// What a refused command must leave as it was: the mount's status and the bytes of the given files.
class Unchanged {
 public:
  Unchanged(const KcopyfsMount& m, std::vector<std::string> files) : m_(m), files_(std::move(files)) {
    status_ = m_.status_json();
    for (const auto& f : files_) sums_.push_back(path_exists(f) ? checksum(f) : 0);
    table_ = read_all(m_.table_path());
  }
  // Checks that r was refused and nothing changed.
  void check(const CommandResult& r, const std::string& what) const {
    SCOPED_TRACE(what);
    EXPECT_TRUE(refused(r));
    EXPECT_EQ(m_.status_json(), status_) << "status changed by a refused command";
    EXPECT_EQ(read_all(m_.table_path()), table_) << "volume table changed by a refused command";
    for (size_t i = 0; i < files_.size(); ++i) {
      EXPECT_EQ(path_exists(files_[i]) ? checksum(files_[i]) : 0, sums_[i])
          << files_[i] << " changed by a refused command";
    }
  }

 private:
  const KcopyfsMount& m_;
  std::vector<std::string> files_;
  json status_;
  std::vector<uint64_t> sums_;
  std::string table_;
};

// Whether nobody holds the file at path (an existing one).
bool can_lock_exclusively(const std::string& path) {
  return test::path_exists(path) && !test::file_locked(path);
}

// A snapshot's dmsetup status: "allocated/total metadata", three decimal numbers (std::regex trips GCC 12's
// -Wmaybe-uninitialized under ASan).
bool snapshot_dm_status(const std::string& s) {
  size_t i = 0;
  auto number = [&] {
    const size_t start = i;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
    return i > start;
  };
  auto literal = [&](char c) { return i < s.size() && s[i++] == c; };
  return number() && literal('/') && number() && literal(' ') && number() && i == s.size();
}

// ---------------------------------------------------------------------------------------------------------
// Origins

TEST(Origin, ViewShowsTheDeviceAndWritesLandOnIt) {
  REQUIRE_ROOT();
  MOUNT_OK(m);
  const std::string image = make_image(m, "data.img", 1);
  RUN_OK(m.origin_add("data", image));

  const std::string view = m.origin_view("data");
  ASSERT_TRUE(path_exists(view));
  EXPECT_EQ(file_size(view), kImage);
  std::string expected = pattern_string(1, 0, kImage);
  EXPECT_TRUE(same_bytes(contents(view), expected));

  const json t = m.target("data");
  ASSERT_TRUE(t.is_object()) << m.status_json().dump();
  EXPECT_EQ(t.value("type", ""), "origin");
  EXPECT_EQ(t.value("device", ""), image);
  EXPECT_EQ(t.value("size", uint64_t{0}), kImage);
  EXPECT_EQ(t.value("state", ""), "active");
  EXPECT_TRUE(t.contains("dm_status"));

  // Aligned and unaligned writes.
  const std::string a = pattern_string(7, 0, 256 * kKiB);
  const std::string b = pattern_string(8, 0, 1000);
  write_at(view, kMiB, a);
  write_at(view, 3 * kMiB + 123, b);
  expected.replace(kMiB, a.size(), a);
  expected.replace(3 * kMiB + 123, b.size(), b);
  EXPECT_TRUE(same_bytes(contents(view), expected));

  RUN_OK(m.umount());
  EXPECT_TRUE(same_bytes(read_all(image), expected)) << "the image after umount";
}

// --io-poll and --write-back reach the daemon: its log names the polling it got, and views work either way.
TEST(Origin, PollingAndWriteBackOptionsReachTheDaemon) {
  REQUIRE_ROOT();
  KcopyfsMount m(false);
  for (const std::vector<std::string>& extra :
       {std::vector<std::string>{"--io-poll", "0", "--write-back", "0"}, std::vector<std::string>{}}) {
    const bool defaults = extra.empty();
    SCOPED_TRACE(defaults ? "defaults" : "--io-poll 0 --write-back 0");
    const auto r = m.mount(extra);
    ASSERT_TRUE(r.ok()) << r;
    const std::string log = read_all(m.state_dir() + "/kcopyfs.log");
    const std::string said = defaults ? "I/O submission polling: 2 ms)" : "I/O submission polling: off)";
    EXPECT_NE(log.rfind(said), std::string::npos) << log;
    if (!defaults) {
      RUN_OK(m.origin_add("data", make_image(m, "data.img", 3)));
      RUN_OK(m.snapshot_create("data", "s"));
    }
    // A first write under copy-on-write, read back through the origin; the snapshot keeps the old data.
    const std::string d = pattern_string(defaults ? 11 : 10, 0, 64 * kKiB);
    write_at(m.origin_view("data"), 2 * kMiB, d);
    EXPECT_TRUE(same_bytes(contents(m.origin_view("data")).substr(2 * kMiB, d.size()), d));
    EXPECT_TRUE(same_bytes(contents(m.snapshot_view("s")), pattern_string(3, 0, kImage)));
    RUN_OK(m.umount());
  }
}

TEST(Origin, BlockDeviceIsReleasedAtUmount) {
  REQUIRE_ROOT();
  KcopyfsMount m(false);
  const std::string image = make_image(m, "data.img", 2);
  test::LoopDevice loop(image);
  RUN_OK(m.mount());
  RUN_OK(m.origin_add("data", loop.path()));
  EXPECT_EQ(file_size(m.origin_view("data")), kImage);
  // Held exclusively while the mount runs.
  EXPECT_LT(::open(loop.path().c_str(), O_RDONLY | O_EXCL | O_CLOEXEC), 0);
  const std::string data = pattern_string(9, 0, 64 * kKiB);
  write_at(m.origin_view("data"), 512 * kKiB, data);
  RUN_OK(m.umount());
  UniqueFd fd(::open(loop.path().c_str(), O_RDONLY | O_EXCL | O_CLOEXEC));
  EXPECT_TRUE(fd.valid()) << "the loop device is still held after umount: " << std::strerror(errno);
  fd.reset();
  EXPECT_TRUE(same_bytes(read_all(image).substr(512 * kKiB, data.size()), data));
}

// ---------------------------------------------------------------------------------------------------------
// Snapshots

TEST(Snapshot, DefaultCowKeepsThePointInTime) {
  REQUIRE_ROOT();
  MOUNT_OK(m);
  const std::string image = make_image(m, "data.img", 3);
  RUN_OK(m.origin_add("data", image));
  const std::string old_data = pattern_string(3, 0, kImage);
  RUN_OK(m.snapshot_create("data", "s1"));
  EXPECT_TRUE(path_exists(m.state_dir() + "/s1.cow"));
  EXPECT_EQ(file_size(m.snapshot_view("s1")), kImage);
  EXPECT_TRUE(same_bytes(contents(m.snapshot_view("s1")), old_data));

  // Overwrite the origin entirely, then a part again.
  std::string new_data = pattern_string(30, 0, kImage);
  write_at(m.origin_view("data"), 0, new_data);
  const std::string patch = pattern_string(31, 0, 12345);
  write_at(m.origin_view("data"), 2 * kMiB + 17, patch);
  new_data.replace(2 * kMiB + 17, patch.size(), patch);
  EXPECT_TRUE(same_bytes(contents(m.origin_view("data")), new_data));
  EXPECT_TRUE(same_bytes(contents(m.snapshot_view("s1")), old_data));

  // A read-only snapshot refuses writes.
  EXPECT_LT(::open(m.snapshot_view("s1").c_str(), O_WRONLY | O_CLOEXEC), 0);

  const json s = m.target("s1");
  ASSERT_TRUE(s.is_object());
  EXPECT_EQ(s.value("type", ""), "snapshot");
  EXPECT_EQ(s.value("origin", ""), "data");
  EXPECT_EQ(s.value("cow", ""), m.state_dir() + "/s1.cow");
  EXPECT_EQ(s.value("chunk_size", 0), 4096);
  EXPECT_EQ(s.value("persistent", false), true);
  EXPECT_EQ(s.value("writable", true), false);
  EXPECT_EQ(s.value("state", ""), "active");
  EXPECT_TRUE(snapshot_dm_status(s.value("dm_status", ""))) << s.dump();
  const json o = m.target("data");
  ASSERT_TRUE(o.is_object());
  EXPECT_EQ(o.value("snapshots", json::array()), json::array({"s1"}));

  // The text status: one line per target, starting with its name.
  const CommandResult text = m.verb({"status"});
  ASSERT_TRUE(text.ok()) << text;
  for (const std::string name : {"data", "s1"}) {
    int n = 0;
    for (const auto& line : lines_of(text.out)) {
      std::istringstream words(line);
      std::string first;
      words >> first;
      if (first == name) ++n;
    }
    EXPECT_EQ(n, 1) << name << " in\n" << text.out;
  }
  const CommandResult one = m.verb({"status"}, {"s1"});
  ASSERT_TRUE(one.ok()) << one;
  EXPECT_NE(one.out.find("s1"), std::string::npos);
  EXPECT_EQ(one.out.find("data "), std::string::npos) << one.out;
}

TEST(Snapshot, CowFileChunkSizesTransientAndWritable) {
  REQUIRE_ROOT();
  MOUNT_OK(m);
  const std::string image = make_image(m, "data.img", 4);
  const std::string old_data = pattern_string(4, 0, kImage);
  const std::string cow = make_sparse(m, "s8.cow", 8 * kMiB);
  RUN_OK(m.origin_add("data", image));
  RUN_OK(m.snapshot_create("data", "s8", {"--cow", cow, "--chunk-size", "8K"}));
  RUN_OK(m.snapshot_create("data", "s64", {"--chunk-size", "64K"}));
  RUN_OK(m.snapshot_create("data", "tr", {"--transient"}));
  RUN_OK(m.snapshot_create("data", "rw", {"--writable"}));

  const json s8 = m.target("s8");
  EXPECT_EQ(s8.value("cow", ""), cow);
  EXPECT_EQ(s8.value("chunk_size", 0), 8192);
  EXPECT_FALSE(path_exists(m.state_dir() + "/s8.cow"));
  const json s64 = m.target("s64");
  EXPECT_EQ(s64.value("chunk_size", 0), 65536);
  const json tr = m.target("tr");
  EXPECT_EQ(tr.value("persistent", true), false);
  const json rw = m.target("rw");
  EXPECT_EQ(rw.value("writable", false), true);
  for (const auto& t : {s8, s64, tr, rw}) {
    EXPECT_EQ(t.value("state", ""), "active") << t.dump();
    EXPECT_TRUE(snapshot_dm_status(t.value("dm_status", ""))) << t.dump();
  }

  // Writes to the writable snapshot stay in it.
  std::string rw_data = old_data;
  const std::string mine = pattern_string(40, 0, 100 * kKiB);
  write_at(m.snapshot_view("rw"), 300 * kKiB + 5, mine);
  rw_data.replace(300 * kKiB + 5, mine.size(), mine);
  EXPECT_TRUE(same_bytes(contents(m.snapshot_view("rw")), rw_data));
  EXPECT_TRUE(same_bytes(contents(m.origin_view("data")), old_data));

  // Overwrite the origin: every snapshot keeps its content.
  const std::string new_data = pattern_string(41, 0, kImage);
  write_at(m.origin_view("data"), 0, new_data);
  EXPECT_TRUE(same_bytes(contents(m.origin_view("data")), new_data));
  for (const std::string name : {"s8", "s64", "tr"}) {
    EXPECT_TRUE(same_bytes(contents(m.snapshot_view(name)), old_data)) << name;
  }
  EXPECT_TRUE(same_bytes(contents(m.snapshot_view("rw")), rw_data));
  // The exceptions went to the named COW file.
  const json s8_after = m.target("s8");
  EXPECT_GT(s8_after.value("cow_used", uint64_t{0}), s8.value("cow_used", uint64_t{0})) << s8_after.dump();
}

TEST(Snapshot, PersistsAcrossRemountTransientIsDropped) {
  REQUIRE_ROOT();
  MOUNT_OK(m);
  const std::string image = make_image(m, "data.img", 5);
  const std::string old_data = pattern_string(5, 0, kImage);
  const std::string cow = make_sparse(m, "named.cow", 8 * kMiB);
  RUN_OK(m.origin_add("data", image));
  RUN_OK(m.snapshot_create("data", "s1"));
  RUN_OK(m.snapshot_create("data", "named", {"--cow", cow, "--chunk-size", "16K"}));
  RUN_OK(m.snapshot_create("data", "tr", {"--transient"}));
  RUN_OK(m.snapshot_create("data", "rw", {"--writable"}));
  std::string rw_data = old_data;
  const std::string mine = pattern_string(50, 0, 64 * kKiB);
  write_at(m.snapshot_view("rw"), kMiB, mine);
  rw_data.replace(kMiB, mine.size(), mine);
  std::string new_data = pattern_string(51, 0, 3 * kMiB);
  write_at(m.origin_view("data"), 512 * kKiB, new_data);
  new_data = old_data.substr(0, 512 * kKiB) + new_data + old_data.substr(512 * kKiB + 3 * kMiB);
  const std::string tr_cow = m.target("tr").value("cow", "");

  RUN_OK(m.umount());
  ASSERT_FALSE(m.mounted());
  ASSERT_TRUE(path_exists(m.table_path()));
  const std::string table = read_all(m.table_path());
  EXPECT_FALSE(table.empty());
  EXPECT_EQ(table.find('\0'), std::string::npos) << "the table is not text";
  for (const char* name : {"data", "s1", "named", "rw"})
    EXPECT_NE(table.find(name), std::string::npos) << name << " not in\n" << table;
  EXPECT_TRUE(same_bytes(read_all(image), new_data));

  RUN_OK(m.mount());
  ASSERT_TRUE(m.mounted());
  EXPECT_EQ(target_names(m.status_json()), (std::set<std::string>{"data", "s1", "named", "rw"}));
  EXPECT_FALSE(path_exists(m.snapshot_view("tr")));
  EXPECT_FALSE(path_exists(m.state_dir() + "/tr.cow"));
  if (!tr_cow.empty()) {
    EXPECT_FALSE(path_exists(tr_cow)) << "the transient snapshot's COW file is left";
  }
  EXPECT_TRUE(same_bytes(contents(m.origin_view("data")), new_data));
  EXPECT_TRUE(same_bytes(contents(m.snapshot_view("s1")), old_data));
  EXPECT_TRUE(same_bytes(contents(m.snapshot_view("named")), old_data));
  EXPECT_TRUE(same_bytes(contents(m.snapshot_view("rw")), rw_data));
  EXPECT_EQ(m.target("named").value("chunk_size", 0), 16384);
  EXPECT_EQ(m.target("rw").value("writable", false), true);
}

TEST(Snapshot, AttachAgainAfterRemove) {
  REQUIRE_ROOT();
  MOUNT_OK(m);
  const std::string image = make_image(m, "data.img", 6);
  const std::string old_data = pattern_string(6, 0, kImage);
  const std::string cow = make_sparse(m, "mine.cow", 8 * kMiB);
  RUN_OK(m.origin_add("data", image));
  RUN_OK(m.snapshot_create("data", "first", {"--cow", cow, "--chunk-size", "32K"}));
  const std::string new_data = pattern_string(60, 0, kImage);
  write_at(m.origin_view("data"), 0, new_data);
  RUN_OK(m.remove("first"));
  EXPECT_FALSE(path_exists(m.snapshot_view("first")));
  ASSERT_TRUE(path_exists(cow)) << "remove deleted a COW file the user named";

  RUN_OK(m.snapshot_attach("data", "again", cow));
  const json t = m.target("again");
  ASSERT_TRUE(t.is_object());
  EXPECT_EQ(t.value("cow", ""), cow);
  EXPECT_EQ(t.value("chunk_size", 0), 32768);
  EXPECT_EQ(t.value("persistent", false), true);
  EXPECT_EQ(t.value("state", ""), "active");
  EXPECT_TRUE(same_bytes(contents(m.snapshot_view("again")), old_data));
  EXPECT_TRUE(same_bytes(contents(m.origin_view("data")), new_data));
}

TEST(Snapshot, CreateReplacesADefaultCowLeftByACreateCutShort) {
  REQUIRE_ROOT();
  MOUNT_OK(m);
  const std::string image = make_image(m, "data.img", 8);
  RUN_OK(m.origin_add("data", image));
  // What a daemon killed between making s1.cow and saving the table leaves: a file nobody uses.
  test::write_pattern_file(m.state_dir() + "/s1.cow", 64 * 1024, 80);
  RUN_OK(m.snapshot_create("data", "s1"));
  EXPECT_EQ(m.target("s1").value("state", ""), "active");
  EXPECT_TRUE(same_bytes(contents(m.snapshot_view("s1")), pattern_string(8, 0, kImage)));
  // A file a target uses is never taken: here s2's COW, named by the user, is where s3's default would go.
  test::make_sparse_file(m.state_dir() + "/s3.cow", 8 * kMiB);
  RUN_OK(m.snapshot_create("data", "s2", {"--cow", m.state_dir() + "/s3.cow"}));
  const CommandResult refused = m.snapshot_create("data", "s3");
  EXPECT_FALSE(refused.ok()) << refused;
  EXPECT_EQ(m.target("s2").value("state", ""), "active");
  // Nor one a target uses under another name (a symlink elsewhere).
  test::make_sparse_file(m.state_dir() + "/s4.cow", 8 * kMiB);
  ASSERT_EQ(::symlink((m.state_dir() + "/s4.cow").c_str(), m.file("alias.cow").c_str()), 0);
  RUN_OK(m.snapshot_create("data", "s5", {"--cow", m.file("alias.cow")}));
  const CommandResult aliased = m.snapshot_create("data", "s4");
  EXPECT_FALSE(aliased.ok()) << aliased;
  EXPECT_EQ(m.target("s5").value("state", ""), "active");
  EXPECT_TRUE(path_exists(m.state_dir() + "/s4.cow"));
}

TEST(Snapshot, MergeWaitRollsTheOriginBack) {
  REQUIRE_ROOT();
  MOUNT_OK(m);
  const std::string image = make_image(m, "data.img", 7);
  const std::string t0 = pattern_string(7, 0, kImage);
  RUN_OK(m.origin_add("data", image));
  RUN_OK(m.snapshot_create("data", "s1"));
  std::string t1 = t0;
  const std::string x = pattern_string(70, 0, 2 * kMiB);
  write_at(m.origin_view("data"), kMiB, x);
  t1.replace(kMiB, x.size(), x);
  RUN_OK(m.snapshot_create("data", "s2"));
  std::string t2 = t1;
  const std::string y = pattern_string(71, 0, kImage / 2);
  write_at(m.origin_view("data"), 0, y);
  t2.replace(0, y.size(), y);
  EXPECT_TRUE(same_bytes(contents(m.origin_view("data")), t2));

  RUN_OK(m.verb({"snapshot", "merge"}, {"s1", "--wait"}));
  EXPECT_TRUE(same_bytes(contents(m.origin_view("data")), t0));
  const json status = m.status_json();
  EXPECT_EQ(target_names(status), (std::set<std::string>{"data", "s2"})) << status.dump();
  EXPECT_FALSE(path_exists(m.snapshot_view("s1")));
  EXPECT_FALSE(path_exists(m.state_dir() + "/s1.cow")) << "the merged snapshot's default COW file is left";
  EXPECT_TRUE(same_bytes(contents(m.snapshot_view("s2")), t1));
  EXPECT_EQ(m.target("data").value("snapshots", json::array()), json::array({"s2"}));

  RUN_OK(m.umount());
  EXPECT_TRUE(same_bytes(read_all(image), t0)) << "the image after the merge";
  RUN_OK(m.mount());
  EXPECT_TRUE(same_bytes(contents(m.snapshot_view("s2")), t1));
}

// ---------------------------------------------------------------------------------------------------------
// Mirrors

void expect_mirror_status(const json& t, const std::vector<std::string>& legs, uint64_t size,
                          uint64_t region_size, const std::string& log) {
  ASSERT_TRUE(t.is_object());
  EXPECT_EQ(t.value("type", ""), "mirror");
  EXPECT_EQ(t.value("size", uint64_t{0}), size);
  EXPECT_EQ(t.value("region_size", uint64_t{0}), region_size);
  EXPECT_EQ(t.value("log", ""), log);
  EXPECT_EQ(t.value("regions_total", uint64_t{0}), (size + region_size - 1) / region_size);
  ASSERT_TRUE(t.contains("legs") && t["legs"].is_array()) << t.dump();
  ASSERT_EQ(t["legs"].size(), legs.size()) << t.dump();
  for (size_t i = 0; i < legs.size(); ++i) {
    EXPECT_EQ(t["legs"][i].value("device", ""), legs[i]);
    EXPECT_EQ(t["legs"][i].value("health", ""), "A");
  }
  // dmsetup style: "N dev... in_sync/total 1 HEALTH log-info".
  const std::string dm = t.value("dm_status", "");
  EXPECT_EQ(dm.rfind(std::to_string(legs.size()) + " " + legs[0] + " ", 0), 0u) << dm;
}

bool in_sync(const json& t) {
  return t.is_object() && t.value("state", "") == "active" &&
         t.value("regions_in_sync", uint64_t{1}) == t.value("regions_total", uint64_t{0});
}

TEST(Mirror, TwoLegsDiskLogNosyncThenResync) {
  REQUIRE_ROOT();
  MOUNT_OK(m);
  const std::string l0 = make_image(m, "l0.img", 10);
  const std::string l1 = make_image(m, "l1.img", 11);
  const std::string leg0 = pattern_string(10, 0, kImage);
  RUN_OK(m.mirror_create("m0", {l0, l1}, {"--nosync", "--log", "disk", "--region-size", "256K"}));
  EXPECT_TRUE(path_exists(m.state_dir() + "/m0.log"));
  EXPECT_EQ(file_size(m.mirror_view("m0")), kImage);
  {
    const json t = m.target("m0");
    expect_mirror_status(t, {l0, l1}, kImage, 256 * kKiB, "disk");
    EXPECT_EQ(t.value("regions_in_sync", uint64_t{0}), kImage / (256 * kKiB)) << "--nosync: all in sync";
  }
  // --nosync copied nothing.
  EXPECT_TRUE(same_bytes(read_all(l1), pattern_string(11, 0, kImage)));

  RUN_OK(m.verb({"mirror", "resync"}, {"m0", "--wait"}));
  EXPECT_TRUE(in_sync(m.target("m0"))) << m.target("m0").dump();
  EXPECT_TRUE(same_bytes(read_all(l1), leg0)) << "leg 1 after resync --wait";
  EXPECT_TRUE(same_bytes(contents(m.mirror_view("m0")), leg0));

  std::string expected = leg0;
  const std::string w = pattern_string(12, 0, 700 * kKiB);
  write_at(m.mirror_view("m0"), 100 * kKiB + 3, w);
  expected.replace(100 * kKiB + 3, w.size(), w);
  EXPECT_TRUE(same_bytes(contents(m.mirror_view("m0")), expected));
  RUN_OK(m.umount());
  EXPECT_TRUE(same_bytes(read_all(l0), expected)) << "leg 0";
  EXPECT_TRUE(same_bytes(read_all(l1), expected)) << "leg 1";
}

TEST(Mirror, ThreeLegsCoreLogSyncsInTheBackground) {
  REQUIRE_ROOT();
  MOUNT_OK(m);
  const std::string l0 = make_image(m, "l0.img", 20);
  const std::string l1 = make_image(m, "l1.img", 21);
  // The smallest leg sets the size.
  const std::string l2 = make_image(m, "l2.img", 22, kImage + kMiB);
  const std::string leg0 = pattern_string(20, 0, kImage);
  RUN_OK(m.mirror_create("m3", {l0, l1, l2}, {"--log", "core"}));
  expect_mirror_status(m.target("m3"), {l0, l1, l2}, kImage, 512 * kKiB, "core");
  ASSERT_TRUE(m.wait_for_target("m3", in_sync, kWait)) << m.target("m3").dump();
  EXPECT_TRUE(same_bytes(contents(m.mirror_view("m3")), leg0));

  std::string expected = leg0;
  const std::string w = pattern_string(23, 0, kMiB);
  write_at(m.mirror_view("m3"), 2 * kMiB, w);
  expected.replace(2 * kMiB, w.size(), w);
  RUN_OK(m.umount());
  EXPECT_TRUE(same_bytes(read_all(l0), expected));
  EXPECT_TRUE(same_bytes(read_all(l1), expected));
  EXPECT_TRUE(same_bytes(read_all(l2).substr(0, kImage), expected));
  EXPECT_TRUE(same_bytes(read_all(l2).substr(kImage), pattern_string(22, kImage, kMiB)))
      << "the part of the larger leg beyond the mirror";
}

TEST(Mirror, ResyncWaitMakesThreeLegsIdentical) {
  REQUIRE_ROOT();
  MOUNT_OK(m);
  const std::string l0 = make_image(m, "l0.img", 24);
  const std::string l1 = make_image(m, "l1.img", 25);
  const std::string l2 = make_image(m, "l2.img", 26);
  RUN_OK(m.mirror_create("m3", {l0, l1, l2}, {"--nosync", "--log", "disk"}));
  RUN_OK(m.verb({"mirror", "resync"}, {"m3", "--wait"}));
  const std::string leg0 = pattern_string(24, 0, kImage);
  RUN_OK(m.umount());
  EXPECT_TRUE(same_bytes(read_all(l0), leg0));
  EXPECT_TRUE(same_bytes(read_all(l1), leg0));
  EXPECT_TRUE(same_bytes(read_all(l2), leg0));
}

TEST(Mirror, ReplaceLegResyncsTheNewOne) {
  REQUIRE_ROOT();
  MOUNT_OK(m);
  const std::string l0 = make_image(m, "l0.img", 30);
  const std::string l1 = make_image(m, "l1.img", 31);
  const std::string l2 = make_image(m, "l2.img", 32);
  RUN_OK(m.mirror_create("m0", {l0, l1}));
  ASSERT_TRUE(m.wait_for_target("m0", in_sync, kWait)) << m.target("m0").dump();
  std::string expected = pattern_string(30, 0, kImage);
  const std::string w = pattern_string(33, 0, 300 * kKiB);
  write_at(m.mirror_view("m0"), 3 * kMiB, w);
  expected.replace(3 * kMiB, w.size(), w);

  RUN_OK(m.verb({"mirror", "replace"}, {"m0", l1, l2}));
  ASSERT_TRUE(m.wait_for_target(
      "m0",
      [&](const json& t) {
        return in_sync(t) && t.contains("legs") && t["legs"].size() == 2 &&
               t["legs"][1].value("device", "") == l2 && t["legs"][1].value("health", "") == "A";
      },
      kWait))
      << m.target("m0").dump();
  EXPECT_TRUE(same_bytes(contents(m.mirror_view("m0")), expected));
  // The old leg is released.
  EXPECT_TRUE(can_lock_exclusively(l1)) << "the replaced leg is still held";
  RUN_OK(m.umount());
  EXPECT_TRUE(same_bytes(read_all(l0), expected));
  EXPECT_TRUE(same_bytes(read_all(l2), expected)) << "the new leg";
}

TEST(Mirror, ThrottleIsKeptAcrossMounts) {
  REQUIRE_ROOT();
  MOUNT_OK(m);
  const std::string l0 = make_image(m, "l0.img", 34);
  const std::string l1 = make_image(m, "l1.img", 35);
  RUN_OK(m.mirror_create("m0", {l0, l1}, {"--nosync"}));
  const json unlimited = {{"percent", 100}, {"bytes_per_second", 0}};
  const json limited = {{"percent", 30}, {"bytes_per_second", 8 * kMiB}};
  auto throttle = [&] {
    const json t = m.target("m0");
    return t.contains("throttle") ? t["throttle"] : json{{"missing", t}};
  };
  EXPECT_EQ(throttle(), unlimited);
  RUN_OK(m.verb({"mirror", "throttle"}, {"m0", "--percent", "30", "--rate", "8M"}));
  EXPECT_EQ(throttle(), limited);
  RUN_OK(m.umount());
  const std::string table = read_all(m.table_path());
  EXPECT_NE(table.find("throttle_percent = 30\n"), std::string::npos) << table;
  EXPECT_NE(table.find("throttle_rate = 8388608\n"), std::string::npos) << table;
  RUN_OK(m.mount());
  EXPECT_EQ(throttle(), limited) << "the mount did not restore the resync's limits";
  // Without options: no limits, and the table says so.
  RUN_OK(m.verb({"mirror", "throttle"}, {"m0"}));
  EXPECT_EQ(throttle(), unlimited);
  RUN_OK(m.umount());
  EXPECT_EQ(read_all(m.table_path()).find("throttle"), std::string::npos) << read_all(m.table_path());
  RUN_OK(m.mount());
  EXPECT_EQ(throttle(), unlimited);
  RUN_OK(m.umount());
}

// ---------------------------------------------------------------------------------------------------------
// remove

TEST(Remove, RefusedWhileTheViewIsOpen) {
  REQUIRE_ROOT();
  MOUNT_OK(m);
  const std::string image = make_image(m, "data.img", 40);
  const std::string l0 = make_image(m, "l0.img", 41);
  const std::string l1 = make_image(m, "l1.img", 42);
  RUN_OK(m.origin_add("data", image));
  RUN_OK(m.mirror_create("m0", {l0, l1}, {"--nosync"}));
  for (const std::string& view : {m.origin_view("data"), m.mirror_view("m0")}) {
    SCOPED_TRACE(view);
    const std::string name = view.substr(view.rfind('/') + 1);
    UniqueFd fd(::open(view.c_str(), O_RDONLY | O_CLOEXEC));
    ASSERT_TRUE(fd.valid()) << std::strerror(errno);
    Unchanged before(m, {image, l0, l1});
    before.check(m.remove(name), "remove " + name + " with its view open");
    EXPECT_TRUE(path_exists(view));
    fd.reset();
    RUN_OK(m.remove(name));
    EXPECT_FALSE(path_exists(view));
  }
  EXPECT_EQ(target_names(m.status_json()), std::set<std::string>{});
  EXPECT_TRUE(same_bytes(read_all(image), pattern_string(40, 0, kImage)));
}

TEST(Remove, RefusedForAnOriginWithSnapshots) {
  REQUIRE_ROOT();
  MOUNT_OK(m);
  const std::string image = make_image(m, "data.img", 43);
  RUN_OK(m.origin_add("data", image));
  RUN_OK(m.snapshot_create("data", "s1"));
  Unchanged before(m, {image, m.state_dir() + "/s1.cow"});
  before.check(m.remove("data"), "remove an origin with a snapshot");
  RUN_OK(m.remove("s1"));
  RUN_OK(m.remove("data"));
  EXPECT_FALSE(path_exists(m.origin_view("data")));
  EXPECT_TRUE(path_exists(image)) << "remove deleted the origin's device";
}

TEST(Remove, DeletesDefaultFilesOnly) {
  REQUIRE_ROOT();
  MOUNT_OK(m);
  const std::string image = make_image(m, "data.img", 44);
  const std::string cow = make_sparse(m, "named.cow", 8 * kMiB);
  const std::string l0 = make_image(m, "l0.img", 45);
  const std::string l1 = make_image(m, "l1.img", 46);
  RUN_OK(m.origin_add("data", image));
  RUN_OK(m.snapshot_create("data", "dflt"));
  RUN_OK(m.snapshot_create("data", "named", {"--cow", cow}));
  RUN_OK(m.mirror_create("m0", {l0, l1}, {"--nosync"}));
  const std::string default_cow = m.state_dir() + "/dflt.cow";
  const std::string log = m.state_dir() + "/m0.log";
  ASSERT_TRUE(path_exists(default_cow));
  ASSERT_TRUE(path_exists(log));
  RUN_OK(m.remove("dflt"));
  EXPECT_FALSE(path_exists(default_cow)) << "the default COW file is left";
  RUN_OK(m.remove("named"));
  EXPECT_TRUE(path_exists(cow)) << "the named COW file was deleted";
  RUN_OK(m.remove("m0"));
  EXPECT_FALSE(path_exists(log)) << "the mirror's default log is left";
  EXPECT_TRUE(path_exists(l0) && path_exists(l1)) << "a leg was deleted";
  EXPECT_EQ(target_names(m.status_json()), std::set<std::string>{"data"});
  const std::string table = read_all(m.table_path());
  for (const char* gone : {"dflt", "named", "m0"})
    EXPECT_EQ(table.find(gone), std::string::npos) << gone << " still in the table:\n" << table;
}

// ---------------------------------------------------------------------------------------------------------
// Errors: each refusal is one line on stderr, a non-zero exit, and changes nothing.

// A mount with an origin "data" (data.img, seed 50), a snapshot "s1" (default COW) and a mirror "m0".
class Refusals : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!test::running_as_root()) GTEST_SKIP() << "needs root (FUSE)";
    ASSERT_TRUE(m.mount_result().ok()) << m.mount_result();
    image = make_image(m, "data.img", 50);
    l0 = make_image(m, "l0.img", 51);
    l1 = make_image(m, "l1.img", 52);
    spare = make_image(m, "spare.img", 53);
    ASSERT_TRUE(m.origin_add("data", image).ok());
    ASSERT_TRUE(m.snapshot_create("data", "s1").ok());
    ASSERT_TRUE(m.mirror_create("m0", {l0, l1}, {"--nosync"}).ok());
  }
  std::vector<std::string> devices() const { return {image, l0, l1, spare, m.state_dir() + "/s1.cow"}; }
  Unchanged snapshot_state(std::vector<std::string> extra = {}) const {
    auto files = devices();
    files.insert(files.end(), extra.begin(), extra.end());
    return Unchanged(m, files);
  }

  KcopyfsMount m;
  std::string image, l0, l1, spare;
};

TEST_F(Refusals, DuplicateName) {
  const Unchanged before = snapshot_state();
  before.check(m.origin_add("data", spare), "origin add data");
  before.check(m.origin_add("s1", spare), "origin add s1");
  before.check(m.snapshot_create("data", "s1"), "snapshot create s1");
  before.check(m.snapshot_create("data", "m0"), "snapshot create m0");
  before.check(m.mirror_create("data", {spare, m.file("x")}), "mirror create data");
  before.check(m.mirror_create("m0", {spare, m.file("x")}), "mirror create m0");
}

TEST_F(Refusals, BadNames) {
  const Unchanged before = snapshot_state();
  for (const std::string& name : {std::string(".."), std::string("a/b"), std::string(65, 'n'),
                                  std::string(".hidden"), std::string("sp ace"), std::string("")}) {
    before.check(m.origin_add(name, spare), "origin add '" + name + "'");
    before.check(m.snapshot_create("data", name), "snapshot create '" + name + "'");
  }
  EXPECT_FALSE(path_exists(m.state_dir() + "/...cow"));
  // 64 characters is fine.
  RUN_OK(m.origin_add(std::string(64, 'n'), spare));
}

TEST_F(Refusals, MissingDevice) {
  const Unchanged before = snapshot_state();
  before.check(m.origin_add("new", m.file("absent.img")), "origin add of a missing file");
  before.check(m.snapshot_create("data", "new", {"--cow", m.file("absent.cow")}), "snapshot --cow missing");
  before.check(m.mirror_create("new", {spare, m.file("absent.img")}), "mirror with a missing leg");
  EXPECT_FALSE(path_exists(m.file("absent.img")));
  EXPECT_FALSE(path_exists(m.file("absent.cow")));
}

TEST_F(Refusals, SizeNotAMultipleOf512) {
  const std::string odd = make_image(m, "odd.img", 54, kImage + 100);
  const Unchanged before = snapshot_state({odd});
  before.check(m.origin_add("new", odd), "origin add of an odd-sized file");
  before.check(m.mirror_create("new", {spare, odd}), "mirror with an odd-sized leg");
}

TEST_F(Refusals, DeviceAlreadyHeld) {
  const Unchanged before = snapshot_state();
  before.check(m.origin_add("new", image), "the origin's image as another origin");
  before.check(m.origin_add("new", l1), "a mirror leg as an origin");
  before.check(m.snapshot_create("data", "new", {"--cow", image}), "the origin's image as a COW");
  before.check(m.snapshot_create("data", "new", {"--cow", m.state_dir() + "/s1.cow"}), "s1's COW as a COW");
  before.check(m.mirror_create("new", {spare, image}), "the origin's image as a leg");
  before.check(m.mirror_create("new", {spare, spare}), "the same leg twice");
  // Held by another process.
  UniqueFd fd(::open(spare.c_str(), O_RDWR | O_CLOEXEC));
  ASSERT_TRUE(fd.valid());
  struct flock lk {};
  lk.l_type = F_WRLCK;
  lk.l_whence = SEEK_SET;
  ASSERT_EQ(::fcntl(fd.get(), F_OFD_SETLK, &lk), 0);
  before.check(m.origin_add("new", spare), "an image another process holds");
}

// As the kernel, a COW needs room for its header, one metadata area and one data chunk (a small COW is
// legitimate: it overflows, and the snapshot becomes invalid, once full).
TEST_F(Refusals, CowTooSmall) {
  const std::string small = make_image(m, "small.cow", 55, 8 * kKiB);
  const Unchanged before = snapshot_state({small});
  before.check(m.snapshot_create("data", "new", {"--cow", small}), "an 8 KiB COW");
}

TEST_F(Refusals, CowWithAValidHeaderOnCreate) {
  const std::string cow = make_sparse(m, "used.cow", 8 * kMiB);
  RUN_OK(m.snapshot_create("data", "old", {"--cow", cow}));
  RUN_OK(m.remove("old"));
  const Unchanged before = snapshot_state({cow});
  before.check(m.snapshot_create("data", "new", {"--cow", cow}), "create on a COW with a header");
  before.check(m.snapshot_create("data", "new", {"--cow", cow, "--cow-size", "1M"}), "--cow-size with --cow");
  // attach is the way.
  RUN_OK(m.snapshot_attach("data", "new", cow));
}

TEST_F(Refusals, CowSizeWithCow) {
  const std::string cow = make_sparse(m, "fresh.cow", 8 * kMiB);
  const Unchanged before = snapshot_state({cow});
  before.check(m.snapshot_create("data", "new", {"--cow", cow, "--cow-size", "4M"}), "--cow-size with --cow");
}

TEST_F(Refusals, DamagedCowOnAttach) {
  const std::string cow = make_sparse(m, "damaged.cow", 8 * kMiB);
  RUN_OK(m.snapshot_create("data", "old", {"--cow", cow}));
  RUN_OK(m.remove("old"));
  // Corrupt the magic (the header's first 4 bytes).
  write_at(cow, 0, "XXXX");
  const std::string damaged = read_all(cow);
  const Unchanged before = snapshot_state({cow});
  before.check(m.snapshot_attach("data", "new", cow), "attach of a damaged COW");
  EXPECT_TRUE(same_bytes(read_all(cow), damaged)) << "the damaged COW was written to";
  // And a COW with no header at all.
  const std::string blank = make_sparse(m, "blank.cow", 8 * kMiB);
  const Unchanged before2 = snapshot_state({blank});
  before2.check(m.snapshot_attach("data", "new", blank), "attach of a blank COW");
}

TEST_F(Refusals, DeviceInsideTheMount) {
  const Unchanged before = snapshot_state();
  const auto timeout = std::chrono::seconds(30);
  before.check(m.verb({"origin", "add"}, {"new", m.origin_view("data")}, timeout),
               "an origin view as origin");
  before.check(m.verb({"snapshot", "create"}, {"data", "new", "--cow", m.snapshot_view("s1")}, timeout),
               "a snapshot view as COW");
  before.check(m.verb({"mirror", "create"}, {"new", spare, m.mirror_view("m0")}, timeout),
               "a mirror view as leg");
}

TEST_F(Refusals, UnknownTargets) {
  const Unchanged before = snapshot_state();
  before.check(m.snapshot_create("nope", "new"), "snapshot of an unknown origin");
  before.check(m.snapshot_create("s1", "new"), "snapshot of a snapshot");
  before.check(m.snapshot_create("m0", "new"), "snapshot of a mirror");
  before.check(m.remove("nope"), "remove of an unknown target");
  before.check(m.verb({"snapshot", "merge"}, {"nope"}), "merge of an unknown snapshot");
  before.check(m.verb({"snapshot", "merge"}, {"data"}), "merge of an origin");
  before.check(m.verb({"mirror", "resync"}, {"data"}), "resync of an origin");
  before.check(m.verb({"mirror", "resync"}, {"s1"}), "resync of a snapshot");
  before.check(m.verb({"mirror", "resync"}, {"nope"}), "resync of an unknown mirror");
  before.check(m.verb({"mirror", "replace"}, {"m0", spare, m.file("x.img")}), "replace of a leg not in m0");
}

TEST_F(Refusals, MergeOfATransientSnapshot) {
  RUN_OK(m.snapshot_create("data", "tr", {"--transient"}));
  const Unchanged before = snapshot_state();
  before.check(m.verb({"snapshot", "merge"}, {"tr", "--wait"}), "merge of a transient snapshot");
}

TEST_F(Refusals, SecondMountOfTheSameStateDir) {
  const std::string other = m.file("mnt2");
  ASSERT_EQ(::mkdir(other.c_str(), 0755), 0);
  const pid_t pid = m.daemon_pid();
  const Unchanged before = snapshot_state();
  const CommandResult r = m.run({"mount", "--state", m.state_dir(), other});
  before.check(r, "a second mount of the state directory");
  EXPECT_FALSE(test::is_mounted(other));
  EXPECT_EQ(m.daemon_pid(), pid) << "DIR/lock changed";
  EXPECT_TRUE(test::process_alive(pid));
  if (test::is_mounted(other)) test::run_command({"umount", "-l", other});
}

TEST_F(Refusals, NotAKcopyfsMount) {
  const Unchanged before = snapshot_state();
  const std::string plain = m.file("plain");
  ASSERT_EQ(::mkdir(plain.c_str(), 0755), 0);
  for (const std::string& path : {plain, std::string("/"), m.file("absent")}) {
    SCOPED_TRACE(path);
    EXPECT_TRUE(refused(m.run({"status", path})));
    EXPECT_TRUE(refused(m.run({"origin", "add", path, "new", spare})));
    EXPECT_TRUE(refused(m.run({"remove", path, "data"})));
    EXPECT_TRUE(refused(m.run({"umount", path})));
  }
  before.check(m.run({"status", m.origin_view("data")}), "status of a view");
  EXPECT_TRUE(std::filesystem::is_empty(plain)) << "a command wrote into a plain directory";
}

// ---------------------------------------------------------------------------------------------------------
// umount, SIGTERM, fusermount3 -u

bool gone(pid_t pid) {
  return wait_until([&] { return !test::process_alive(pid); }, std::chrono::seconds(30));
}

TEST(Umount, StopsTheDaemonAndReleasesEverything) {
  REQUIRE_ROOT();
  MOUNT_OK(m);
  const std::string image = make_image(m, "data.img", 60);
  const std::string l0 = make_image(m, "l0.img", 61);
  const std::string l1 = make_image(m, "l1.img", 62);
  RUN_OK(m.origin_add("data", image));
  RUN_OK(m.snapshot_create("data", "s1"));
  RUN_OK(m.mirror_create("m0", {l0, l1}, {"--nosync"}));
  const pid_t pid = m.daemon_pid();
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(test::process_alive(pid));
  const std::string data = pattern_string(63, 0, kMiB);
  write_at(m.origin_view("data"), kMiB, data);

  const CommandResult r = m.umount();
  ASSERT_TRUE(r.ok()) << r;
  EXPECT_FALSE(test::is_mounted(m.mnt())) << "still in /proc/self/mountinfo";
  EXPECT_TRUE(gone(pid)) << "the daemon is still running";
  for (const auto& dev : {image, l0, l1, m.state_dir() + "/s1.cow"})
    EXPECT_TRUE(can_lock_exclusively(dev)) << dev << " is still held";
  EXPECT_EQ(read_all(image).substr(kMiB, kMiB), data);
  // Mount again at once.
  const CommandResult again = m.mount();
  ASSERT_TRUE(again.ok()) << again;
  EXPECT_EQ(target_names(m.status_json()), (std::set<std::string>{"data", "s1", "m0"}));
  EXPECT_TRUE(same_bytes(contents(m.snapshot_view("s1")), pattern_string(60, 0, kImage)));
}

TEST(Umount, RefusedWhileAViewIsOpen) {
  REQUIRE_ROOT();
  MOUNT_OK(m);
  const std::string image = make_image(m, "data.img", 64);
  RUN_OK(m.origin_add("data", image));
  UniqueFd fd(::open(m.origin_view("data").c_str(), O_RDWR | O_CLOEXEC));
  ASSERT_TRUE(fd.valid()) << std::strerror(errno);
  const pid_t pid = m.daemon_pid();
  const CommandResult r = m.umount();
  EXPECT_TRUE(refused(r));
  EXPECT_TRUE(m.mounted());
  EXPECT_TRUE(test::process_alive(pid));
  // The open view still works.
  char buf[512];
  EXPECT_EQ(::pread(fd.get(), buf, sizeof buf, 0), 512);
  fd.reset();
  RUN_OK(m.umount());
  EXPECT_FALSE(test::is_mounted(m.mnt()));
  EXPECT_TRUE(gone(pid));
}

TEST(Umount, SigtermUnmountsAndExits) {
  REQUIRE_ROOT();
  MOUNT_OK(m);
  const std::string image = make_image(m, "data.img", 65);
  RUN_OK(m.origin_add("data", image));
  RUN_OK(m.snapshot_create("data", "s1"));
  const std::string data = pattern_string(66, 0, kMiB);
  write_at(m.origin_view("data"), 0, data);
  const pid_t pid = m.daemon_pid();
  ASSERT_GT(pid, 0);
  ASSERT_EQ(::kill(pid, SIGTERM), 0);
  EXPECT_TRUE(gone(pid)) << "the daemon ignored SIGTERM";
  EXPECT_TRUE(wait_until([&] { return !test::is_mounted(m.mnt()); }, std::chrono::seconds(10)))
      << "still mounted after SIGTERM";
  EXPECT_TRUE(can_lock_exclusively(image));
  EXPECT_EQ(read_all(image).substr(0, kMiB), data);
  RUN_OK(m.mount());
  EXPECT_TRUE(same_bytes(contents(m.snapshot_view("s1")), pattern_string(65, 0, kImage)));
}

TEST(Umount, FusermountUnmountStopsTheDaemon) {
  REQUIRE_ROOT();
  MOUNT_OK(m);
  const std::string image = make_image(m, "data.img", 67);
  RUN_OK(m.origin_add("data", image));
  const pid_t pid = m.daemon_pid();
  ASSERT_GT(pid, 0);
  const CommandResult r = test::run_command({"fusermount3", "-u", m.mnt()});
  ASSERT_TRUE(r.ok()) << r;
  EXPECT_FALSE(test::is_mounted(m.mnt()));
  EXPECT_TRUE(gone(pid)) << "the daemon outlived its mount";
  EXPECT_TRUE(can_lock_exclusively(image));
  RUN_OK(m.mount());
  EXPECT_EQ(target_names(m.status_json()), std::set<std::string>{"data"});
}

}  // namespace
}  // namespace kcopyfs
