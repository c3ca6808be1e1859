// End-to-end test of `kcopyfs demo` (issue 5): the whole story runs, its checks pass, its output shows the
// snapshot's old files beside the origin's new ones and identical mirror legs, and nothing is left behind.
#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "tests/tools/mount_fixture.h"

namespace kcopyfs::test {
namespace {

namespace fs = std::filesystem;

constexpr const char* kBase = "/var/tmp";

// The demo directories under kBase now, to tell which one a run made and that it is gone.
std::set<std::string> demo_dirs() {
  std::set<std::string> dirs;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(kBase, ec)) {
    if (entry.path().filename().string().rfind("kcopyfs-demo.", 0) == 0) dirs.insert(entry.path().string());
  }
  return dirs;
}

// The mountinfo lines whose mount point or source lies under dir.
std::vector<std::string> mounts_under(const std::string& dir) {
  std::vector<std::string> found;
  std::ifstream in("/proc/self/mountinfo");
  for (std::string line; std::getline(in, line);) {
    if (unescape_mount_field(line).find(dir + "/") != std::string::npos) found.push_back(line);
  }
  return found;
}

std::string join(const std::vector<std::string>& lines) {
  std::string all;
  for (const auto& l : lines) all += l + "\n";
  return all;
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

TEST(CliDemo, TellsTheWholeStoryAndRemovesAllItMade) {
  if (::geteuid() != 0 && ::access("/dev/fuse", R_OK | W_OK) != 0)
    GTEST_SKIP() << "/dev/fuse is not usable by this user, so kcopyfs cannot mount";
  const std::set<std::string> before = demo_dirs();
  const CommandResult r = run_kcopyfs({"demo", kBase}, std::chrono::seconds(120));
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_LT(r.seconds, 60) << "the demo should take well under a minute";
  EXPECT_FALSE(contains(r.err, "kcopyfs: demo:")) << r;

  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.out, m, std::regex("== kcopyfs demo in \"([^\"]+)\""))) << r;
  const std::string dir = m[1];
  EXPECT_EQ(dir.rfind(std::string(kBase) + "/kcopyfs-demo.", 0), 0u) << dir;

  // The snapshot shows the files as they were when it was taken; the origin the changes made after.
  EXPECT_TRUE(contains(r.out, "$ cat snapshot-fs/hello.txt\nHello from kcopyfs.\n")) << r;
  EXPECT_TRUE(contains(r.out, "$ cat snapshot-fs/docs/notes.txt\nVolumes are copied sector by sector")) << r;
  EXPECT_TRUE(contains(
      r.out, "$ cat snapshot-fs/added.txt\nWritten through the mounted origin, just before the snapshot.\n"))
      << r;
  EXPECT_TRUE(
      contains(r.out, "$ cat origin-fs/hello.txt\nHello again: this line was written after the snapshot.\n"))
      << r;
  EXPECT_TRUE(contains(r.out, "The snapshot kept the old files and the origin has the new ones: yes")) << r;
  // The mirror: created, resynced with progress, its legs identical.
  EXPECT_TRUE(contains(r.out, "$ kcopyfs mirror resync mnt mirror --wait\n")) << r;
  EXPECT_TRUE(contains(r.err, "resync mirror: 100%")) << r;
  EXPECT_TRUE(contains(r.out, "The mirror legs are identical byte for byte: yes")) << r;
  // Status as text and, once, as one JSON object naming the three targets.
  EXPECT_TRUE(contains(r.out, "$ kcopyfs status mnt\nNAME")) << r;
  const std::string json_cmd = "$ kcopyfs status mnt --json\n";
  const auto json_at = r.out.find(json_cmd);
  ASSERT_NE(json_at, std::string::npos) << r;
  EXPECT_EQ(r.out.find(json_cmd, json_at + 1), std::string::npos) << "the JSON is printed once";
  const auto json_begin = json_at + json_cmd.size();
  const auto json_end = r.out.find("\n}\n", json_begin);
  ASSERT_NE(json_end, std::string::npos) << r;
  const auto status =
      nlohmann::json::parse(r.out.substr(json_begin, json_end + 2 - json_begin), nullptr, false);
  ASSERT_TRUE(status.is_object()) << r.out.substr(json_begin);
  std::set<std::string> names;
  for (const auto& t : status["targets"]) names.insert(t.value("name", "") + ":" + t.value("type", ""));
  EXPECT_EQ(names, (std::set<std::string>{"data:origin", "before:snapshot", "mirror:mirror"}));

  // Nothing is left: the directory, a mount in it (kcopyfs, loop or fuse2fs), a loop device on a file in it.
  EXPECT_FALSE(path_exists(dir)) << dir;
  std::vector<std::string> left;
  for (const auto& d : demo_dirs())
    if (!before.count(d)) left.push_back(d);
  EXPECT_TRUE(left.empty()) << join(left);
  EXPECT_TRUE(mounts_under(dir).empty()) << join(mounts_under(dir));
  const CommandResult loops = run_command({"losetup", "-a"});
  EXPECT_TRUE(loops.ok()) << loops;
  EXPECT_FALSE(contains(loops.out, dir + "/")) << loops.out;
}

TEST(CliDemo, RefusesExtraArgumentsWithOneLine) {
  const CommandResult r = run_kcopyfs({"demo", "/var/tmp", "/tmp"});
  EXPECT_NE(r.exit_code, 0) << r;
  ASSERT_EQ(r.err_lines().size(), 1u) << r;
  EXPECT_EQ(r.err_lines()[0].rfind("kcopyfs: demo: ", 0), 0u) << r;
}

TEST(CliDemo, HelpDescribesTheStory) {
  const CommandResult r = run_kcopyfs({"demo", "--help"});
  EXPECT_EQ(r.exit_code, 0) << r;
  EXPECT_TRUE(contains(r.out, "Usage: kcopyfs demo [DIR]")) << r;
  EXPECT_TRUE(contains(r.out, "snapshot")) << r;
  EXPECT_TRUE(contains(r.out, "mirror")) << r;
}

}  // namespace
}  // namespace kcopyfs::test
